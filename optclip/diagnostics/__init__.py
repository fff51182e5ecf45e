"""Measure what the papers measured: gradient-noise tails, local smoothness, sharpness.

For any ``loss_fn(params, batch) -> scalar`` and any pytree of params. Batches
are given as a Python ``list`` of batches or as one pytree (tuples included)
whose leaves have a leading batch-index axis (stacked batches). Gradients are computed in chunks of
``chunk_size`` batches with :func:`jax.lax.map`, so memory stays at a few
gradients whatever the number of batches.

References: [000] Zhang et al. 2020 (§2, App. H); [003] Crawshaw et al. 2022
(§5.2); [004] Zhang et al. 2020b (App. H.3); thesis ch. 6 (eq. 6.2, §6.4).
"""

from __future__ import annotations

import warnings

from optclip._sampling import symmetric_alpha_stable
from optclip.diagnostics._asymmetric_fit import fit_l0_l1_asymmetric
from optclip.diagnostics._layer_smoothness import (
    LayerFit,
    LayerSmoothness,
    fit_gluon,
    fit_layer_l0_l1,
    inverse_l1_by_kind,
    layer_kinds,
    layer_smoothness,
    norm_pair,
)
from optclip.diagnostics._noise import noise_norms, variance_by_sample_size
from optclip.diagnostics._plots import plot_noise_histogram, plot_smoothness
from optclip.diagnostics._sharpness import sharpness
from optclip.diagnostics._smoothness import coordinate_smoothness, fit_l0_l1, local_smoothness
from optclip.diagnostics._tails import hill_tail_index, tail_index
from optclip.diagnostics._tracking import TrackStatisticsState, track_statistics
from optclip.diagnostics._training import TrainingStats, training_stats, window_average

__all__ = [
    # Gradient noise.
    "noise_norms",
    "variance_by_sample_size",
    # Tail indices.
    "hill_tail_index",
    "symmetric_alpha_stable",
    "tail_index",
    # Smoothness and sharpness.
    "coordinate_smoothness",
    "fit_l0_l1",
    "local_smoothness",
    "sharpness",
    # Layer-wise smoothness in the LMO norms, and Gluon from it.
    "LayerFit",
    "LayerSmoothness",
    "fit_gluon",
    "fit_l0_l1_asymmetric",
    "fit_layer_l0_l1",
    "inverse_l1_by_kind",
    "layer_kinds",
    "layer_smoothness",
    "norm_pair",
    # Training statistics.
    "TrainingStats",
    "training_stats",
    "window_average",
    # Statistics from inside an optax chain.
    "TrackStatisticsState",
    "track_statistics",
    # Plots (matplotlib, the `plot` extra).
    "plot_noise_histogram",
    "plot_smoothness",
]

# Old names that shadowed optax's `monitor` and `MonitorState`.
_RENAMED = {"monitor": "track_statistics", "MonitorState": "TrackStatisticsState"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"optclip.diagnostics.{name} is renamed {new}; the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
