"""Gradient noise: per-minibatch noise norms and the running variance ([000] §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optclip._numerics import global_norm
from optclip.diagnostics._batches import Batches, LossFn, grads_map, mean_grad, stack


def noise_norms(
    loss_fn: LossFn,
    params: optax.Params,
    batches: Batches,
    full_grad: optax.Updates | None = None,
    chunk_size: int = 8,
) -> jax.Array:
    r"""Per-minibatch gradient-noise norms ``||g_b - grad f||`` ([000] §2, Fig. 2).

    ``grad f`` is the mean of the minibatch gradients unless ``full_grad`` is
    given. Histogram the result (:func:`plot_noise_histogram`) and estimate its
    tail (:func:`hill_tail_index`).

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: a pytree.
      batches: a sequence of batches or stacked batches (leading axis).
      full_grad: the full gradient, if known.
      chunk_size: batches whose gradients are computed together (vectorised).

    Returns:
      float32 array of shape ``(num_batches,)``.
    """
    batches, n = stack(batches)
    if full_grad is None:
        full_grad = mean_grad(loss_fn, params, batches, n)
    return grads_map(
        loss_fn, params, batches, lambda g: global_norm(optax.tree.sub(g, full_grad)), chunk_size
    )


def variance_by_sample_size(loss_fn: LossFn, params: optax.Params, batches: Batches) -> jax.Array:
    r"""Empirical gradient variance ``mean_i ||g_i - mean_n g||^2`` after ``n = 1..N`` samples.

    The curve of [000] Fig. 2(c, f): it settles for concentrated noise and keeps
    jumping when the noise is heavy-tailed (infinite variance). Computed in one
    pass with Welford's update; entry ``n - 1`` is the variance of the first
    ``n`` minibatch gradients (0 for ``n = 1``).

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: a pytree.
      batches: a list of batches or stacked batches (leading axis).
    """
    batches, _ = stack(batches)
    grad = jax.grad(loss_fn)
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)

    def body(carry, b):
        k, mean, m2 = carry
        g = jax.tree.map(lambda x: x.astype(jnp.float32), grad(params, b))
        k = k + 1.0
        delta = optax.tree.sub(g, mean)
        mean = jax.tree.map(lambda m, d: m + d / k, mean, delta)
        m2 = m2 + optax.tree.vdot(delta, optax.tree.sub(g, mean))
        return (k, mean, m2), m2 / k

    _, out = jax.lax.scan(body, (jnp.float32(0.0), zeros, jnp.float32(0.0)), batches)
    return out
