"""ZClip against the authors' rule (tests/_reference_spikes.py) in every mode, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference_spikes
from tests.conftest import heavy_tailed_grads

# Spikes after warm-up (step 20, and 1e3x at 26), a zero step inside it (step 3).
STREAM = heavy_tailed_grads(36, spike_at=20)
STREAM[26] = {k: v * np.float32(1e3) for k, v in STREAM[26].items()}

CONFIGS = {
    "defaults": dict(warmup_steps=5),
    "no_cap": dict(warmup_steps=5, max_grad_norm=None),
    "cap_binds": dict(warmup_steps=4, max_grad_norm=8.0),
    "mean": dict(warmup_steps=5, max_grad_norm=None, clip_option="mean"),
    "percentile": dict(warmup_steps=5, max_grad_norm=None, mode="percentile", z_thresh=1.5),
    "skip_ema_on_spike": dict(warmup_steps=5, max_grad_norm=None, skip_update_on_spike=True),
    "clip_factor": dict(warmup_steps=5, max_grad_norm=None, clip_factor=0.5, alpha=0.9),
    "one_step_warmup": dict(warmup_steps=1, max_grad_norm=None, z_thresh=1.0),
}


# Every configuration jitted; two also eagerly (each eager step dispatches op by op, and the
# shared tests of tests/test_transforms.py compare jit with eager for every case already).
EAGER = ("defaults", "skip_ema_on_spike")
RUNS = [pytest.param(c, True, id=f"{c}-jit") for c in CONFIGS]
RUNS += [pytest.param(c, False, id=f"{c}-eager") for c in EAGER]


@pytest.mark.parametrize(("config", "jit"), RUNS)
def test_matches_the_authors_rule(config, jit):
    kwargs = CONFIGS[config]
    init_ref, step_ref = _reference_spikes.zclip(**kwargs, optclip_changes=True)
    tx = optclip.zclip(**kwargs)
    state_ref = init_ref(STREAM[0])
    state = tx.init(STREAM[0])
    update = jax.jit(tx.update) if jit else tx.update
    spikes = 0
    for t, g in enumerate(STREAM):
        out_ref, state_ref = step_ref(g, state_ref, None)
        out, state = update(jax.tree.map(jnp.asarray, g), state)
        for k in g:
            np.testing.assert_allclose(out[k], out_ref[k], rtol=2e-5, atol=1e-6, err_msg=f"{t}")
        if state_ref["mean"] is not None:
            np.testing.assert_allclose(state.mean, state_ref["mean"], rtol=2e-5)
            np.testing.assert_allclose(state.std**2, state_ref["var"], rtol=5e-5)
        spikes += int(state.spike)
    assert spikes >= 1, "the stream must exercise the spike branch"


def _zclip_both(kw, norms):
    grads = [{"w": np.array([n, 0.0], np.float32)} for n in norms]
    tx, (init_ref, step_ref) = optclip.zclip(**kw), _reference_spikes.zclip(**kw)
    state, state_ref = tx.init(grads[0]), init_ref(grads[0])
    ours, theirs = [], []
    for g in grads:
        out, state = tx.update(jax.tree.map(jnp.asarray, g), state)
        out_ref, state_ref = step_ref(g, state_ref, None)
        ours.append(float(out["w"][0]))
        theirs.append(float(out_ref["w"][0]))
    return ours, theirs, state, state_ref


def test_zero_norms_are_not_statistics():
    # A warm-up of zero gradients: the authors' rule records the zeros, so mean = std = 0 and
    # every later norm is clipped to 0, for ever. A zero norm is recorded by neither rule here:
    # the warm-up ends after three nonzero norms, and the steps after it follow the norms.
    ours, theirs, state, _ = _zclip_both(dict(warmup_steps=3), [0.0] * 3 + [0.5, 0.6, 0.7, 0.8])
    np.testing.assert_array_equal(theirs[3:], 0.0)
    np.testing.assert_allclose(ours[3:], [0.5, 0.6, 0.7, 0.8], rtol=1e-5)
    assert int(state.count) == 4  # the three zeros were not counted


def test_a_warmup_without_spread_does_not_cap_for_ever():
    # One warm-up step leaves std = 0: the authors' rule calls any larger norm a spike, clips
    # it to the mean, which the EMA absorbs, and std stays 0, so the cap is the first norm for
    # ever. Here no norm is a spike until the statistics have a spread, which they then learn.
    norms = [1.0, 1.2, 1.5, 2.0, 3.0, 4.0]
    ours, theirs, state, state_ref = _zclip_both(dict(warmup_steps=1, max_grad_norm=None), norms)
    assert state_ref["var"] == 0.0
    np.testing.assert_allclose(theirs[1:], 1.0, rtol=1e-5)
    assert ours[1] == pytest.approx(1.2) and float(state.std) > 0.0
    assert ours[-1] > 1.0 and float(state.mean) > float(state_ref["mean"])


def test_a_spike_is_cut_to_the_adaptive_threshold_and_the_ema_never_sees_it():
    tx = optclip.zclip(warmup_steps=3, max_grad_norm=None)
    state = tx.init({"w": jnp.zeros(2)})
    for n in (1.0, 2.0, 3.0):  # mean 2, population std sqrt(2/3)
        _, state = tx.update({"w": jnp.array([n, 0.0])}, state)
    np.testing.assert_allclose([state.mean, state.std], [2.0, np.sqrt(2 / 3)], rtol=1e-6)
    u, state = tx.update({"w": jnp.array([0.0, 1e6])}, state)
    std = np.sqrt(2 / 3)
    z = (1e6 - 2.0) / (std + 1e-6)
    cut = 2.0 + 2.5 * std / (z / 2.5)
    np.testing.assert_allclose(u["w"][1], cut / (1e6 + 1e-6) * 1e6, rtol=1e-5)
    assert float(state.spike) == 1.0 and float(state.clipped) == 1.0
    # The EMA absorbed the threshold (about 2), not the 1e6 norm.
    np.testing.assert_allclose(state.mean, 0.97 * 2.0 + 0.03 * cut, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_step_is_nan_everywhere_and_leaves_the_statistics(bad):
    tx = optclip.zclip(warmup_steps=2)
    state = tx.init({"w": jnp.zeros(3)})
    for g in ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]):
        _, state = tx.update({"w": jnp.array(g)}, state)
    u, after = jax.jit(tx.update)({"w": jnp.array([1.0, bad, 0.0])}, state)
    assert np.all(np.isnan(u["w"]))
    for field in ("count", "mean", "std"):
        np.testing.assert_array_equal(getattr(after, field), getattr(state, field))


def test_under_apply_if_finite_a_nan_step_poisons_no_statistic():
    tx = optax.apply_if_finite(optax.chain(optclip.zclip(warmup_steps=2), optax.adam(0.1)), 5)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in ([1.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]):
        _, state = update({"w": jnp.array(g)}, state, params)
    assert int(state.total_notfinite) == 1
    zclip_state = state.inner_state[0]
    assert int(zclip_state.count) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_gradients_stay_in_their_dtype_with_float32_statistics(dtype):
    tx = optclip.zclip(warmup_steps=2, max_grad_norm=None)
    state = tx.init({"w": jnp.zeros(4, dtype)})
    for scale in (1.0, 2.0, 1.5, 1000.0):
        u, state = jax.jit(tx.update)({"w": jnp.full(4, scale, dtype)}, state)
        assert u["w"].dtype == dtype
    assert state.mean.dtype == jnp.float32 and float(state.spike) == 1.0
    assert float(jnp.linalg.norm(u["w"].astype(jnp.float32))) < 10.0


def test_warmup_steps_may_be_injected():
    params = {"w": jnp.zeros(2)}
    plain, injected = (
        optclip.zclip(warmup_steps=3),
        optax.inject_hyperparams(optclip.zclip)(warmup_steps=3),
    )
    s1, s2 = plain.init(params), injected.init(params)
    for g in STREAM[:8]:
        g = {"w": jnp.asarray(g["b"][:2])}
        u1, s1 = plain.update(g, s1)
        u2, s2 = jax.jit(injected.update)(g, s2)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
