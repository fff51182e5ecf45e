"""Sharpness: the top Hessian eigenvalue by power iteration on Hessian-vector products."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from optclip._numerics import global_norm
from optclip.diagnostics._batches import LossFn


def sharpness(
    loss_fn: LossFn,
    params: optax.Params,
    batch: chex.ArrayTree,
    num_iters: int = 100,
    key: jax.Array | None = None,
    tol: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    r"""Top Hessian eigenvalue (largest in magnitude) by power iteration on Hessian-vector products.

    ``H v`` is ``jax.jvp`` of ``jax.grad`` (no Hessian is formed). Iterates
    ``v <- H v / ||H v||`` from a random start until the Rayleigh quotient
    ``v^T H v`` changes by less than ``tol`` relative, or ``num_iters``.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: the point.
      batch: the batch the loss is evaluated on.
      num_iters: the most power iterations, ``>= 1``.
      key: PRNG key of the random start; ``jax.random.key(0)`` if ``None``.
      tol: relative change of the estimate at which to stop.

    Returns:
      ``(estimate, iterations)``.
    """
    if num_iters < 1:
        raise ValueError(f"`num_iters` must be >= 1, got {num_iters}.")
    key = jax.random.key(0) if key is None else key
    grad = jax.grad(lambda p: loss_fn(p, batch))

    def hvp(v):
        return jax.jvp(grad, (params,), (v,))[1]

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(p), jnp.float32)
            for k, p in zip(keys, leaves, strict=True)
        ],
    )
    v = jax.tree.map(lambda a: a / global_norm(v), v)

    def cond(c):
        i, _, lam, prev = c
        return (i < num_iters) & ((i < 2) | (jnp.abs(lam - prev) > tol * jnp.abs(lam)))

    def body(c):
        i, v, lam, _ = c
        hv = hvp(v)
        new_lam = optax.tree.vdot(v, hv)
        n = global_norm(hv)
        v = jax.tree.map(lambda a: a / jnp.where(n > 0, n, 1.0), hv)
        return i + 1, v, new_lam, lam

    i, _, lam, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), v, jnp.float32(0), jnp.float32(jnp.inf))
    )
    return lam, i
