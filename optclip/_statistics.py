"""Statistics read from an optimizer state, wherever the transform that keeps them sits."""

from __future__ import annotations

import jax
import optax

from optclip._acclip import ScaleByACClipState
from optclip._coordinate_clip import ClipCoordinatewiseState
from optclip._states import find_state


def clip_fraction(opt_state: optax.OptState) -> jax.Array:
    """Fraction of coordinates clipped at the last step, read from any optimizer state.

    Finds the first ACClip (:class:`ScaleByACClipState`) or coordinate-wise
    clipping (:class:`ClipCoordinatewiseState`) state inside ``opt_state``, however
    deeply chained or wrapped (``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ...), and returns its ``clip_fraction``.

    Args:
      opt_state: an optimizer state holding an ACClip or CClip state.

    Returns:
      A float32 scalar in ``[0, 1]``.

    Raises:
      ValueError: if ``opt_state`` holds no such state.

    Example:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.acclip(0.1, initial_threshold=0.0)
      >>> params = {"w": jnp.ones(4)}
      >>> _, state = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
      >>> float(optclip.clip_fraction(state))
      1.0
    """
    state = find_state(opt_state, (ScaleByACClipState, ClipCoordinatewiseState))
    if not isinstance(state, ScaleByACClipState | ClipCoordinatewiseState):
        raise ValueError(
            "`opt_state` holds no ACClip or coordinate-wise clipping state "
            "to read a clip fraction from."
        )
    return state.clip_fraction
