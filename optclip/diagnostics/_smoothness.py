"""Local smoothness along a step, coordinate-wise smoothness, and the (L0, L1) fit."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip._numerics import global_norm
from optclip.diagnostics._tails import as_samples


def smoothness_samples(
    grad_norms: jax.typing.ArrayLike, smoothness: jax.typing.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """The (gradient norm, smoothness) pairs an (L0, L1) fit reads, checked as 1-D and paired."""
    g = as_samples(grad_norms, "grad_norms")
    s = as_samples(smoothness, "smoothness")
    if g.shape != s.shape or g.ndim != 1:
        raise ValueError(
            f"`grad_norms` and `smoothness` must be 1-D of equal length, got "
            f"{g.shape} and {s.shape}."
        )
    return g, s


def local_smoothness(
    grad_fn: Callable[[optax.Params], optax.Updates],
    x: optax.Params,
    x_next: optax.Params,
    gammas: Sequence[float] = tuple(np.arange(1, 11) / 10),
) -> jax.Array:
    r"""Local smoothness along a step ([004] App. H.3, eq. 20).

    .. math::

        \hat L(x) = \max_{\gamma}
            \frac{\|\nabla f(x + \gamma d) - \nabla f(x)\|}{\|\gamma d\|},
        \qquad d = x_{next} - x

    over ``gammas`` (``{delta, 2 delta, ..., 1}`` with ``delta = 0.1`` by
    default; [003] §5.2 uses ``{1/6, ..., 5/6}``). Plot it against
    ``||grad f(x)||`` (:func:`plot_smoothness`) and fit (L0, L1) with
    :func:`fit_l0_l1`. A zero step gives 0.

    Args:
      grad_fn: ``params -> gradient``.
      x: the point before the step.
      x_next: the point after it.
      gammas: fractions of the step at which the gradient is compared.
    """
    d = optax.tree.sub(x_next, x)
    g0 = grad_fn(x)
    dn = global_norm(d)

    def ratio(gamma):
        gx = grad_fn(jax.tree.map(lambda a, b: a + gamma * b, x, d))
        num = global_norm(optax.tree.sub(gx, g0))
        return jnp.where(dn > 0, num / jnp.where(dn > 0, gamma * dn, 1.0), 0.0)

    return jnp.max(jnp.stack([ratio(g) for g in gammas]))


def coordinate_smoothness(
    grad_fn: Callable[[optax.Params], optax.Updates], x: optax.Params, x_next: optax.Params
) -> tuple[jax.Array, jax.Array]:
    r"""Coordinate-wise smoothness of [003] §5.2 for every coordinate that moved.

    Returns ``(smoothness, grad_magnitude)``, flat arrays over the coordinates
    with ``x_next_j != x_j``:
    ``|d_j F(x_next) - d_j F(x)| / |x_next_j - x_j|`` and
    ``min(|d_j F(x)|, |d_j F(x_next)|)``; scatter one against the other.

    Args:
      grad_fn: ``params -> gradient``.
      x: the point before the step.
      x_next: the point after it.
    """
    g0 = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(grad_fn(x))])
    g1 = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(grad_fn(x_next))])
    dx = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(optax.tree.sub(x_next, x))])
    moved = np.asarray(dx != 0)
    smooth = jnp.abs(g1 - g0)[moved] / jnp.abs(dx)[moved]
    mag = jnp.minimum(jnp.abs(g0), jnp.abs(g1))[moved]
    return smooth, mag


def fit_l0_l1(
    grad_norms: jax.typing.ArrayLike, smoothness: jax.typing.ArrayLike
) -> tuple[float, float, float]:
    r"""The tightest line ``L0 + L1 ||grad||`` (``L0, L1 >= 0``) above all measured points.

    "Tightest" minimises the line's mean height over the measured gradient
    norms, ``L0 + L1 mean(||grad||)``: a linear program in two variables whose
    optimum is an edge of the points' upper convex hull (or a horizontal or
    through-the-origin line), found exactly here.

    Args:
      grad_norms: ``||grad f||`` at each measured point, shape ``(N,)``.
      smoothness: the local smoothness there, shape ``(N,)``.

    Returns:
      ``(L0, L1, fraction)``: the fraction of points on or below the line
      (1 up to rounding; reported so a caller can check).

    Raises:
      ValueError: fewer than 2 points, non-finite values, or mismatched lengths.
    """
    g, s = smoothness_samples(grad_norms, smoothness)
    gbar = float(np.mean(g))
    tol = 1e-9 * max(1.0, float(np.max(np.abs(s))))
    cands = [(float(np.max(s)), 0.0)]
    if np.any(g > 0):
        pos = g > 0
        cands.append((0.0, float(np.max(s[pos] / g[pos])) if np.all(s[~pos] <= tol) else np.inf))
    hull = _upper_hull(g, s)
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if x2 > x1:
            slope = (y2 - y1) / (x2 - x1)
            cands.append((y1 - slope * x1, slope))
    best = None
    for l0, l1 in cands:
        if not (np.isfinite(l0) and np.isfinite(l1)) or l0 < -tol or l1 < -tol:
            continue
        l0, l1 = max(l0, 0.0), max(l1, 0.0)
        if np.all(s <= l0 + l1 * g + tol) and (
            best is None or l0 + l1 * gbar < best[0] + best[1] * gbar
        ):
            best = (l0, l1)
    if best is None:  # unreachable: the horizontal line through max(s) is always feasible
        raise ValueError("no line L0 + L1 ||grad|| lies above every point.")
    l0, l1 = best
    frac = float(np.mean(s <= l0 + l1 * g + tol))
    return l0, l1, frac


def _upper_hull(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    pts = sorted(set(zip(x.tolist(), y.tolist(), strict=True)))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull
