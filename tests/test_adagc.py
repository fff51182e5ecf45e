"""AdaGC against the paper's rule (tests/_reference_spikes.py), per leaf, and beside grouping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference_spikes
from tests.conftest import heavy_tailed_grads

STREAM = heavy_tailed_grads(30, spike_at=12)
# One tensor alone spikes at step 18; another leaf is all zeros at step 21.
STREAM[18] = {**STREAM[18], "w": STREAM[18]["w"] * np.float32(1e5)}
STREAM[21] = {**STREAM[21], "b": np.zeros_like(STREAM[21]["b"])}


SHORT = dict(warmup_steps=4)
TIGHT = dict(lambda_abs=0.5, lambda_rel=1.2, beta=0.9, warmup_steps=1)


# Both jitted, one also eagerly (tests/test_transforms.py compares jit with eager for every case).
@pytest.mark.parametrize(
    ("kwargs", "jit"),
    [
        pytest.param(SHORT, True, id="short_warmup-jit"),
        pytest.param(TIGHT, True, id="tight-jit"),
        pytest.param(TIGHT, False, id="tight-eager"),
    ],
)
def test_matches_the_papers_rule(kwargs, jit):
    init_ref, step_ref = _reference_spikes.adagc(**kwargs, zero_keeps_gamma=True)
    tx = optclip.adagc(**kwargs)
    state_ref, state = init_ref(STREAM[0]), tx.init(STREAM[0])
    update = jax.jit(tx.update) if jit else tx.update
    keys = sorted(STREAM[0])  # the state's vector follows jax.tree.leaves, sorted dict keys
    for t, g in enumerate(STREAM):
        out_ref, state_ref = step_ref(g, state_ref, None)
        out, state = update(jax.tree.map(jnp.asarray, g), state)
        for k in g:
            np.testing.assert_allclose(out[k], out_ref[k], rtol=2e-5, atol=1e-7, err_msg=f"{t}")
        np.testing.assert_allclose(state.gamma, [state_ref["gamma"][k] for k in keys], rtol=2e-5)


def test_a_spike_in_one_tensor_is_cut_there_and_the_others_pass():
    tx = optclip.adagc(warmup_steps=1)
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([1.0, 0.0])}
    state = tx.init(g)
    _, state = tx.update(g, state)  # warm-up: global norm sqrt(26) > 1, all scaled
    gamma = np.asarray(state.gamma)
    np.testing.assert_allclose(gamma, np.array([5.0, 1.0]) / np.sqrt(26), rtol=1e-6)
    u, state = tx.update({"a": g["a"] * 1e6, "b": g["b"] * 0.1}, state)
    np.testing.assert_allclose(jnp.linalg.norm(u["a"]), 1.05 * gamma[0], rtol=1e-6)
    np.testing.assert_allclose(u["b"], g["b"] * 0.1)  # under its threshold: untouched
    # gamma absorbed the clipped norm: the spike raised it by (1 - beta)(lambda_rel - 1) at most.
    np.testing.assert_allclose(state.gamma[0], gamma[0] * (0.98 + 0.02 * 1.05), rtol=1e-6)
    assert float(state.clipped) == 0.5


def test_zero_and_non_finite_leaves():
    tx = optclip.adagc(warmup_steps=1)
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    _, state = tx.update({"a": jnp.ones(2), "b": jnp.ones(2)}, state)
    u, after = tx.update({"a": jnp.zeros(2), "b": jnp.array([1.0, np.nan])}, state)
    np.testing.assert_array_equal(u["a"], 0.0)  # 0/0: not clipped, no NaN
    assert np.isnan(u["b"][1])  # the NaN survives (the numerics rule)
    assert float(after.gamma[1]) == float(state.gamma[1])  # ... and does not enter gamma


def test_state_is_a_vector_that_sharding_replicates():
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    mesh = jax.make_mesh((1,), ("data",))
    tx = optax.chain(optclip.adagc(), optax.adam(1e-3))
    shardings = optclip.state_shardings(tx, params, mesh)
    assert shardings[0].gamma.spec == jax.sharding.PartitionSpec()
    assert jax.eval_shape(tx.init, params)[0].gamma.shape == (2,)


def test_beside_group_small_leaves_outside_keeps_one_threshold_per_tensor():
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2), "big": jnp.zeros(64)}
    outside = optax.chain(optclip.adagc(), optclip.group_small_leaves(optax.adam(1e-3), 16))
    inside = optclip.group_small_leaves(optax.chain(optclip.adagc(), optax.adam(1e-3)), 16)
    assert outside.init(params)[0].gamma.shape == (3,)  # a, b, big
    # Inside, a and b are one packed buffer with one threshold: two leaves in all.
    leaves = jax.tree.leaves(
        inside.init(params), is_leaf=lambda x: isinstance(x, optclip.AdaGCState)
    )
    (state,) = [x for x in leaves if isinstance(x, optclip.AdaGCState)]
    assert state.gamma.shape == (2,)


def test_a_tree_with_other_leaves_is_refused_by_name():
    tx = optclip.adagc()
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    with pytest.raises(
        ValueError, match="3 leaves, but the optimizer state holds thresholds for 2"
    ):
        tx.update({"a": jnp.zeros(2), "b": jnp.zeros(2), "c": jnp.zeros(1)}, state)


def test_a_zero_step_does_not_freeze_a_leaf_as_the_papers_rule_does():
    # Leaf "a" has no gradient on the first step (a layer not yet reached): the paper's warm-up
    # takes min(gamma, 0) = 0, and after it every update of "a" is clipped to 0, for ever. Here
    # a zero norm leaves gamma, so "a" passes once its gradient comes; "b" is clipped as before.
    kw = dict(lambda_abs=10.0, warmup_steps=3)
    grads = (
        [{"a": np.zeros(3), "b": np.full(3, 0.1)}]
        + [{"a": np.full(3, 0.1), "b": np.full(3, 0.1)}] * 5
        + [{"a": np.full(3, 0.1), "b": np.full(3, 10.0)}]
    )
    tx, (init_ref, step_ref) = optclip.adagc(**kw), _reference_spikes.adagc(**kw)
    state, state_ref = tx.init(grads[0]), init_ref(grads[0])
    for g in grads:
        out, state = tx.update(jax.tree.map(jnp.asarray, g), state)
        out_ref, state_ref = step_ref(g, state_ref, None)
    np.testing.assert_array_equal(out_ref["a"], 0.0)  # the paper's rule: frozen
    np.testing.assert_allclose(out["a"], 0.1, rtol=1e-6)
    # b's spike is cut at lambda_rel gamma = 1.05 * ||0.1 * ones(3)||.
    np.testing.assert_allclose(np.linalg.norm(out["b"]), 1.05 * 0.1 * np.sqrt(3), rtol=1e-5)


def test_a_leaf_first_reached_after_the_warmup_gets_a_threshold():
    # Leaf "a" is zero through the warm-up and after it; its first nonzero norm sets gamma (an
    # EMA of +inf would stay +inf and never clip it), so its later spike is cut.
    kw = dict(lambda_abs=10.0, warmup_steps=3)
    tx = optclip.adagc(**kw)
    state = tx.init({"a": jnp.zeros(3), "b": jnp.zeros(3)})
    b = jnp.full(3, 0.1)
    for a in [jnp.zeros(3)] * 5 + [jnp.full(3, 0.1)] * 3 + [jnp.full(3, 1e4)]:
        out, state = tx.update({"a": a, "b": b}, state)
    # gamma: 0.1 sqrt(3) from its first norm, then the cut spike's 1.05 times it absorbed.
    np.testing.assert_allclose(float(state.gamma[0]), 0.1 * np.sqrt(3) * 1.001, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["a"]), 1.05 * 0.1 * np.sqrt(3), rtol=1e-5)
