"""Type aliases for the public signatures.

Hyperparameters are ``jax.typing.ArrayLike`` rather than ``float`` because
:func:`optax.inject_hyperparams` passes them as (possibly traced) 0-d arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import chex
import jax
import optax

#: A scalar hyperparameter: a Python or NumPy number, or a 0-d array (traced
#: under :func:`optax.inject_hyperparams`).
Scalar: TypeAlias = jax.typing.ArrayLike

#: A clipping threshold: a scalar, a pytree of per-leaf (or per-element)
#: thresholds shaped like the params, or a schedule of the step count returning either.
Threshold: TypeAlias = jax.typing.ArrayLike | chex.ArrayTree | Callable[[jax.Array], chex.ArrayTree]

#: Which params receive weight decay, as in :func:`optax.add_decayed_weights`.
Mask: TypeAlias = optax.MaskOrFn

#: A PRNG seed: a Python int, a typed key (:func:`jax.random.key`) or a raw
#: ``uint32`` key (:func:`jax.random.PRNGKey`).
KeyLike: TypeAlias = int | jax.Array


def at_step(value: Threshold, count: jax.Array) -> chex.ArrayTree:
    """A hyperparameter's value at step ``count``: calls a schedule, returns anything else."""
    return value(count) if callable(value) else value
