"""optclip.theory: the theorems' formulas, re-typed here independently, and the iterate average."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import theory


def test_gclip_strongly_convex_schedules_use_k_to_the_one_over_alpha():
    s = theory.gclip_strongly_convex(mu=0.5, G=2.0, alpha=1.5)
    for count in (0, 1, 9, 99):
        k = count + 1  # optax counts from 0, the theorem from 1
        assert float(s.learning_rate(count)) == pytest.approx(4 / (0.5 * (k + 1)), rel=1e-6)
        assert float(s.threshold(count)) == pytest.approx(2.0 * k ** (1 / 1.5), rel=1e-6)


def test_cclip_thresholds_per_coordinate():
    B = {"a": 1.0, "b": np.array([0.5, 2.0])}
    s = theory.cclip_strongly_convex(mu=1.0, B=B, alpha=1.2)
    t = s.threshold(3)
    assert float(t["a"]) == pytest.approx(4 ** (1 / 1.2), rel=1e-6)
    np.testing.assert_allclose(t["b"], np.array([0.5, 2.0]) * 4 ** (1 / 1.2), rtol=1e-6)


def test_gclip_nonconvex():
    L, s, a, d, K = 2.0, 0.3, 1.6, 5.0, 1000
    r = theory.gclip_nonconvex(L, s, a, d, K)
    c = (12 * s) ** (a / (a - 1))
    eta = min(
        1 / (4 * L),
        1 / (L * c),
        (d / (s**2 * K)) ** (a / (3 * a - 2)) / L ** ((2 * a - 2) / (3 * a - 2)),
    )
    assert r.learning_rate == pytest.approx(eta)
    assert r.threshold == pytest.approx(s * (eta * L) ** (-1 / a))
    r2 = theory.gclip_nonconvex(L, s, a, d, 100 * K)
    assert r2.bound < r.bound  # the guarantee improves with more steps


def test_relaxed_smoothness_bounds():
    r = theory.clipped_gd(L0=2.0, L1=3.0, gap=10.0, epsilon=0.1)
    assert r.learning_rate == pytest.approx(1 / 20) and r.gamma == pytest.approx(min(20, 20 / 30))
    assert r.iterations == pytest.approx(20 * 2 * 10 / 0.01 + 20 * 9 * 10 / 2)
    gd = [theory.fixed_step_gd(2.0, 3.0, M, 10.0, 0.1) for M in (10, 100, 1000)]
    assert gd[0].learning_rate == pytest.approx(1 / (2 * (30 + 2)))
    assert gd[0].iterations < gd[1].iterations < gd[2].iterations  # linear in M
    assert gd[2].iterations > r.iterations  # clipped GD's bound does not grow with M
    lb = [theory.fixed_step_gd_lower_bound(3.0, M, 10.0, 0.1) for M in (10, 1e3, 1e5)]
    assert lb[0] == pytest.approx(3 * 10 * (10 - 0.0625) / (8 * 0.01 * (math.log(10) + 1)))
    assert lb[0] < lb[1] < lb[2]


def test_stochastic_clipped_gd():
    r = theory.stochastic_clipped_gd(L0=1.0, L1=2.0, tau=0.5, steps=10_000, gap=3.0, epsilon=0.2)
    assert r.eta == pytest.approx(min(1 / 20, 1 / 128, 1 / 100))
    h = float(r.step_size(100.0))
    assert h == pytest.approx(min(r.eta, 1 / (16 * r.eta * 2.0 * 100.5)), rel=1e-6)


def test_generalized_signsgd_and_stochastic_ingd():
    r = theory.generalized_signsgd(L0_l1=4.0, sigma_l1=2.0, gap=1.0, steps=10_000)
    a = min(math.sqrt(4.0) / (2.0 * 100), 1.0)
    assert r.b1 == pytest.approx(1 - a) and r.learning_rate == pytest.approx(a / (2 * 100))
    g = theory.stochastic_ingd(L=3.0, sigma=4.0, gap=2.0, delta=0.1, epsilon=0.5)
    G = 5.0
    p = 64 * G**2 * math.log(16 * G / 0.5) / (0.1 * 0.25)
    assert g.p == pytest.approx(p) and g.q == pytest.approx(4 * G * p)
    assert g.beta == pytest.approx(1 - 0.25 / (64 * 25)) and g.lag == math.ceil(p * 0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: theory.gclip_strongly_convex(0.0, 1.0, 1.5),
        lambda: theory.gclip_strongly_convex(1.0, 1.0, 2.5),
        lambda: theory.gclip_nonconvex(1.0, 1.0, 1.0, 1.0, 10),
        lambda: theory.clipped_gd(1.0, -1.0, 1.0, 0.1),
        lambda: theory.fixed_step_gd_lower_bound(1.0, 0.5, 1.0, 0.1),
        lambda: theory.stochastic_ingd(1.0, -1.0, 1.0, 0.1, 0.1),
        lambda: theory.cclip_strongly_convex(1.0, {"a": -1.0}, 1.5),
    ],
)
def test_bad_constants_raise(call):
    with pytest.raises(ValueError, match="`"):
        call()


def test_iterate_average_is_the_weighted_average_of_past_iterates():
    tx = theory.iterate_average(optax.sgd(0.1))
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    history = []
    rng = np.random.default_rng(0)
    for _ in range(7):
        history.append(np.asarray(params["w"]))
        g = {"w": jnp.asarray(rng.normal(size=2), jnp.float32)}
        u, state = tx.update(g, state, params)
        np.testing.assert_allclose(u["w"], -0.1 * g["w"], rtol=1e-6)  # updates unchanged
        params = optax.apply_updates(params, u)
    k = len(history)
    want = sum((j + 1) * history[j] for j in range(k)) / (k * (k + 1) / 2)
    np.testing.assert_allclose(theory.averaged_params(params, state)["w"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="params"):
        tx.update(g, state)


def test_gclip_with_theory_schedule_converges_on_heavy_tailed_quadratic():
    # E1 in miniature: error of the weighted average falls as k grows.
    mu, G, alpha, d = 1.0, 3.0, 1.5, 20
    s = theory.gclip_strongly_convex(mu, G, alpha)
    tx = theory.iterate_average(optclip.gclip(s.learning_rate, s.threshold))
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.normal(size=d), jnp.float32)
    noise = jnp.asarray(rng.standard_t(1.5, size=(4000, d)), jnp.float32)

    def step(carry, xi):
        x, st = carry
        u, st = tx.update(mu * (x - target) + xi, st, x)
        x = optax.apply_updates(x, u)
        return (x, st), jnp.sum((theory.averaged_params(x, st) - target) ** 2)

    _, err = jax.jit(lambda: jax.lax.scan(step, (jnp.zeros(d), tx.init(jnp.zeros(d))), noise))()
    err = np.asarray(err)
    assert err[-1] < 0.5 * err[399] < err[39]
