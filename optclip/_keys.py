"""PRNG keys in every form a user may pass: an int seed, a typed key, a raw uint32 key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optclip._types import KeyLike


def _is_typed(key: KeyLike) -> bool:
    return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def key_data(key: KeyLike) -> tuple[jax.Array, object]:
    """The raw key data and the key's implementation (``None`` for the default one).

    Storing raw data keeps optimizer states free of typed-key leaves, which
    checkpointing and ``tree_map`` over states handle like any other array.
    """
    if _is_typed(key):
        return jax.random.key_data(key), jax.random.key_impl(key)
    arr = jnp.asarray(key)
    if arr.ndim == 0 and jnp.issubdtype(arr.dtype, jnp.integer):
        return jax.random.key_data(jax.random.key(arr)), None
    return arr.astype(jnp.uint32), None


def wrap(data: jax.Array, impl: object) -> jax.Array:
    """A typed key from :func:`key_data`'s output."""
    if impl is None:
        return jax.random.wrap_key_data(data)
    return jax.random.wrap_key_data(data, impl=impl)
