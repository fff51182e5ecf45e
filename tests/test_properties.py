"""Hypothesis properties: the update bounds each paper proves or each rule implies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optclip

N = 16
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# Gradient streams: a few steps of float32 vectors whose scale spans 1e-30..1e30.
unit = hnp.arrays(np.float32, (N,), elements=st.floats(-1, 1, width=32))
scales = st.sampled_from([0.0, 1e-30, 1e-8, 1.0, 1e3, 1e12, 1e30])
streams = st.lists(st.tuples(unit, scales), min_size=1, max_size=5)


def _run(tx, stream, params=None):
    params = {"w": jnp.zeros(N)} if params is None else params
    state = tx.init(params)
    update = _jitted(tx)
    out = []
    for g, s in stream:
        u, state = update({"w": jnp.asarray(g * np.float32(s))}, state, params)
        out.append((u["w"], state))
    return out


_CACHE = {}


def _jitted(tx):
    # One compilation per transform object across hypothesis examples.
    key = id(tx)
    if key not in _CACHE:
        _CACHE[key] = (tx, jax.jit(tx.update))
    return _CACHE[key][1]


LR = 0.5
GCLIP = optclip.gclip(LR, threshold=2.0, b1=0.9)
CCLIP = optclip.cclip(LR, threshold={"w": jnp.linspace(0.0, 3.0, N)}, b1=0.5)
ACCLIP = optclip.acclip(LR, alpha=1.5, initial_threshold=0.1)
ACCLIP_RMS = optclip.acclip(LR, rms_scale=True)
GSIGN = optclip.generalized_signsgd(LR, b2=0.9)


@SETTINGS
@given(streams)
def test_gclip_norm_bounded_and_tight(stream):
    for u, state in _run(GCLIP, stream):
        norm = float(jnp.linalg.norm(u))
        assert norm <= LR * 2.0 * (1 + 1e-5)
        pre = float(optax.tree.get(state, "norm"))
        if pre > 2.0:  # clipped: exactly at the threshold, even at 1e30
            assert abs(norm - LR * 2.0) <= 1e-5 * LR * 2.0


@SETTINGS
@given(streams)
def test_cclip_coordinates_bounded(stream):
    tau = np.linspace(0.0, 3.0, N)
    for u, _ in _run(CCLIP, stream):
        assert np.all(np.abs(np.asarray(u)) <= LR * tau * (1 + 1e-6))


@SETTINGS
@given(streams)
def test_acclip_coordinates_bounded_by_threshold(stream):
    for u, state in _run(ACCLIP, stream):
        tau = np.asarray(optax.tree.get(state, "tau")["w"])
        assert np.all(np.isfinite(np.asarray(u))) and np.all(np.isfinite(tau))
        assert np.all(np.abs(np.asarray(u)) <= LR * tau * (1 + 1e-6))


@SETTINGS
@given(streams)
def test_rms_acclip_coordinates_bounded(stream):
    for u, state in _run(ACCLIP_RMS, stream):
        tau, rms = optax.tree.get(state, "tau"), optax.tree.get(state, "rms")
        bound = LR * np.asarray(tau["w"]) / (np.asarray(rms["w"]) + 1e-5)
        assert np.all(np.abs(np.asarray(u)) <= bound * (1 + 1e-5))


@SETTINGS
@given(streams)
def test_generalized_sign_coordinates_bounded(stream):
    for u, _ in _run(GSIGN, stream):
        assert np.all(np.abs(np.asarray(u)) <= LR / np.sqrt(1 - 0.9) * (1 + 1e-6))


@SETTINGS
@given(
    unit.filter(lambda g: np.all(np.abs(g) > 1e-3)),
    st.sampled_from([1e-30, 1e-10, 1.0, 1e20, 1e30]),
)
def test_generalized_sign_first_step_is_exactly_at_the_bound(g, scale):
    # m_1 = (1-b1) g and sqrt(v_1) = sqrt(1-b2) |m_1|, so |u| = lr / sqrt(1-b2)
    # whatever the scale: m^2 must neither overflow nor flush to zero.
    ((u, _),) = _run(GSIGN, [(g, scale)])
    np.testing.assert_allclose(np.abs(np.asarray(u)), LR / np.sqrt(0.1), rtol=1e-5)


@SETTINGS
@given(unit.filter(lambda g: np.any(np.abs(g) > 1e-3)), st.sampled_from([1e-30, 1.0, 1e30]))
def test_normalized_direction_has_unit_norm_at_any_scale(g, scale):
    tx = optclip.normalized_momentum_sgd(LR)
    ((u, _),) = _run(tx, [(g, scale)])
    np.testing.assert_allclose(float(jnp.linalg.norm(u)), LR, rtol=1e-5)


@SETTINGS
@given(streams, st.sampled_from(["gclip", "cclip", "acclip", "rms", "gsign"]))
def test_updates_and_states_finite(stream, which):
    tx = dict(gclip=GCLIP, cclip=CCLIP, acclip=ACCLIP, rms=ACCLIP_RMS, gsign=GSIGN)[which]
    for u, state in _run(tx, stream):
        assert np.all(np.isfinite(np.asarray(u)))
        assert all(
            bool(jnp.all(jnp.isfinite(x)))
            for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.floating)
        )


@SETTINGS
@given(unit, scales)
def test_drop_in_clip_equals_optax_where_optax_is_finite(g, scale):
    x = {"w": jnp.asarray(g * np.float32(scale))}
    ours, _ = optclip.clip_by_global_norm(1.0).update(x, optclip.clip_by_global_norm(1.0).init(x))
    theirs, _ = optax.clip_by_global_norm(1.0).update(x, optax.EmptyState())
    if np.all(np.isfinite(np.asarray(theirs["w"]))) and 1e-18 < scale < 1e18:
        np.testing.assert_allclose(ours["w"], theirs["w"], rtol=3e-7, atol=0)


def test_drop_in_clip_keeps_subnormal_entries_like_optax():
    # Found by hypothesis: an unclipped update multiplied by 1.0 lost its subnormal entry.
    x = {"w": jnp.asarray(np.array([1e-45] + [0.0] * 15, np.float32))}
    ours, _ = optclip.clip_by_global_norm(1.0).update(x, optclip.clip_by_global_norm(1.0).init(x))
    theirs, _ = optax.clip_by_global_norm(1.0).update(x, optax.EmptyState())
    np.testing.assert_array_equal(ours["w"], theirs["w"])
