"""Test problems with known answers, for tests, benchmarks and teaching.

Each problem is a :class:`Problem`: the objective, a stochastic gradient
oracle ``grad(x, key)`` (pure JAX, seeded by the key), the starting point, and
what is known about the answer (the minimiser and minimum, or the stationary
set). References: [000] Zhang et al. 2020; [001] Zhang's thesis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optclip import _checks
from optclip._sampling import student_t, symmetric_alpha_stable

__all__ = [
    "Problem",
    "student_t",
    "heavy_tailed_noise",
    "heavy_tailed_quadratic",
    "coordinate_noise_quadratic",
    "lower_bound_problem",
    "relaxed_smooth_polynomial",
    "nonsmooth_problems",
]


class Problem(NamedTuple):
    """A problem with a known answer.

    Attributes:
      f: the objective ``f(x)``.
      grad: stochastic gradient oracle ``grad(x, key)``, unbiased: ``E grad = grad f``.
      x0: the starting point.
      x_star: a minimiser (or the point the stationary set reduces to).
      f_star: the minimum value.
      info: constants of the problem (noise moments, smoothness, ...).
    """

    f: Callable[[jax.Array], jax.Array]
    grad: Callable[[jax.Array, jax.Array], jax.Array]
    x0: jax.Array
    x_star: jax.Array
    f_star: float
    info: dict


def heavy_tailed_noise(
    key: jax.Array, shape: Sequence[int], kind: str = "student_t", index: float = 1.5
) -> jax.Array:
    r"""Zero-mean symmetric heavy-tailed noise.

    ``kind``: ``"student_t"`` (``index`` = degrees of freedom; infinite variance
    for ``index <= 2``), ``"pareto"`` (a random sign times a Pareto(``index``)
    variable, tail ``P(|X| > x) = x^-index`` for ``x >= 1``) or ``"stable"``
    (standard symmetric alpha-stable with ``alpha = index``).

    Args:
      key: a PRNG key.
      shape: the output shape.
      kind: ``"student_t"``, ``"pareto"`` or ``"stable"``.
      index: degrees of freedom (Student-t), tail index (Pareto) or alpha (stable).
    """
    if kind == "student_t":
        if index <= 1:
            raise ValueError(f"`index` (degrees of freedom) must be > 1 for a mean, got {index}.")
        return student_t(key, index, shape)
    if kind == "pareto":
        if index <= 1:
            raise ValueError(f"`index` must be > 1 for a mean, got {index}.")
        k1, k2 = jax.random.split(key)
        mag = jax.random.pareto(k1, index, shape) + 1.0
        return jnp.where(jax.random.bernoulli(k2, 0.5, shape), mag, -mag)
    if kind == "stable":
        if not 1 < index <= 2:
            raise ValueError(f"`index` (alpha) must be in (1, 2] for a mean, got {index}.")
        return symmetric_alpha_stable(key, index, shape)
    raise ValueError(f"`kind` must be 'student_t', 'pareto' or 'stable', got {kind!r}.")


def heavy_tailed_quadratic(
    dim: int = 10,
    mu: float = 1.0,
    noise: str = "student_t",
    index: float = 1.5,
    scale: float = 1.0,
    seed: int = 0,
) -> Problem:
    r"""``f(x) = mu ||x - a||^2 / 2`` with unbiased heavy-tailed gradient noise.

    ``grad(x, key) = mu (x - a) + scale * xi``, ``xi`` from :func:`heavy_tailed_noise`.
    ``mu``-strongly convex with minimiser ``a`` (drawn from the seed) and minimum
    0. With ``index <= 2`` the noise has infinite variance: SGD with any fixed step
    has unbounded expected error, GClip/CClip converge ([001] Remark 4.4.1).

    Args:
      dim: dimension.
      mu: curvature ``> 0``.
      noise: the noise kind of :func:`heavy_tailed_noise`.
      index: the noise's index.
      scale: the noise scale ``> 0``.
      seed: seed of the minimiser.
    """
    _checks.check_positive("mu", mu)
    _checks.check_positive("scale", scale)
    a = jax.random.normal(jax.random.key(seed), (dim,))

    def f(x):
        return 0.5 * mu * jnp.sum((x - a) ** 2)

    def grad(x, key):
        return mu * (x - a) + scale * heavy_tailed_noise(key, x.shape, noise, index)

    return Problem(f, grad, jnp.zeros(dim), a, 0.0, dict(mu=mu, noise=noise, index=index))


def coordinate_noise_quadratic(
    dim: int = 100, B: jax.typing.ArrayLike | None = None, df: float = 1.5, seed: int = 0
) -> Problem:
    r"""A quadratic whose gradient noise has unequal coordinate scales ``B_i``.

    ``grad_i = (x_i - a_i) + B_i xi_i`` with Student-t(``df``) ``xi``. By default a
    few coordinates are very noisy (``B_i = 10`` for 5% of them) and the rest
    quiet (``B_i = 0.1``): the setting where CClip's ``||B||_2^2`` beats GClip's
    ``d ||B||_alpha^2`` ([000] Thm 3).

    Args:
      dim: dimension.
      B: the coordinate scales ``B_i > 0``, shape ``(dim,)``; the default mix if ``None``.
      df: the Student-t degrees of freedom.
      seed: seed of the minimiser.
    """
    if B is None:
        b = np.full(dim, 0.1, np.float32)
        b[: max(1, dim // 20)] = 10.0
        B = jnp.asarray(b)
    B = jnp.asarray(B, jnp.float32)
    if B.shape != (dim,) or not bool(jnp.all(B > 0)):
        raise ValueError(f"`B` must be {dim} positive scales, got shape {B.shape}.")
    a = jax.random.normal(jax.random.key(seed), (dim,))

    def f(x):
        return 0.5 * jnp.sum((x - a) ** 2)

    def grad(x, key):
        return (x - a) + B * student_t(key, df, x.shape)

    return Problem(f, grad, jnp.zeros(dim), a, 0.0, dict(B=B, df=df))


def lower_bound_problem(alpha: float, epsilon: float, nu: int) -> Problem:
    r"""The lower-bound family of [000] App. G.

    ``f_b(x) = (x - b)^2 / 2`` on ``[0, 1/2]`` with ``b = (2 - nu) epsilon``; the
    stochastic gradient is ``x - 1/(2 gamma)`` with probability
    ``p = gamma^alpha - 2 nu gamma epsilon`` and ``x`` otherwise, ``gamma = (4
    epsilon)^(1/(alpha - 1))``. Unbiased with ``E|g|^alpha <= 1``; no algorithm can
    tell ``nu = 0`` from ``nu = 1`` fast enough to beat ``k^(-2(alpha-1)/alpha)``.
    Iterates should be projected onto ``[0, 1/2]`` (``info["interval"]``).

    Args:
      alpha: the tail index in ``(1, 2]``.
      epsilon: the accuracy the family is built for, ``> 0``.
      nu: the sign selecting the family member, ``+1`` or ``-1``.
    """
    if not 1 < alpha <= 2:
        raise ValueError(f"`alpha` must be in (1, 2], got {alpha}.")
    if not 0 < epsilon <= 1 / 8:
        raise ValueError(f"`epsilon` must be in (0, 1/8], got {epsilon}.")
    if nu not in (0, 1):
        raise ValueError(f"`nu` must be 0 or 1, got {nu}.")
    b = (2 - nu) * epsilon
    gamma = (4 * epsilon) ** (1 / (alpha - 1))
    p = gamma**alpha - 2 * nu * gamma * epsilon

    def f(x):
        return 0.5 * jnp.sum((x - b) ** 2)

    def grad(x, key):
        jump = jax.random.bernoulli(key, p, jnp.shape(x))
        return jnp.where(jump, x - 1 / (2 * gamma), x)

    info = dict(alpha=alpha, epsilon=epsilon, gamma=gamma, p=p, interval=(0.0, 0.5))
    return Problem(f, grad, jnp.zeros(()), jnp.asarray(b), 0.0, info)


def relaxed_smooth_polynomial(M: float, dim: int = 1) -> Problem:
    r"""``f(x) = sum_i x_i^4 / 4``, started where ``||grad f|| = M``.

    (L0, L1)-smooth with ``L0 = 3, L1 = 3`` (``|f''| = 3x^2 <= 3 + 3|x|^3 = L0 + L1
    |f'|`` per coordinate) but not L-smooth: the starting point ``x0`` with
    ``|x0_i|^3 = M / sqrt(dim)`` makes the initial gradient bound ``M``. Fixed-step
    GD needs a step ``<= ~1/(M L1)`` and so iterations growing with ``M``; clipped
    and normalized GD do not ([001] Thm 3.4.1-3.4.3). Deterministic: ``grad``
    ignores its key. Minimiser 0, minimum 0.

    Args:
      M: the starting gradient norm ``> 0``.
      dim: dimension.
    """
    _checks.check_positive("M", M)
    x0 = jnp.full((dim,), (M / np.sqrt(dim)) ** (1 / 3), jnp.float32)

    def f(x):
        return 0.25 * jnp.sum(x**4)

    def grad(x, key=None):
        del key
        return x**3

    return Problem(f, grad, x0, jnp.zeros(dim), 0.0, dict(L0=3.0, L1=3.0, M=M))


def nonsmooth_problems() -> dict[str, Problem]:
    r"""Nonsmooth functions with known Clarke-stationary points (for INGD).

    ``abs_sum``: ``|x_1| + 2|x_2 - 1|``, stationary at ``(0, 1)``, ``L = sqrt(5)``;
    ``max_affine``: ``max_i a_i . x`` with the ``a_i`` surrounding 0, stationary at
    0, ``L = 1``; ``zigzag``: ``|x| +`` a slope-0.5 triangle wave, stationary at 0,
    ``L = 1.5``. Gradients are exact (``grad`` ignores the key).
    """
    angles = 2 * np.pi * np.arange(5) / 5 + 0.3
    A = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], 1), jnp.float32)

    def abs_sum(x):
        return jnp.abs(x[0]) + 2.0 * jnp.abs(x[1] - 1.0)

    def max_affine(x):
        return jnp.max(A @ x)

    def zigzag(x):
        period = 0.37
        return jnp.abs(x[0]) + 0.5 * jnp.abs((x[0] / period) % 2.0 - 1.0) * period

    def exact(fn):
        g = jax.grad(fn)
        return lambda x, key=None: g(x)

    return {
        "abs_sum": Problem(
            abs_sum,
            exact(abs_sum),
            jnp.array([3.0, -2.0]),
            jnp.array([0.0, 1.0]),
            0.0,
            dict(lipschitz=5**0.5),
        ),
        "max_affine": Problem(
            max_affine,
            exact(max_affine),
            jnp.array([1.7, -2.2]),
            jnp.zeros(2),
            0.0,
            dict(lipschitz=1.0),
        ),
        "zigzag": Problem(
            zigzag, exact(zigzag), jnp.array([2.33]), jnp.zeros(1), 0.5 * 0.37, dict(lipschitz=1.5)
        ),
    }
