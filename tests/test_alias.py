"""Reference tests: every optimizer against an independent NumPy transcription.

Gradients are ``0.5 * params + Student-t(1.5) noise`` over 32 steps, with a
zero-noise-and-zero-gradient step and a 1e6x spike step, so the trajectories
depend on the updates and errors would compound.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference, _reference_spikes
from tests.conftest import ADAM_EPS, CASES, heavy_tailed_grads, initial_params

STEPS = 32


def _ref_kwargs(case):
    kw = dict(case.kwargs)
    kw["lr"] = kw.pop("learning_rate")
    return kw


def _adam(lr, b1=0.9, b2=0.999, eps=ADAM_EPS):
    # Kingma & Ba 2015, Algorithm 1, as optax writes it (eps outside the root of v_hat).
    def init(params):
        return dict(m=_reference._zeros(params), v=_reference._zeros(params), t=0)

    def step(g, s, params):
        t = s["t"] + 1
        m = {k: b1 * s["m"][k] + (1 - b1) * np.asarray(v, np.float64) for k, v in g.items()}
        v = {k: b2 * s["v"][k] + (1 - b2) * np.asarray(x, np.float64) ** 2 for k, x in g.items()}
        d = {k: -lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) for k in g}
        return d, dict(m=m, v=v, t=t)

    return init, step


def _then_adam(clip):
    """A reference gradient transform followed by the Adam reference."""

    def make(lr, **kw):
        (init_c, step_c), (init_a, step_a) = clip(**kw), _adam(lr)

        def step(g, s, params):
            g, sc = step_c(g, s[0], params)
            d, sa = step_a(g, s[1], params)
            return d, (sc, sa)

        return (lambda p: (init_c(p), init_a(p))), step

    return make


def _skip_step_adam(lr, sigma_factor):
    return _reference_spikes.skip_step_adam(
        lr, window=8, sigma_factor=sigma_factor, min_history=4, eps=ADAM_EPS
    )


# The references of the spike-robust cases (tests/_reference_spikes.py), by case name.
SPIKE_REFERENCES = {
    "acclip_robust": _reference_spikes.robust_acclip,
    "acclip_robust_rms_seeded": _reference_spikes.robust_acclip,
    "acclip_robust_tau1": _reference_spikes.robust_acclip,
    # With optclip's documented changes for zero norms (docs/design.md, "Spike-robust clipping").
    "zclip_adam": lambda lr: _then_adam(_reference_spikes.zclip)(
        lr, warmup_steps=5, max_grad_norm=100.0, optclip_changes=True
    ),
    "adagc_adam": lambda lr: _then_adam(_reference_spikes.adagc)(
        lr, warmup_steps=5, zero_keeps_gamma=True
    ),
    "spam": _reference_spikes.spam,
    # Weight decay on the direction, as optclip's (the authors' shrinks the updated parameter:
    # lr^2 lambda u a step apart, which test_spam.py checks against theirs).
    "spam_wd": lambda *a, **k: _reference_spikes.spam(*a, **k, decay_on_direction=True),
    "skip_step_adam": lambda lr: _skip_step_adam(lr, 3.0),
}


def _grad(noise, params, t):
    # The zero step is zero in total, not only in noise.
    scale = 0.0 if t == 3 else 0.5
    return {k: scale * np.asarray(params[k]) + noise[k] for k in noise}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_numpy_reference(case):
    reference = SPIKE_REFERENCES.get(case.name) or _reference.REFERENCES[case.factory.__name__]
    kwargs = _ref_kwargs(case)
    if "robust" in kwargs:
        del kwargs["robust"]
    init_ref, step_ref = reference(**kwargs)
    tx = case.make()
    noise = heavy_tailed_grads(STEPS)
    p_ref = {k: v.astype(np.float64) for k, v in initial_params().items()}
    s_ref = init_ref(p_ref)
    params = jax.tree.map(jnp.asarray, initial_params())
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(STEPS):
        d_ref, s_ref = step_ref(_grad(noise[t], p_ref, t), s_ref, p_ref)
        p_ref = {k: p_ref[k] + d_ref[k] for k in p_ref}
        g = jax.tree.map(jnp.asarray, _grad(noise[t], params, t))
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        for k in p_ref:
            scale = max(1.0, float(np.max(np.abs(p_ref[k]))))
            np.testing.assert_allclose(
                np.asarray(params[k]),
                p_ref[k],
                rtol=2e-4,
                atol=2e-5 * scale,
                err_msg=f"{case.name}: leaf {k} diverged from the reference at step {t}",
            )


def test_acclip_threshold_state_is_the_alpha_moment_ema():
    # The state holds tau itself; check it against the direct formula over the stream.
    b2, alpha, tau0 = 0.9, 1.5, 0.3
    tx = optclip.scale_by_acclip(b2=b2, alpha=alpha, initial_threshold=tau0)
    grads = heavy_tailed_grads(12, spike=1.0)
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    tau_pow = {k: np.full(np.shape(v), tau0) ** alpha for k, v in grads[0].items()}
    for g in grads:
        _, state = tx.update(jax.tree.map(jnp.asarray, g), state)
        tau_pow = {
            k: b2 * tau_pow[k] + (1 - b2) * np.abs(g[k].astype(np.float64)) ** alpha for k in g
        }
    for k in tau_pow:
        np.testing.assert_allclose(state.tau[k], tau_pow[k] ** (1 / alpha), rtol=1e-5)


def test_acclip_none_seeds_threshold_with_first_gradient():
    tx = optclip.scale_by_acclip(initial_threshold=None)
    g = {"w": jnp.array([2.0, -3.0, 0.0])}
    _, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(state.tau["w"], np.abs(g["w"]))
    # Momentum m_1 = 0.1 g is below |g|: the first step is not clipped.
    assert float(state.clip_fraction) == 0.0


def test_acclip_default_initial_threshold_zero_clips_first_steps():
    tx = optclip.scale_by_acclip()  # default tau_0 = 0
    g = {"w": jnp.array([2.0, -3.0, 1.0])}
    u, state = tx.update(g, tx.init(g))
    assert float(state.clip_fraction) == 1.0
    # tau_1 = 0.01 |g| while m_1 = 0.1 g: each coordinate is cut to ~tau_1.
    np.testing.assert_allclose(np.abs(u["w"]), 0.01 * np.abs(g["w"]), rtol=1e-3)


def test_gclip_schedule_threshold_follows_step_count():
    tx = optclip.clip_by_global_norm(lambda count: 1.0 + count)
    g = {"w": jnp.array([30.0, 40.0])}  # norm 50
    state = tx.init(g)
    for k in range(3):
        u, state = tx.update(g, state)
        np.testing.assert_allclose(optax.tree.norm(u), 1.0 + k, rtol=1e-6)
        assert float(state.norm) == pytest.approx(50.0)
        assert float(state.clipped) == 1.0


def test_cclip_per_leaf_and_per_element_thresholds():
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    thr = {"a": 0.5, "b": jnp.array([1.0, 3.0])}
    tx = optclip.clip_coordinatewise(thr)
    u, state = tx.update(
        {"a": jnp.array([1.0, -0.2, -2.0]), "b": jnp.array([-2.0, 2.0])}, tx.init(params)
    )
    np.testing.assert_allclose(u["a"], [0.5, -0.2, -0.5])
    np.testing.assert_allclose(u["b"], [-1.0, 2.0])
    assert float(state.clip_fraction) == pytest.approx(3 / 5)


def test_clip_momentum_sgd_with_learning_rate_schedule():
    # Threshold gamma / eta_t must follow the schedule: with eta_t = 0.1 / (t + 1)
    # and gamma = 0.05, the step is min(eta_t, gamma/||g||) g.
    sched = lambda c: 0.1 / (c + 1.0)
    tx = optclip.clip_momentum_sgd(sched, gamma=0.05, b1=0.0, nu=1.0)
    g = {"w": jnp.array([3.0, 4.0])}
    state = tx.init(g)
    for t in range(3):
        u, state = tx.update(g, state)
        h = min(0.1 / (t + 1), 0.05 / 5.0)
        np.testing.assert_allclose(u["w"], -h * np.array([3.0, 4.0]), rtol=1e-6)


def test_signum_is_sign_of_momentum():
    tx = optclip.generalized_signsgd(1.0, b1=0.5, b2=0.0)
    g = {"w": jnp.array([1.0, -2.0, 0.0, 4.0])}
    state = tx.init(g)
    u, state = tx.update(g, state)
    np.testing.assert_array_equal(u["w"], -np.sign(g["w"]))
    u, state = tx.update({"w": jnp.array([-3.0, 1.0, 0.0, 0.0])}, state)
    # m_2 = 0.5 * [0.5, -1, 0, 2] + 0.5 * [-3, 1, 0, 0] = [-1.25, 0, 0, 1]; sign(0) = 0.
    np.testing.assert_array_equal(u["w"], -np.array([-1.0, 0.0, 0.0, 1.0]))


def test_weight_decay_is_decoupled_and_masked():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = optclip.acclip(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    zero = jax.tree.map(jnp.zeros_like, params)
    u, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(u["w"], -0.1 * 0.5 * np.ones(2))
    np.testing.assert_array_equal(u["b"], np.zeros(2))


def test_state_bytes_per_parameter():
    params = {"w": jnp.zeros((100, 10), jnp.float32), "b": jnp.zeros(1000, jnp.float32)}
    n = 2000

    def per_param(tx):
        leaves = jax.tree.leaves(tx.init(params))
        big = [x for x in leaves if x.size >= 1000]
        return sum(x.nbytes for x in big) / n

    assert per_param(optclip.acclip(0.1)) == 8
    assert per_param(optclip.acclip(0.1, mu_dtype=jnp.bfloat16)) == 6
    assert per_param(optclip.acclip(0.1, rms_scale=True)) == 12
    assert per_param(optclip.generalized_signsgd(0.1)) == 8
    assert per_param(optclip.generalized_signsgd(0.1, b2=0.0)) == 4
    assert per_param(optclip.gclip(0.1, 1.0, b1=0.9)) == 4
    assert per_param(optclip.cclip(0.1, 1.0, b1=0.9)) == 4
    assert per_param(optclip.gclip(0.1, 1.0)) == 0
    assert per_param(optclip.clipped_gd(0.1, 1.0)) == 0
    assert per_param(optclip.normalized_gd(0.1, 1.0)) == 0
    assert per_param(optclip.normalized_momentum_sgd(0.1)) == 4
    assert per_param(optclip.clip_momentum_sgd(0.1, 1.0)) == 4
    # x - y lies along the previous momentum: a scalar multiple of it, not a second array.
    assert per_param(optclip.stochastic_ingd()) == 4


def test_clip_fraction_is_found_through_wrappers():
    params = {"w": jnp.ones(4), "b": jnp.ones(2)}
    g = {"w": jnp.array([1.0, -1.0, 100.0, 0.0]), "b": jnp.array([1.0, 1.0])}
    tx = optax.inject_hyperparams(optclip.acclip)(learning_rate=0.1, initial_threshold=0.5)
    _, state = tx.update(g, tx.init(params), params)
    # m = 0.1 g; tau_1 = 0.99 * 0.5 + 0.01 |g|: only the 100 coordinate exceeds it.
    assert float(optclip.clip_fraction(state)) == pytest.approx(1 / 6)
    tx = optax.MultiSteps(optclip.cclip(0.1, 0.05, b1=0.0), every_k_schedule=1)
    _, state = tx.update(g, tx.init(params), params)
    # b1 = 0: every nonzero coordinate (5 of 6) exceeds 0.05; the zero one is not clipped.
    assert float(optclip.clip_fraction(state)) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no ACClip"):
        optclip.clip_fraction(optax.adam(0.1).init(params))


def test_cclip_can_skip_the_clip_fraction():
    tx = optclip.cclip(0.1, 0.05, track_clip_fraction=False)
    params = {"w": jnp.ones(3)}
    u, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    np.testing.assert_allclose(u["w"], -0.1 * 0.05 * np.ones(3))
    assert float(optclip.clip_fraction(state)) == 0.0


@pytest.mark.parametrize("rate", [1e-3, 3e-3, np.float32(1e-4), jnp.asarray(5e-3)])
def test_printed_rule_acclip_at_an_adam_sized_rate_warns(rate):
    with pytest.warns(UserWarning, match=r"`learning_rate`=.*rms_scale=True"):
        optclip.acclip(rate)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optclip.acclip(0.1),
        lambda: optclip.acclip(1e-2),
        lambda: optclip.acclip(1e-3, rms_scale=True),
        lambda: optclip.acclip(optax.constant_schedule(1e-3)),
        lambda: optax.inject_hyperparams(optclip.acclip)(learning_rate=0.3),
    ],
    ids=["sgd-rate", "at-the-bound", "rms-scale", "schedule", "injected"],
)
def test_acclip_at_its_own_scale_is_quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make()
