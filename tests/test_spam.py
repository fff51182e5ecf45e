"""SPAM: the authors' rule (tests/_reference_spikes.py), its quirks, and its pieces composed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference_spikes
from tests.conftest import heavy_tailed_grads, initial_params

STREAM = heavy_tailed_grads(40, spike_at=15)
SCHEDULE = dict(interval=12, warmup_steps=5, spike_free_steps=3)


def _run(tx, steps=None):
    params = jax.tree.map(jnp.asarray, initial_params())
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in STREAM[: steps or len(STREAM)]:
        u, state = update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out, state


@pytest.mark.parametrize("threshold", [5000.0, 2.0, 0.0], ids=["default", "tight", "off"])
def test_matches_the_authors_code_with_resets_and_clips(threshold):
    init_ref, step_ref = _reference_spikes.spam(1e-2, threshold=threshold, **SCHEDULE)
    p_ref = {k: v.astype(np.float64) for k, v in initial_params().items()}
    s_ref = init_ref(p_ref)
    ours, state = _run(optclip.spam(1e-2, threshold=threshold, **SCHEDULE))
    clipped = 0
    for t, g in enumerate(STREAM):
        d_ref, s_ref = step_ref(g, s_ref, p_ref)
        p_ref = {k: p_ref[k] + d_ref[k] for k in p_ref}
        for k in g:
            np.testing.assert_allclose(ours[t][k], d_ref[k], rtol=5e-5, atol=1e-8, err_msg=f"{t}")
    # Three resets happened (steps 11, 23, 35) and Adam's count was never reset.
    assert int(state[0].count) == len(STREAM)
    clipped = float(state[0].clip_fraction)
    assert clipped >= 0.0


def test_the_clip_cuts_a_spike_to_the_bound_and_is_off_at_the_start_of_an_interval():
    tx = optclip.scale_by_spam(threshold=4.0, interval=100, spike_free_steps=2)
    state = tx.init({"w": jnp.zeros(2)})
    _, state = tx.update({"w": jnp.array([1.0, 1.0])}, state)  # T = 0: no clip yet
    assert float(state.clip_fraction) == 0.0
    v = float(state.rms["w"][0]) ** 2  # 0.001
    _, state = tx.update({"w": jnp.array([1e3, 0.05])}, state)  # T = 1: clips (T + 1 >= 2)
    assert float(state.clip_fraction) == 0.5
    # m = 0.9 * 0.1 + 0.1 * sqrt(4 v): the spike entered as sign(g) sqrt(theta v).
    np.testing.assert_allclose(state.mu["w"][0], 0.9 * 0.1 + 0.1 * np.sqrt(4 * v), rtol=1e-6)


def test_the_warmup_after_a_reset_is_the_authors_cosine():
    tx = optclip.scale_by_reset_warmup(interval=4, warmup_steps=2)
    state = tx.init({"w": jnp.zeros(1)})
    scales = []
    for _ in range(9):
        u, state = tx.update({"w": jnp.ones(1)}, state)
        scales.append(float(u["w"][0]))
    d = lambda s: 0.99 * (1 + np.cos(np.pi * s / 3)) / 2
    expected = [1, 1, 1, 1 - d(0), 1 - d(1), 1, 1, 1 - d(0), 1 - d(1)]
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


def test_the_pieces_chained_are_scale_by_spam():
    # eps = 0: optax's Adam adds eps to sqrt(v_hat), SPAM's to sqrt(v); otherwise the same.
    pieces = optax.chain(
        optclip.clip_by_second_moment(
            3.0, 0.999, SCHEDULE["interval"], SCHEDULE["spike_free_steps"]
        ),
        optclip.reset_periodically(optax.scale_by_adam(eps=0.0), SCHEDULE["interval"]),
        optclip.scale_by_reset_warmup(SCHEDULE["interval"], SCHEDULE["warmup_steps"]),
    )
    whole = optclip.scale_by_spam(eps=0.0, threshold=3.0, **SCHEDULE)
    a, sa = _run(pieces)
    b, sb = _run(whole)
    for t in range(len(STREAM)):
        for k in a[t]:
            np.testing.assert_allclose(a[t][k], b[t][k], rtol=2e-5, atol=1e-7, err_msg=f"{t}")
    assert optclip.clip_fraction(sa) == optclip.clip_fraction(sb) > 0


def test_reset_periodically_keeps_counts_and_resets_moments():
    tx = optclip.reset_periodically(optax.adam(0.1), interval=3)
    state = tx.init({"w": jnp.zeros(2)})
    for _ in range(3):
        _, state = tx.update({"w": jnp.ones(2)}, state)
    adam = state.inner_state[0]
    assert int(adam.count) == 3  # never reset
    # The third step (T = 2) reset m and v first: both hold one step's worth of g.
    np.testing.assert_allclose(adam.mu["w"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(adam.nu["w"], 0.001, rtol=1e-6)


def test_state_is_adams_size():
    params = {"w": jnp.zeros((100, 10))}
    big = [x for x in jax.tree.leaves(optclip.spam(1e-3).init(params)) if x.size >= 1000]
    assert sum(x.nbytes for x in big) == 8 * 1000
