"""Plots of the measurements ([000] Fig. 2, [004] Fig. 1-2); matplotlib is an extra."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np

from optclip._plotting import pyplot
from optclip._sampling import symmetric_alpha_stable
from optclip.diagnostics._smoothness import fit_l0_l1

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_noise_histogram(
    norms: jax.typing.ArrayLike,
    dim: int | None = None,
    alpha: float | None = None,
    ax: Axes | None = None,
    bins: int = 60,
    seed: int = 0,
):
    """Histogram of noise norms with a Gaussian-sum and an alpha-stable reference ([000] Fig. 2).

    The references are norms of ``dim``-dimensional Gaussian and symmetric
    alpha-stable vectors (``alpha`` from :func:`tail_index`, 1.5 if not given),
    scaled to the data's median so the shapes, not the scales, compare.

    Args:
      norms: the noise norms, e.g. from :func:`noise_norms`.
      dim: dimension of the reference vectors (100 if ``None``).
      alpha: tail index of the alpha-stable reference (1.5 if ``None``).
      ax: a matplotlib axis to draw on; a new figure if ``None``.
      bins: histogram bins.
      seed: seed of the reference samples.
    """
    plt = pyplot()
    x = np.asarray(norms, dtype=np.float64)
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    dim = dim or 100
    n = max(len(x), 2000)
    key = jax.random.key(seed)
    gauss = np.linalg.norm(np.asarray(jax.random.normal(key, (n, dim))), axis=1)
    stable = np.linalg.norm(np.asarray(symmetric_alpha_stable(key, alpha or 1.5, (n, dim))), axis=1)
    med = np.median(x)
    for ref, label in (
        (gauss, "Gaussian reference"),
        (stable, f"alpha-stable ({alpha or 1.5:.2f})"),
    ):
        ax.hist(ref * med / np.median(ref), bins=bins, density=True, histtype="step", label=label)
    ax.hist(x, bins=bins, density=True, alpha=0.6, label="measured")
    ax.set_xlabel("||g_batch - grad f||")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax


def plot_smoothness(
    grad_norms: jax.typing.ArrayLike,
    smoothness: jax.typing.ArrayLike,
    ax: Axes | None = None,
    fit: bool = True,
):
    """Local smoothness against gradient norm, coloured by iteration ([004] Fig. 1-2).

    Args:
      grad_norms: ``||grad f||`` at each point.
      smoothness: the local smoothness there.
      ax: a matplotlib axis to draw on; a new figure if ``None``.
      fit: draw the :func:`fit_l0_l1` line.
    """
    plt = pyplot()
    g, s = np.asarray(grad_norms), np.asarray(smoothness)
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    sc = ax.scatter(g, s, c=np.arange(len(g)), cmap="viridis", s=8)
    plt.colorbar(sc, ax=ax, label="iteration")
    if fit and len(g) >= 2:
        l0, l1, _ = fit_l0_l1(g, s)
        xs = np.linspace(0, g.max(), 50)
        ax.plot(xs, l0 + l1 * xs, "r--", label=f"L0 + L1 |grad|: L0={l0:.3g}, L1={l1:.3g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("||grad f||")
    ax.set_ylabel("local smoothness")
    return ax
