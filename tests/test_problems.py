"""optclip.problems: unbiased oracles and the stated answers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optclip
from optclip import problems


def _mean_grad(problem, x, n=200_000):
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jnp.mean(jax.vmap(lambda k: problem.grad(x, k))(keys), axis=0))


@pytest.mark.parametrize("noise,index", [("student_t", 2.5), ("pareto", 2.5), ("stable", 1.9)])
def test_heavy_tailed_quadratic_is_unbiased(noise, index):
    p = problems.heavy_tailed_quadratic(dim=3, mu=2.0, noise=noise, index=index)
    x = jnp.array([1.0, -1.0, 0.5])
    # The sample mean of heavy-tailed noise converges slowly; index > 1.8 keeps it testable.
    np.testing.assert_allclose(_mean_grad(p, x), 2.0 * (x - p.x_star), atol=0.05)
    assert float(p.f(p.x_star)) == p.f_star


def test_heavy_tailed_noise_tails():
    x = np.abs(
        np.asarray(problems.heavy_tailed_noise(jax.random.key(1), (200_000,), "pareto", 1.5))
    )
    assert optclip.diagnostics.hill_tail_index(x, 2000) == pytest.approx(1.5, rel=0.1)
    with pytest.raises(ValueError, match="kind"):
        problems.heavy_tailed_noise(jax.random.key(0), (3,), "cauchy")


@pytest.mark.parametrize("df", [1.5, 4.0])
def test_student_t_matches_the_t_distribution(df):
    from scipy import stats  # scikit-learn's dependency, in the test extra

    x = np.asarray(problems.student_t(jax.random.key(2), df, (200_000,)), np.float64)
    assert np.all(np.isfinite(x))
    # Kolmogorov-Smirnov against scipy's t CDF: rejects df 1.6 for 1.5, or a 3% scale error.
    assert stats.kstest(x, stats.t(df).cdf).pvalue > 1e-3
    # and the same through jit and vmap (the E2 path)
    batched = jax.jit(jax.vmap(lambda k: problems.student_t(k, df, (1000,))))
    y = np.asarray(batched(jax.random.split(jax.random.key(3), 200)), np.float64).ravel()
    assert stats.kstest(y, stats.t(df).cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="`df`"):
        problems.student_t(jax.random.key(0), 0.0, (3,))


@pytest.mark.parametrize("nu", [0, 1])
def test_lower_bound_family_matches_app_g(nu):
    alpha, eps = 1.5, 0.05
    p = problems.lower_bound_problem(alpha, eps, nu)
    gamma = (4 * eps) ** (1 / (alpha - 1))
    prob = gamma**alpha - 2 * nu * gamma * eps
    assert p.info["p"] == pytest.approx(prob) and 0 < prob < 1
    x = 0.3
    # E g = x - p / (2 gamma) = x - b exactly; and E|g|^alpha <= 1.
    assert x - prob / (2 * gamma) == pytest.approx(x - float(p.x_star))
    moment = prob * abs(x - 1 / (2 * gamma)) ** alpha + (1 - prob) * abs(x) ** alpha
    assert moment <= 1.0
    np.testing.assert_allclose(_mean_grad(p, jnp.asarray(x)), x - float(p.x_star), atol=0.02)
    # f_b(x) = (x - b)^2 / 2 with b = (2 - nu) eps.
    assert float(p.f(jnp.asarray(x))) == pytest.approx(0.5 * (x - (2 - nu) * eps) ** 2, rel=1e-6)


def test_coordinate_noise_scales():
    p = problems.coordinate_noise_quadratic(dim=40)
    assert int(jnp.sum(p.info["B"] == 10.0)) == 2
    with pytest.raises(ValueError, match="`B`"):
        problems.coordinate_noise_quadratic(dim=3, B=[1.0, -1.0, 1.0])


def test_coordinate_noise_oracle_is_unbiased_with_scales_b():
    B = np.array([0.1, 1.0, 3.0])
    p = problems.coordinate_noise_quadratic(dim=3, B=B, df=3.0)
    x = jnp.array([1.0, -2.0, 0.5])
    a = np.asarray(p.x_star)
    assert float(p.f(x)) == pytest.approx(0.5 * np.sum((np.asarray(x) - a) ** 2), rel=1e-6)
    keys = jax.random.split(jax.random.key(3), 100_000)
    noise = np.asarray(jax.vmap(lambda k: p.grad(x, k))(keys)) - (np.asarray(x) - a)
    np.testing.assert_allclose(noise.mean(0), 0.0, atol=0.05)
    # Student-t(3) has variance df / (df - 2) = 3: each coordinate's spread is B_i sqrt(3).
    np.testing.assert_allclose(noise.std(0), B * np.sqrt(3.0), rtol=0.1)


@pytest.mark.parametrize("M", [10.0, 1e4])
def test_relaxed_smooth_polynomial_starts_at_gradient_norm_m(M):
    p = problems.relaxed_smooth_polynomial(M, dim=4)
    assert float(jnp.linalg.norm(p.grad(p.x0, None))) == pytest.approx(M, rel=1e-4)
    x0 = np.asarray(p.x0, np.float64)
    assert float(p.f(p.x0)) == pytest.approx(np.sum(x0**4) / 4, rel=1e-5)
    # (L0, L1)-smoothness with L0 = L1 = 3 along the path to 0 (per coordinate).
    xs = np.linspace(-5, 5, 1001)
    assert np.all(3 * xs**2 <= 3 + 3 * np.abs(xs) ** 3 + 1e-9)


@pytest.mark.parametrize("name", ["abs_sum", "max_affine", "zigzag"])
def test_nonsmooth_problems_have_the_stated_stationary_points(name):
    p = problems.nonsmooth_problems()[name]
    res = optclip.ingd(p.f, p.x0, delta=0.1, epsilon=0.1, lipschitz=p.info["lipschitz"])
    assert bool(res.stationary)
    np.testing.assert_array_less(np.abs(np.asarray(res.x) - np.asarray(p.x_star)), 0.1 + 1e-6)
    assert float(p.f(p.x_star)) == pytest.approx(p.f_star, abs=1e-6)
