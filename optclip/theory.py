"""Hyperparameters from the theorems, and the weighted iterate average they certify.

Every function takes the problem constants a theorem assumes (smoothness ``L``,
``L0``, ``L1``; strong convexity ``mu``; noise moments ``G``, ``B``, ``sigma``,
``alpha``; the gap ``Delta = f(x0) - f*``) and returns the step sizes and thresholds
the theorem prescribes: floats, or optax schedules of the step count. Optax
counts steps from 0, the theorems from ``k = 1``: every schedule here evaluates
the theorem at ``k = count + 1``.

References: [000] Zhang et al. 2020 ("Why are adaptive methods good for
attention models?"); [001] J. Zhang's thesis (chapters 3-5); [003] Crawshaw et
al. 2022 (generalized SignSGD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip import _checks
from optclip._states import find_state

__all__ = [
    "gclip_strongly_convex",
    "gclip_nonconvex",
    "cclip_strongly_convex",
    "clipped_gd",
    "fixed_step_gd",
    "fixed_step_gd_lower_bound",
    "stochastic_clipped_gd",
    "generalized_signsgd",
    "stochastic_ingd",
    "iterate_average",
    "averaged_params",
    "IterateAverageState",
]


def _pos(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, int | float | np.floating | np.integer) or not math.isfinite(v):
            raise ValueError(f"`{name}` must be a finite number, got {v!r}.")
        _checks.check_positive(name, v)


def _alpha(alpha: float) -> None:
    if not isinstance(alpha, int | float) or not 1.0 < alpha <= 2.0:
        raise ValueError(f"`alpha` must be in (1, 2] (the noise's moment order), got {alpha!r}.")


class Schedules(NamedTuple):
    """A learning-rate schedule and a threshold schedule of the optax step count."""

    learning_rate: Callable[[Any], jax.Array]
    threshold: Callable[[Any], Any]


def gclip_strongly_convex(mu: float, G: float, alpha: float) -> Schedules:
    r"""GClip on a ``mu``-strongly convex function ([000] Thm 1; [001] Thm 4.4.2).

    ``eta_k = 4 / (mu (k + 1))`` and ``tau_k = G k^(1/alpha)``, with ``E||g||^alpha <= G^alpha``.
    The theorem statements print ``tau_k = G k^(alpha - 1)``; both proofs ([000]
    App. D, [001] §4.7.2) use ``k^(1/alpha)``, the only choice that balances the two
    error terms, and that is what this returns. The guarantee is for the weighted
    average of :func:`iterate_average`:
    ``E f(xbar_k) - f* = O(G^2 k^(-2(alpha - 1)/alpha) / mu)``.

    Args:
      mu: the strong-convexity constant ``> 0``.
      G: the bound on the noise's alpha-moment, ``E|g|^alpha <= G^alpha``, ``> 0``.
      alpha: the tail index in ``(1, 2]``.

    Examples:
      >>> from optclip import theory
      >>> s = theory.gclip_strongly_convex(mu=1.0, G=2.0, alpha=1.5)
      >>> tx = theory.iterate_average(optclip.gclip(s.learning_rate, s.threshold))  # doctest: +SKIP
    """
    _pos(mu=mu, G=G)
    _alpha(alpha)
    return Schedules(
        learning_rate=lambda count: 4.0 / (mu * (jnp.asarray(count, jnp.float32) + 2.0)),
        threshold=lambda count: G * (jnp.asarray(count, jnp.float32) + 1.0) ** (1.0 / alpha),
    )


def cclip_strongly_convex(mu: float, B: float | chex.ArrayTree, alpha: float) -> Schedules:
    r"""CClip on a ``mu``-strongly convex function ([000] Thm 3; [001] Thm 4.5.1).

    ``tau_{k,i} = B_i k^(1/alpha)`` (the statements' ``k^(alpha-1)`` is the same typo as
    in :func:`gclip_strongly_convex`) and ``eta_k = 4/(mu (k+1))``, with ``B`` the
    coordinate-wise moments ``E|g_i|^alpha <= B_i^alpha``: a float, or a pytree of
    floats/arrays matching the params. Error ``16 ||B||_2^2 / (mu (k+1)^(2(alpha-1)/alpha))``.

    Args:
      mu: the strong-convexity constant ``> 0``.
      B: per-coordinate alpha-moment bounds ``B_i > 0``: a float or a pytree matching the params.
      alpha: the tail index in ``(1, 2]``.
    """
    _pos(mu=mu)
    _alpha(alpha)
    leaves = jax.tree.leaves(B)
    if not leaves or any(not np.all(np.asarray(b) > 0) for b in leaves):
        raise ValueError("`B` must be positive (a float or a pytree of positive values).")
    return Schedules(
        learning_rate=lambda count: 4.0 / (mu * (jnp.asarray(count, jnp.float32) + 2.0)),
        threshold=lambda count: jax.tree.map(
            lambda b: (
                jnp.asarray(b, jnp.float32)
                * (jnp.asarray(count, jnp.float32) + 1.0) ** (1.0 / alpha)
            ),
            B,
        ),
    )


class Constant(NamedTuple):
    """A constant learning rate and threshold, and what the theorem guarantees with them."""

    learning_rate: float
    threshold: float
    bound: float


def gclip_nonconvex(L: float, sigma: float, alpha: float, gap: float, steps: int) -> Constant:
    r"""GClip without momentum on an ``L``-smooth non-convex function ([001] Thm 4.4.1).

    ``eta = min{1/(4L), 1/(L (12 sigma)^(alpha/(alpha-1))), (Delta/(sigma^2 K))^(alpha/(3alpha-2)) /
    L^((2alpha-2)/(3alpha-2))}`` and ``tau = sigma (eta L)^(-1/alpha)``, where
    ``E||g||^alpha <= sigma^alpha``. ``bound`` is the theorem's right-hand side for
    ``(1/K) sum_k E min(||grad f||, ||grad f||^2)``:
    ``20 Delta max{4L/K, L (12 sigma)^(alpha/(alpha-1))/K,
    L^((2alpha-2)/(3alpha-2)) (Delta/(K sigma^2))^(2(alpha-1)/(3alpha-2))}``.

    Args:
      L: the smoothness constant ``> 0``.
      sigma: the noise's alpha-moment bound ``> 0``.
      alpha: the tail index in ``(1, 2]``.
      gap: ``Delta = f(x0) - inf f > 0``.
      steps: ``K``, the number of steps.
    """
    _pos(L=L, sigma=sigma, gap=gap, steps=steps)
    _alpha(alpha)
    a = alpha
    c = (12.0 * sigma) ** (a / (a - 1.0))
    eta = min(
        1.0 / (4.0 * L),
        1.0 / (L * c),
        (gap / (sigma**2 * steps)) ** (a / (3 * a - 2)) / L ** ((2 * a - 2) / (3 * a - 2)),
    )
    tau = sigma * (eta * L) ** (-1.0 / a)
    bound = (
        20.0
        * gap
        * max(
            4.0 * L / steps,
            L * c / steps,
            L ** ((2 * a - 2) / (3 * a - 2))
            * (gap / (steps * sigma**2)) ** (2 * (a - 1) / (3 * a - 2)),
        )
    )
    return Constant(eta, tau, bound)


class Iterations(NamedTuple):
    """A learning rate, its threshold (``gamma``, or ``None``), and an iteration bound."""

    learning_rate: float
    gamma: float | None
    iterations: float


def clipped_gd(L0: float, L1: float, gap: float, epsilon: float) -> Iterations:
    r"""Clipped GD under (L0, L1)-smoothness ([001] Thm 3.4.1; [004] Thm 3).

    ``eta_c = 1/(10 L0)``, ``gamma = min{1/eta_c, 1/(10 L1 eta_c)}``; ``||grad f|| <= eps``
    within ``20 L0 Delta / eps^2 + 20 max{1, L1^2} Delta / L0`` iterations, with no
    dependence on the gradient bound ``M``. Use as
    ``optclip.clipped_gd(r.learning_rate, r.gamma)``.

    Args:
      L0: ``> 0``.
      L1: ``>= 0``.
      gap: ``Delta = f(x0) - inf f > 0``.
      epsilon: the target gradient norm ``> 0``.
    """
    _pos(L0=L0, L1=L1, gap=gap, epsilon=epsilon)
    eta = 1.0 / (10.0 * L0)
    gamma = min(1.0 / eta, 1.0 / (10.0 * L1 * eta))
    iters = 20.0 * L0 * gap / epsilon**2 + 20.0 * max(1.0, L1**2) * gap / L0
    return Iterations(eta, gamma, iters)


def fixed_step_gd(L0: float, L1: float, M: float, gap: float, epsilon: float) -> Iterations:
    r"""Fixed-step GD under (L0, L1)-smoothness ([001] Thm 3.4.3).

    ``h = 1/(2 (M L1 + L0))`` with ``M`` a bound on ``||grad f||`` over the initial
    sublevel set; ``4 (M L1 + L0) Delta / eps^2`` iterations: linear in ``M``.

    Args:
      L0: ``> 0``.
      L1: ``>= 0``.
      M: the gradient-norm bound on the initial sublevel set, ``> 0``.
      gap: ``Delta = f(x0) - inf f > 0``.
      epsilon: the target gradient norm ``> 0``.
    """
    _pos(L0=L0, L1=L1, M=M, gap=gap, epsilon=epsilon)
    return Iterations(1.0 / (2.0 * (M * L1 + L0)), None, 4.0 * (M * L1 + L0) * gap / epsilon**2)


def fixed_step_gd_lower_bound(L1: float, M: float, gap: float, epsilon: float) -> float:
    r"""Iterations fixed-step GD needs on a worst-case (L0, L1)-smooth function ([001] Thm 3.4.2).

    ``L1 M (Delta - 5 eps/8) / (8 eps^2 (log M + 1))`` (for ``L0, L1 >= 1``, ``M > 1``):
    it grows with ``M``, while :func:`clipped_gd`'s upper bound does not.

    Args:
      L1: ``>= 1``.
      M: the gradient-norm bound, ``> 1``.
      gap: ``Delta > 0``.
      epsilon: the target gradient norm ``> 0``.
    """
    _pos(L1=L1, M=M, gap=gap, epsilon=epsilon)
    if M <= 1:
        raise ValueError(f"`M` must be > 1 for this bound, got {M}.")
    return L1 * M * (gap - 5.0 * epsilon / 8.0) / (8.0 * epsilon**2 * (math.log(M) + 1.0))


class StochasticClippedGD(NamedTuple):
    """Theorem 3.4.4's ``eta``, its step-size rule and iteration bound."""

    eta: float
    step_size: Callable[[Any], Any]
    iterations: float


def stochastic_clipped_gd(
    L0: float, L1: float, tau: float, steps: int, gap: float, epsilon: float
) -> StochasticClippedGD:
    r"""Stochastic clipped GD with noise bounded by ``tau`` almost surely ([001] Thm 3.4.4).

    ``eta = min{1/(20 L0), 1/(128 L1 tau), 1/sqrt(T)}`` and the step ``h = min{eta,
    1/(16 eta L1 (||g|| + tau))}`` (``step_size(grad_norm)``), within
    ``Delta max{128 L1/eps, 4 Delta/eps^4, (80 L0 + 512 L1 tau)/eps^2}`` iterations.

    Args:
      L0: ``> 0``.
      L1: ``>= 0``.
      tau: the almost-sure bound on the noise ``> 0``.
      steps: the number of steps.
      gap: ``Delta = f(x0) - inf f > 0``.
      epsilon: the target gradient norm ``> 0``.
    """
    _pos(L0=L0, L1=L1, tau=tau, steps=steps, gap=gap, epsilon=epsilon)
    eta = min(1.0 / (20.0 * L0), 1.0 / (128.0 * L1 * tau), 1.0 / math.sqrt(steps))

    def step_size(grad_norm):
        return jnp.minimum(eta, 1.0 / (16.0 * eta * L1 * (grad_norm + tau)))

    iters = gap * max(
        128.0 * L1 / epsilon, 4.0 * gap / epsilon**4, (80.0 * L0 + 512.0 * L1 * tau) / epsilon**2
    )
    return StochasticClippedGD(eta, step_size, iters)


class SignSGDParams(NamedTuple):
    """Theorem 1's ``eta`` and ``b1`` for generalized SignSGD.

    Pick ``b2`` with ``sqrt(b2) < b1``.
    """

    learning_rate: float
    b1: float


def generalized_signsgd(L0_l1: float, sigma_l1: float, gap: float, steps: int) -> SignSGDParams:
    r"""Generalized SignSGD's step and momentum ([003] Thm 1).

    With ``||L0||_1`` and ``||sigma||_1`` the l1 norms of the coordinate-wise
    smoothness and noise constants: ``a = min(sqrt(||L0||_1 Delta) / (||sigma||_1
    sqrt(T)), 1)``, ``b1 = 1 - a``, ``eta = sqrt(Delta) a / sqrt(||L0||_1 T)``. The
    theorem also needs ``sqrt(b2) < b1`` (``b2 = 0``, Signum, always qualifies).

    Args:
      L0_l1: ``||L0||_1 > 0``.
      sigma_l1: ``||sigma||_1 >= 0``.
      gap: ``Delta = f(x0) - inf f > 0``.
      steps: ``T``, the number of steps.
    """
    _pos(L0_l1=L0_l1, sigma_l1=sigma_l1, gap=gap, steps=steps)
    a = min(math.sqrt(L0_l1 * gap) / (sigma_l1 * math.sqrt(steps)), 1.0)
    return SignSGDParams(math.sqrt(gap) * a / math.sqrt(L0_l1 * steps), 1.0 - a)


class IngdParams(NamedTuple):
    """Theorem 5.5.1's parameters for Stochastic INGD."""

    p: float
    q: float
    beta: float
    lag: int
    steps: int


def stochastic_ingd(L: float, sigma: float, gap: float, delta: float, epsilon: float) -> IngdParams:
    r"""Stochastic INGD for a (delta, epsilon)-stationary point ([001] Thm 5.5.1).

    ``G = sqrt(L^2 + sigma^2)``, ``beta = 1 - eps^2/(64 G^2)``,
    ``p = 64 G^2 ln(16 G/eps) / (delta eps^2)``, ``q = 4 G p``, ``K = p delta`` (the output
    lag of :func:`optclip.ingd_output_index`), and
    ``T = 2^16 G^3 Delta ln(16G/eps) / (eps^4 delta) max{1, G delta/(8 Delta)}`` steps.
    Use as ``optclip.stochastic_ingd(r.p, r.q, r.beta)``.

    Args:
      L: the Lipschitz constant ``> 0``.
      sigma: the noise bound ``>= 0``.
      gap: ``Delta = f(x0) - inf f > 0``.
      delta: the radius of stationarity ``> 0``.
      epsilon: the target norm ``> 0``.
    """
    _pos(L=L, gap=gap, delta=delta, epsilon=epsilon)
    if not (isinstance(sigma, int | float) and sigma >= 0):
        raise ValueError(f"`sigma` must be >= 0, got {sigma!r}.")
    G = math.sqrt(L**2 + sigma**2)
    log = math.log(16.0 * G / epsilon)
    p = 64.0 * G**2 * log / (delta * epsilon**2)
    steps = 2**16 * G**3 * gap * log / (epsilon**4 * delta) * max(1.0, G * delta / (8.0 * gap))
    return IngdParams(
        p=p,
        q=4.0 * G * p,
        beta=1.0 - epsilon**2 / (64.0 * G**2),
        lag=math.ceil(p * delta),
        steps=math.ceil(steps),
    )


# ---------------------------------------------------------------------------
# The weighted iterate average of the strongly convex theorems
# ---------------------------------------------------------------------------


class IterateAverageState(NamedTuple):
    """State of :func:`iterate_average`: the wrapped state, the step count and ``xbar_k``."""

    inner: Any
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    average: Any


def iterate_average(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    r"""Wraps an optimizer and tracks ``xbar_k = sum_{j<=k} j x_{j-1} / sum_{j<=k} j``.

    The output the strongly convex theorems of [000]/[001] certify (Thm 1, 3;
    4.4.2, 4.5.1). Updates pass through unchanged; the average (float32, one
    params-sized copy) is updated from the params each step as
    ``xbar_k = xbar_{k-1} + 2/(k+1) (x_{k-1} - xbar_{k-1})``. Read it with
    :func:`averaged_params`, like :func:`optax.contrib.schedule_free_eval_params`.
    ``update`` needs ``params``.

    Args:
      inner: the optimizer whose iterates are averaged.
    """

    def init_fn(params):
        return IterateAverageState(
            inner=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            average=jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params),
        )

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("`iterate_average` needs `params` in `update` to average them.")
        k = state.count + 1
        w = 2.0 / (k.astype(jnp.float32) + 1.0)
        average = jax.tree.map(
            lambda a, p: a + w * (p.astype(jnp.float32) - a), state.average, params
        )
        out, inner_state = optax.with_extra_args_support(inner).update(
            updates, state.inner, params, **extra
        )
        return out, IterateAverageState(inner_state, optax.safe_increment(state.count), average)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def averaged_params(params: optax.Params, state: optax.OptState) -> optax.Params:
    """``xbar_k`` from an :func:`iterate_average` state anywhere in ``state``.

    Returned in ``params``' dtypes.

    Args:
      params: the current params (their dtypes are kept).
      state: an optimizer state holding an :func:`iterate_average` state.
    """
    found = find_state(state, IterateAverageState)
    if found is None:
        raise ValueError("`state` holds no iterate_average state.")
    return jax.tree.map(lambda a, p: a.astype(jnp.asarray(p).dtype), found.average, params)
