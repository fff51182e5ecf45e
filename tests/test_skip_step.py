"""Skip-step: the rolling-window rule (tests/_reference_spikes.py), and how it composes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference_spikes
from tests.conftest import heavy_tailed_grads, initial_params


def _stream(steps=40):
    g = heavy_tailed_grads(steps, df=30.0, spike_at=18, spike=1e3)
    g[30] = {k: v * np.float32(50) for k, v in g[30].items()}
    return g


def test_matches_the_reference_with_losses():
    grads = _stream()
    losses = [1.0 + 0.01 * np.sin(t) for t in range(len(grads))]
    losses[25] = 40.0  # a loss spike on an ordinary gradient
    init_ref, step_ref = _reference_spikes.skip_step_adam(
        0.05, window=16, sigma_factor=3.0, min_history=6
    )
    tx = optclip.skip_step(optax.adam(0.05), window=16, sigma_factor=3.0, min_history=6)
    params = jax.tree.map(jnp.asarray, initial_params())
    p_ref = {k: v.astype(np.float64) for k, v in initial_params().items()}
    state, s_ref = tx.init(params), init_ref(p_ref)
    update = jax.jit(tx.update)
    skipped = []
    for t, g in enumerate(grads):
        d_ref, s_ref = step_ref(g, s_ref, p_ref, value=losses[t])
        p_ref = {k: p_ref[k] + d_ref[k] for k in p_ref}
        u, state = update(jax.tree.map(jnp.asarray, g), state, params, value=losses[t])
        params = optax.apply_updates(params, u)
        for k in g:
            np.testing.assert_allclose(params[k], p_ref[k], rtol=1e-4, atol=2e-5, err_msg=f"{t}")
        if float(state.skip):
            skipped.append(t)
    assert int(state.skipped) == s_ref["skipped"] == len(skipped)
    assert {18, 25, 30} <= set(skipped)


def test_a_skipped_step_is_zero_and_leaves_the_inner_state():
    tx = optclip.skip_step(optax.adam(0.1), window=4, min_history=2)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for g in (1.0, 1.2, 0.8, 1.0):
        _, state = tx.update({"w": jnp.full(2, g)}, state, params)
    u, after = tx.update({"w": jnp.full(2, 1e5)}, state, params)
    np.testing.assert_array_equal(u["w"], 0.0)
    jax.tree.map(np.testing.assert_array_equal, after.inner_state, state.inner_state)
    # The outlier entered the window as the bound it crossed, not as 1e5 * sqrt(2).
    assert float(jnp.max(after.norms)) < 10.0


def test_a_burst_of_spikes_stays_skipped():
    tx = optclip.skip_step(optax.sgd(0.1), window=32, min_history=8)
    state = tx.init({"w": jnp.zeros(3)})
    rng = np.random.default_rng(0)
    for _ in range(32):
        _, state = tx.update({"w": jnp.asarray(rng.normal(size=3), jnp.float32)}, state)
    for _ in range(10):
        u, state = tx.update({"w": jnp.full(3, 1e4)}, state)
        np.testing.assert_array_equal(u["w"], 0.0)
    assert int(state.skipped) == 10


@pytest.mark.parametrize("watched", ["norm", "loss"])
def test_a_window_without_spread_does_not_lock(watched):
    # 64 zero gradients (or a constant loss) leave a window of equal values, against which any
    # larger value is 6 sigma out; recorded as the bound, the window would never move again and
    # every later step would be skipped. It judges nothing until it has a spread.
    tx = optclip.skip_step(optax.sgd(0.1))
    state = tx.init({"w": jnp.zeros(3)})
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    normal = lambda: jnp.asarray(rng.normal(size=3), jnp.float32)
    for _ in range(64):
        if watched == "norm":
            _, state = update({"w": jnp.zeros(3)}, state)
        else:
            _, state = update({"w": normal()}, state, value=7.77)  # not exact in float32
    late = []
    for t in range(40):
        if watched == "norm":
            _, state = update({"w": normal()}, state)
        else:
            _, state = update({"w": normal()}, state, value=7.77 + 0.01 * rng.random())
        if t >= 20:
            late.append(float(state.skip))
    # The first values after the flat stretch may be outliers against it (a few are skipped
    # while the window learns their spread); then none is.
    assert int(state.skipped) <= 10
    assert late == [0.0] * 20
    # Once it has a spread, a spike is skipped.
    extra = {} if watched == "norm" else {"value": 7.77}
    u, state = update({"w": jnp.full(3, 1e4)}, state, **extra)
    np.testing.assert_array_equal(u["w"], 0.0)


def test_non_finite_steps_are_not_skipped_and_apply_if_finite_rejects_them():
    inner = optclip.skip_step(optax.adam(0.1), window=4, min_history=2)
    tx = optax.apply_if_finite(inner, max_consecutive_errors=3)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for g in (1.0, 1.2, jnp.nan, 0.8, 1.0):
        _u, state = jax.jit(tx.update)({"w": jnp.full(2, g)}, state, params)
    assert int(state.total_notfinite) == 1
    assert int(state.inner_state.skipped) == 0
    assert int(state.inner_state.norms_seen) == 4  # the NaN step left no trace
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.inner_state))


@pytest.mark.parametrize("outside", [True, False], ids=["multisteps_outside", "inside"])
def test_composes_with_multisteps(outside):
    if outside:
        tx = optax.MultiSteps(optclip.skip_step(optax.sgd(1.0), window=4, min_history=2), 2)
    else:
        tx = optclip.skip_step(
            optax.MultiSteps(optax.sgd(1.0), 2).gradient_transformation(), 4, 6.0, 2
        )
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    total = jnp.zeros(1)
    grads = [1.0, 1.0, 1.1, 0.9, 1.0, 1.0, 1.0, 1.2, 1e4, 1e4, 1.0, 1.0]
    for g in grads:
        u, state = jax.jit(tx.update)({"w": jnp.array([g])}, state, params)
        total = total + u["w"]
    # The two 1e4 micro-steps never reach the parameters: the sum stays at the ordinary steps'.
    assert -15.0 < float(total[0]) < -3.0


def test_wrong_arguments_are_named():
    with pytest.raises(TypeError, match="`window` must be a Python int"):
        optclip.skip_step(optax.sgd(0.1), window=8.0)
    with pytest.raises(ValueError, match=r"`min_history` must be in \[2, 8\]"):
        optclip.skip_step(optax.sgd(0.1), window=8, min_history=9)
    with pytest.raises(ValueError, match=r"`sigma_factor` must be in \(0, inf\), got -1.0"):
        optclip.skip_step(optax.sgd(0.1), sigma_factor=-1.0)
    tx = optclip.skip_step(optax.sgd(0.1))
    with pytest.raises(ValueError, match="`value` must be the scalar loss"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), value=jnp.ones(2))
