"""SPAM: the authors' rule (tests/_reference_spikes.py), its quirks, and its pieces composed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import _spam
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
    for t, g in enumerate(STREAM):
        d_ref, s_ref = step_ref(g, s_ref, p_ref)
        p_ref = {k: p_ref[k] + d_ref[k] for k in p_ref}
        for k in g:
            np.testing.assert_allclose(ours[t][k], d_ref[k], rtol=5e-5, atol=1e-8, err_msg=f"{t}")
    # Three resets happened (steps 11, 23, 35) and Adam's count was never reset.
    assert int(state[0].count) == len(STREAM)
    if threshold == 0.0:
        assert float(state[0].clip_fraction) == 0.0


def _first_updates(tx, grads):
    params = {"w": jnp.zeros(2)}
    state, out = tx.init(params), []
    for g in grads:
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
        out.append(np.asarray(u["w"]))
    return out


@pytest.mark.parametrize("free", [0, 1, 2])
def test_a_coordinate_with_no_second_moment_is_not_clipped_where_the_authors_freeze_it(free):
    # Coordinate 0 sees a gradient from the first step; coordinate 1 only from the third (an
    # embedding row of a token not yet seen). The authors' rule clips a gradient against v = 0
    # to 0: with free < 2 every coordinate stays at 0 until the first reset, and coordinate 1
    # does whatever free is. Here both move from their first nonzero gradient on, as Adam's
    # first step does (-lr sign(g), the warm-up scale 1 before the first reset).
    grads = [[1.0, 0.0], [1.0, 0.0], [1.0, -2.0], [1.0, -2.0]]
    kw = dict(threshold=5000.0, interval=100, warmup_steps=5, spike_free_steps=free)
    ours = _first_updates(optclip.spam(1e-2, **kw), grads)
    init_ref, step_ref = _reference_spikes.spam(1e-2, **kw)
    s_ref, theirs = init_ref({"w": np.zeros(2)}), []
    for g in grads:
        d, s_ref = step_ref({"w": np.asarray(g)}, s_ref, {"w": np.zeros(2)})
        theirs.append(d["w"])
    np.testing.assert_allclose(ours[0], [-1e-2, 0.0], rtol=1e-4)
    # Step T = 2 for coordinate 1: m = 0.1 g, v = 0.001 g^2, Adam's count k = 3, g unclipped.
    k, g = 3, -2.0
    expected = -1e-2 * np.sqrt(1 - 0.999**k) / (1 - 0.9**k) * (0.1 * g) / (np.sqrt(1e-3) * 2 + 1e-6)
    np.testing.assert_allclose(ours[2][1], expected, rtol=1e-5)
    assert all(u[1] == 0.0 for u in theirs)  # frozen in the authors' code
    assert (theirs[0][0] == 0.0) == (free < 2)


def test_the_clip_cuts_a_spike_to_the_bound_and_is_off_at_the_start_of_an_interval():
    tx = optclip.scale_by_spam(threshold=4.0, interval=100, warmup_steps=5, spike_free_steps=2)
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


def test_the_stored_rms_is_sqrt_v_and_its_signs_count_the_authors_clips():
    # The state keeps sqrt(v) with its sign bit set where the step clipped; clip_fraction reads
    # the signs. Both against the authors' rule, the clip recounted here from their v.
    threshold = 2.0
    init_ref, step_ref = _reference_spikes.spam(1e-2, threshold=threshold, **SCHEDULE)
    p_ref = {k: v.astype(np.float64) for k, v in initial_params().items()}
    s_ref = init_ref(p_ref)
    tx = optclip.spam(1e-2, threshold=threshold, **SCHEDULE)
    params = jax.tree.map(jnp.asarray, initial_params())
    state, update = tx.init(params), jax.jit(tx.update)
    interval, free = SCHEDULE["interval"], SCHEDULE["spike_free_steps"]
    seen = 0
    for g in STREAM:
        t = s_ref["total_step"]
        on = t + 1 >= free and (t + 1) % interval >= free
        reset = (t + 1) % interval == 0
        hits = sum(
            int(
                np.sum(
                    np.asarray(gk, np.float64) ** 2 > threshold * (0 if reset else s_ref["v"][k])
                )
            )
            for k, gk in g.items()
        )
        d_ref, s_ref = step_ref(g, s_ref, p_ref)
        p_ref = {k: p_ref[k] + d_ref[k] for k in p_ref}
        _, state = update(jax.tree.map(jnp.asarray, g), state, params)
        spam_state = state[0]
        size = sum(np.size(gk) for gk in g.values())
        assert float(spam_state.clip_fraction) == (hits / size if on else 0.0), t
        for k in g:
            rms = np.asarray(spam_state.rms[k])
            np.testing.assert_allclose(np.abs(rms), np.sqrt(s_ref["v"][k]), rtol=2e-6, atol=1e-30)
        seen += hits if on else 0
    assert seen > 0  # the threshold is tight enough that the stream clips


def test_a_nan_gradient_gives_a_nan_update_and_is_not_counted_as_clipped():
    tx = optclip.scale_by_spam(threshold=4.0, interval=100, warmup_steps=5, spike_free_steps=2)
    state = tx.init({"w": jnp.zeros(3)})
    _, state = tx.update({"w": jnp.array([1.0, 1.0, 1.0])}, state)
    u, state = tx.update({"w": jnp.array([jnp.nan, 1e3, 0.01])}, state)  # bound 0.063
    assert np.isnan(float(u["w"][0])) and np.isfinite(np.asarray(u["w"][1:])).all()
    assert float(state.clip_fraction) == pytest.approx(1 / 3)  # the spike, not the NaN


@pytest.mark.parametrize("keep", [1.0, 0.0], ids=["ema", "reset"])
@pytest.mark.parametrize("b2", [0.999, 0.5, 0.0])
def test_the_second_moment_update_is_overflow_safe_and_accurate(b2, keep):
    # sqrt(b2 r^2 + (1 - b2) g^2) in float64 from the same float32 inputs, over float32's range:
    # squares of these overflow or flush to zero in float32.
    rng = np.random.default_rng(0)
    mags = np.float32([0.0, 1e-45, 1e-40, 1e-30, 1e-20, 1.0, 1e19, 1e30, 3e38, 3.4e38])
    r, g = (x.ravel() for x in np.meshgrid(mags, mags))
    r = np.concatenate([r, (10.0 ** rng.uniform(-37, 38, 5000)).astype(np.float32)])
    g = np.concatenate([g, (10.0 ** rng.uniform(-37, 38, 5000) * rng.choice([-1, 1], 5000))])
    g = g.astype(np.float32)
    update = jax.jit(_spam.moment_update, static_argnums=2)
    got = np.asarray(update(r, np.abs(g), b2, jnp.float32(keep)), np.float64)
    # A reset (keep 0) drops r: v restarts from (1 - b2) g^2.
    want = np.sqrt(keep * b2 * np.float64(r) ** 2 + (1 - b2) * np.float64(g) ** 2)
    normal = want > 1e-37  # a result in float32's normal range: to rounding
    np.testing.assert_allclose(got[normal], want[normal], rtol=3e-7)
    # Below it, within the normal range's floor (XLA:CPU may flush subnormals to zero).
    np.testing.assert_allclose(got[~normal], want[~normal], atol=1.2e-38)
    special = np.float32([np.inf, np.nan, 1.0])
    out = np.asarray(_spam.moment_update(special, special[::-1], b2, keep))
    # An inf r times a zero weight (b2 = 0, or a reset) is NaN: never hidden as a finite value.
    assert np.isinf(out[0]) if b2 * keep > 0 else np.isnan(out[0])
    assert np.isnan(out[1])
    assert np.isinf(out[2])  # r = 1, |g| = inf


def test_weight_decay_is_the_authors_to_lr_squared_lambda_u():
    # The authors shrink the updated parameter, (x - lr u)(1 - lr lambda); optclip adds the
    # decay to the direction, x - lr (u + lambda x): lr^2 lambda u apart, each step.
    lr, lam = 0.05, 0.2
    kw = dict(threshold=5000.0, interval=12, warmup_steps=5, spike_free_steps=3)
    p = {"w": np.array([1.0, -2.0, 0.5])}
    g = {"w": np.array([0.3, 0.1, -0.4])}
    init_ref, step_ref = _reference_spikes.spam(lr, weight_decay=lam, **kw)
    d_ref, _ = step_ref(g, init_ref(p), p)
    tx = optclip.spam(lr, weight_decay=lam, **kw)
    params = jax.tree.map(jnp.asarray, p)
    u, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(params), params)
    u_plain, _ = optclip.spam(lr, **kw).update(
        jax.tree.map(jnp.asarray, g), tx.init(params), params
    )
    np.testing.assert_allclose(
        np.asarray(u["w"]) - d_ref["w"], (lr * lam) * np.asarray(u_plain["w"]), rtol=1e-4
    )


@pytest.mark.parametrize("make", [optclip.scale_by_spam, optclip.clip_by_second_moment])
def test_a_reset_step_clips_nothing_even_without_spike_free_steps(make):
    # With spike_free_steps=0 the clip runs on a reset step, against the v just reset to 0:
    # the authors' rule cuts every gradient to 0 there; none is a spike against no statistic.
    kw = dict(threshold=5000.0, interval=2, spike_free_steps=0)
    if make is optclip.scale_by_spam:
        kw["warmup_steps"] = 0
    tx = make(**kw)
    state = tx.init({"w": jnp.zeros(2)})
    for t in range(4):  # steps 1 and 3 reset (T + 1 = 2, 4)
        u, state = tx.update({"w": jnp.array([1.0, -3.0])}, state)
        assert float(optclip.clip_fraction(state)) == 0.0, t
        assert bool(jnp.all(u["w"] != 0.0)), t
