"""The contract every optclip transform keeps: jit == eager, stable dtypes and
structure, one trace, inject_hyperparams, and eager rejection of bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.conftest import CASES, heavy_tailed_grads, initial_params


def _optclip_state(name, state):
    """The part of a case's state that optclip keeps (not optax.adam's)."""
    if name in ("zclip_adam", "adagc_adam"):
        return state[0]
    if name == "skip_step_adam":
        return state._replace(inner_state=None)
    return state


STEPS = 12


def _run(tx, grads, params, update=None):
    update = update or tx.update
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, u)
        outs.append(u)
    return outs, state, params


@pytest.mark.parametrize("case", CASES, ids=str)
class TestContract:
    def test_jit_and_eager_agree(self, case):
        tx = case.make()
        grads = heavy_tailed_grads(STEPS)
        params = jax.tree.map(jnp.asarray, initial_params())
        ref, ref_state, _ = _run(tx, grads, params, jax.jit(tx.update))
        # chex.fake_jit turns every jax.jit (optax's internal ones too) into a no-op.
        with chex.fake_jit():
            got, got_state, _ = _run(tx, grads, params, jax.jit(tx.update))
        # XLA may fuse differently with and without jit: agree to a few ulp.
        chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(got_state, ref_state, rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
    def test_shapes_and_dtypes_are_stable(self, case, dtype):
        tx = case.make()
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), initial_params())
        state = tx.init(params)
        init_types = jax.tree.map(lambda x: (x.shape, x.dtype), state)
        update = jax.jit(tx.update)
        for g in heavy_tailed_grads(4, spike=10.0):
            g = jax.tree.map(lambda x: jnp.asarray(x, dtype), g)
            u, state = update(g, state, params)
            chex.assert_trees_all_equal_shapes_and_dtypes(u, g)
            assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == init_types
            params = optax.apply_updates(params, u)
        # Statistics are float32 whatever the parameter dtype (optax.adam's state, in a case
        # that chains it, follows the params).
        for leaf in jax.tree.leaves(_optclip_state(case.name, state)):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32

    def test_a_donated_state_holds_no_buffer_twice(self, case):
        # jax refuses to donate one buffer twice: every state leaf must be its own array.
        state = case.make().init(jax.tree.map(jnp.asarray, initial_params()))
        leaves = jax.tree.leaves(state)
        assert len({id(x) for x in leaves}) == len(leaves)

    def test_traces_once(self, case):
        chex.clear_trace_counter()
        tx = case.make()
        params = jax.tree.map(jnp.asarray, initial_params())

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(g, state, params):
            return tx.update(g, state, params)

        _run(tx, heavy_tailed_grads(3), params, step)

    def test_inject_hyperparams_gives_the_same_trajectory(self, case):
        grads = heavy_tailed_grads(STEPS)
        params = jax.tree.map(jnp.asarray, initial_params())
        _, _, p_plain = _run(case.make(), grads, params, jax.jit(case.make().update))
        injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
        _, state, p_got = _run(injected, grads, params, jax.jit(injected.update))
        chex.assert_trees_all_close(p_got, p_plain, rtol=2e-5, atol=1e-6)
        assert "learning_rate" in state.hyperparams
        assert case.main_hparam in state.hyperparams

    def test_injected_hyperparameter_can_change_between_steps(self, case):
        injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
        params = jax.tree.map(jnp.asarray, initial_params())
        g = jax.tree.map(jnp.asarray, heavy_tailed_grads(1, spike=1.0)[0])
        state = injected.init(params)
        update = jax.jit(injected.update)
        u1, _ = update(g, state, params)
        half = case.kwargs["learning_rate"] * 0.5
        state.hyperparams["learning_rate"] = jnp.asarray(half, jnp.float32)
        u2, _ = update(g, state, params)
        fresh = case.make(learning_rate=half)
        expected, _ = fresh.update(g, fresh.init(params), params)
        chex.assert_trees_all_close(u2, expected, rtol=1e-5)
        assert not np.allclose(np.asarray(u1["w"]), np.asarray(u2["w"]))


def _transform_states(state):
    """The states of the links of (nested) chains: optax.chain's state is a plain tuple."""
    if type(state) is tuple:
        return [s for link in state for s in _transform_states(link)]
    return [state]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_states_are_namedtuples_of_arrays(case):
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    states = _transform_states(case.make().init(params))
    for s in states:
        assert hasattr(type(s), "_fields"), f"{case.name}: state {type(s).__name__} has no fields"
        leaves = jax.tree.leaves(s)
        assert all(isinstance(x, jax.Array) for x in leaves), f"{case.name}: {type(s).__name__}"
    assert any(jax.tree.leaves(s) for s in states) or case.name in ("clipped_gd",)


def test_threshold_tree_must_match_params():
    tx = optclip.cclip(0.1, threshold={"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="same structure as the params"):
        tx.init({"a": jnp.zeros(2), "c": jnp.zeros(2)})
    tx = optclip.cclip(0.1, threshold={"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="does not broadcast"):
        tx.init({"a": jnp.zeros(2)})


def test_traced_hyperparameters_are_not_checked_eagerly():
    # inject_hyperparams passes arrays; an array b1 must not trip Python checks.
    tx = optclip.acclip(jnp.float32(0.1), b1=jnp.float32(0.9), alpha=jnp.float32(1.0))
    params = {"w": jnp.ones(3)}
    u, _ = jax.jit(tx.update)({"w": jnp.ones(3)}, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(u["w"])))


# Robust ACClip: a spike can raise neither its own threshold nor the momentum.


def _robust_run(tx, spike, steps=60, spike_at=40):
    rng = np.random.default_rng(0)
    state = tx.init({"w": jnp.zeros(64)})
    update = jax.jit(tx.update)
    for t in range(steps):
        g = rng.standard_t(3.0, size=64).astype(np.float32)
        if t == spike_at:
            before = state
            g = g * np.float32(spike)
        _, state = update({"w": jnp.asarray(g)}, state)
        if t == spike_at:
            after = state
    return before, after


@pytest.mark.parametrize("spike", [1e2, 1e6, 1e30])
def test_robust_threshold_rises_by_a_bounded_factor_and_the_printed_one_does_not(spike):
    robust = optclip.scale_by_acclip(robust=True)
    before, after = _robust_run(robust, spike)
    # tau_k = b2 tau + (1 - b2) |g~|, |g~| <= c tau / (1 - b2^k): a rise of at most
    # b2 + (1 - b2) c / (1 - b2^40) per coordinate, whatever the spike.
    bound = 0.99 + 0.01 * 4.0 / (1 - 0.99**40)
    assert np.all(np.asarray(after.tau["w"]) <= bound * np.asarray(before.tau["w"]) * (1 + 1e-6))
    assert np.all(np.isfinite(after.mu["w"]))
    printed = optclip.scale_by_acclip()
    _, after_printed = _robust_run(printed, spike)
    assert np.max(after_printed.tau["w"] / after.tau["w"]) > 0.5 * spike * 0.01


def test_robust_threshold_piece_passes_the_clipped_gradient():
    tx = optclip.estimate_alpha_moment_threshold(decay=0.5, initial_threshold=None, robust=True)
    state = tx.init({"w": jnp.zeros(2)})
    u, state = tx.update({"w": jnp.array([1.0, -2.0])}, state)  # no history: not clipped
    np.testing.assert_array_equal(u["w"], [1.0, -2.0])
    u, state = tx.update({"w": jnp.array([100.0, -1.0])}, state)
    np.testing.assert_allclose(u["w"], [4.0, -1.0])  # 4 x tau_1 = 4; -1 is within 8
    np.testing.assert_allclose(state.tau["w"], [2.5, 1.5])  # from the clipped gradient


def test_robust_with_an_infinite_factor_is_acclip():
    rng = np.random.default_rng(1)
    a = optclip.acclip(0.1, robust=True, spike_factor=float("inf"))
    b = optclip.acclip(0.1)
    params = {"w": jnp.ones(8)}
    sa, sb = a.init(params), b.init(params)
    for _ in range(5):
        g = {"w": jnp.asarray(rng.normal(size=8) * 100, jnp.float32)}
        ua, sa = a.update(g, sa, params)
        ub, sb = b.update(g, sb, params)
        np.testing.assert_array_equal(ua["w"], ub["w"])


def test_robust_and_spike_factor_are_checked_by_name():
    with pytest.raises(TypeError, match="`robust` must be True or False"):
        optclip.acclip(0.1, robust=1)
    with pytest.raises(ValueError, match=r"`spike_factor` must be in \[1, inf\], got 0.5"):
        optclip.acclip(0.1, robust=True, spike_factor=0.5)
    with pytest.raises(ValueError, match="`spike_factor`"):
        optclip.estimate_alpha_moment_threshold(robust=True, spike_factor=-1.0)
