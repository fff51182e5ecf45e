"""Batches given as a list or stacked, and per-batch gradients computed in chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import chex
import jax
import jax.numpy as jnp
import optax

#: ``loss_fn(params, batch) -> scalar``.
LossFn: TypeAlias = Callable[[optax.Params, chex.ArrayTree], jax.Array]
#: A Python list of batches, or one pytree whose leaves have a leading batch-index axis.
Batches: TypeAlias = list[chex.ArrayTree] | chex.ArrayTree


def stack(batches: Batches) -> tuple[chex.ArrayTree, int]:
    # A list is a sequence of batches; any other pytree (tuples included, the
    # usual (x, y) batch) is stacked batches with a leading batch-index axis.
    if isinstance(batches, list):
        if len(batches) == 0:
            raise ValueError("`batches` is empty: give at least one batch.")
        batches = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("`batches` is empty: give at least one batch.")
    n = int(jnp.shape(leaves[0])[0])
    if n == 0:
        raise ValueError("`batches` is empty: give at least one batch.")
    return batches, n


def grads_map(loss_fn: LossFn, params: optax.Params, batches: Batches, fn, chunk_size: int):
    """``lax.map`` of ``fn(grad(loss)(params, batch))`` over stacked batches, in chunks."""
    grad = jax.grad(loss_fn)
    return jax.lax.map(lambda b: fn(grad(params, b)), batches, batch_size=chunk_size)


def mean_grad(loss_fn, params, batches, n):
    def body(acc, b):
        return jax.tree.map(jnp.add, acc, jax.grad(loss_fn)(params, b)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p, jnp.float32)), params)
    total, _ = jax.lax.scan(body, zeros, batches)
    return jax.tree.map(lambda t: t / n, total)
