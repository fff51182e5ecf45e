"""The thesis' training statistics (eq. 6.2) and the time-averaged loss (§6.4)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip._numerics import global_norm
from optclip.diagnostics._batches import Batches, LossFn, mean_grad, stack
from optclip.diagnostics._noise import noise_norms
from optclip.diagnostics._sharpness import sharpness


class TrainingStats(NamedTuple):
    """The thesis' eq. 6.2 quantities at one point in training."""

    loss: jax.Array
    grad_norm: jax.Array
    noise: jax.Array
    sharpness: jax.Array


def training_stats(
    loss_fn: LossFn,
    params: optax.Params,
    batches: Batches,
    sharpness_iters: int = 50,
    key: jax.Array | None = None,
    chunk_size: int = 8,
) -> TrainingStats:
    r"""Full loss, full-gradient norm, noise and sharpness in one call (thesis eq. 6.2).

    Over the given batches (the dataset ``S``): ``L_S`` the mean loss,
    ``||grad L_S||``, ``sigma = sqrt(mean_i ||grad L_S - grad l_i||^2)`` with ``l_i``
    the per-batch losses (pass batches of one example for per-example noise),
    and ``||Hess L_S||`` by :func:`sharpness` on the mean loss.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: the point.
      batches: the dataset, as a list of batches or stacked batches.
      sharpness_iters: power iterations for the sharpness.
      key: PRNG key of the sharpness' random start.
      chunk_size: batches whose gradients are computed together.
    """
    batches, n = stack(batches)
    full = mean_grad(loss_fn, params, batches, n)
    norms = noise_norms(loss_fn, params, batches, full_grad=full, chunk_size=chunk_size)
    loss = jnp.mean(jax.lax.map(lambda b: loss_fn(params, b), batches))

    def mean_loss(p, bs):
        return jnp.mean(jax.lax.map(lambda b: loss_fn(p, b), bs))

    sharp, _ = sharpness(mean_loss, params, batches, num_iters=sharpness_iters, key=key)
    return TrainingStats(
        loss=loss, grad_norm=global_norm(full), noise=jnp.sqrt(jnp.mean(norms**2)), sharpness=sharp
    )


def window_average(values: jax.typing.ArrayLike, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values at each step (thesis §6.4).

    The time-averaged loss converges even when the gradient norm does not.
    Entry ``t`` averages ``values[max(0, t - window + 1) : t + 1]``.

    Args:
      values: a non-empty 1-D sequence.
      window: the trailing window, ``>= 1``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"`values` must be a non-empty 1-D sequence, got shape {x.shape}.")
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}.")
    c = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(1, x.size + 1)
    lo = np.maximum(0, t - window)
    return (c[t] - c[lo]) / (t - lo)
