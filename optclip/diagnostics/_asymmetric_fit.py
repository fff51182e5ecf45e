"""The Gluon paper's asymmetric least-squares fit of ``L = L0 + L1 ||g||_*``."""

from __future__ import annotations

import jax
import numpy as np

from optclip.diagnostics._smoothness import smoothness_samples


def fit_l0_l1_asymmetric(
    grad_norms: jax.typing.ArrayLike,
    smoothness: jax.typing.ArrayLike,
    penalty: float = 1.0,
    max_iter: int = 100,
) -> tuple[float, float]:
    r"""``(L0, L1) >= 0`` minimising squared residuals, under-estimates weighted ``1 + penalty``.

    .. math::

        \min_{L_0, L_1 \ge 0} \sum_k r_k^2 + \lambda \sum_k \max(0, r_k)^2,
        \qquad r_k = L[k] - L_0 - L_1 \|g[k]\|_*

    (Riabinin et al., Gluon, the layer-wise fit). A point above the line (``r > 0``, the line
    under-estimates the smoothness there) costs ``1 + lambda`` times a point as far below it.
    Unlike :func:`fit_l0_l1` (the tightest line above *every* point), outliers pull the line only
    as much as their squared distance.

    The objective is convex, piecewise quadratic and continuously differentiable. Solved by
    iterated weighted least squares on the nonnegative orthant (each weighted problem in closed
    form over its four faces) with an exact-enough line search, which stops when the weights
    no longer change the solution: there its gradient is the weighted problem's, so the
    Karush-Kuhn-Tucker conditions of the original problem hold (exact up to rounding).

    Args:
      grad_norms: ``||g[k]||_*`` at each sample, shape ``(N,)``, ``N >= 2``.
      smoothness: ``L[k]`` at each sample, shape ``(N,)``.
      penalty: ``lambda >= 0``, the extra weight of an under-estimated sample (0: least squares).
      max_iter: the most reweighting rounds, ``>= 1``.

    Returns:
      ``(L0, L1)`` as Python floats.

    Raises:
      ValueError: mismatched or too few samples, non-finite values, ``penalty < 0``.

    Examples:
      >>> from optclip.diagnostics import fit_l0_l1_asymmetric
      >>> l0, l1 = fit_l0_l1_asymmetric([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
      >>> round(l0, 6), round(l1, 6)
      (1.0, 2.0)
    """
    g, s = smoothness_samples(grad_norms, smoothness)
    if not (np.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"`penalty` must be a finite number >= 0, got {penalty}.")
    if max_iter < 1:
        raise ValueError(f"`max_iter` must be >= 1, got {max_iter}.")
    theta = _orthant_wls(g, s, np.ones_like(g))
    for _ in range(max_iter):
        w = 1.0 + penalty * (s - theta[0] - theta[1] * g > 0)
        cand = _orthant_wls(g, s, w)
        if np.allclose(cand, theta, rtol=1e-13, atol=1e-300):
            break
        theta = _line_search(g, s, penalty, theta, cand)
    return float(theta[0]), float(theta[1])


def asymmetric_loss(
    g: np.ndarray, s: np.ndarray, penalty: float, l0: float, l1: float
) -> np.ndarray:
    """The fit's objective at ``(l0, l1)`` (broadcasts over arrays of ``l0``, ``l1``)."""
    r = s - np.expand_dims(l0, -1) - np.expand_dims(l1, -1) * g
    return np.sum(r * r + penalty * np.maximum(r, 0.0) ** 2, axis=-1)


def _orthant_wls(g: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    # A convex quadratic in two variables: its minimum over the orthant is the free minimum
    # when that is feasible, else the better of the two edges' (clamped) minima.
    sw, sx, sxx = np.sum(w), np.sum(w * g), np.sum(w * g * g)
    sy, sxy = np.sum(w * s), np.sum(w * g * s)
    det = sw * sxx - sx * sx
    if det > 1e-12 * sw * sxx:
        free = np.array([sxx * sy - sx * sxy, sw * sxy - sx * sy]) / det
        if np.all(free >= 0):
            return free
    edges = [np.array([max(sy / sw, 0.0), 0.0])]
    if sxx > 0:
        edges.append(np.array([0.0, max(sxy / sxx, 0.0)]))

    def cost(t):
        r = s - t[0] - t[1] * g
        return float(np.sum(w * r * r))

    return min(edges, key=cost)


def _line_search(g, s, penalty, theta, cand):
    # The weighted minimiser is a descent direction of the true objective; a full step almost
    # always decreases it, else golden-section search on the convex segment.
    f0, f1 = (asymmetric_loss(g, s, penalty, *t) for t in (theta, cand))
    if f1 <= f0:
        return cand
    lo, hi = 0.0, 1.0
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        fa = asymmetric_loss(g, s, penalty, *(theta + a * (cand - theta)))
        fb = asymmetric_loss(g, s, penalty, *(theta + b * (cand - theta)))
        if fa <= fb:
            hi = b
        else:
            lo = a
    return theta + 0.5 * (lo + hi) * (cand - theta)
