"""Statistics read from an optimizer state, wherever the transform that keeps them sits."""

from __future__ import annotations

import jax
import optax

from optclip._acclip import ScaleByACClipState
from optclip._adagc import AdaGCState
from optclip._coordinate_clip import ClipCoordinatewiseState
from optclip._spam import ScaleBySpamState
from optclip._spam_pieces import ClipBySecondMomentState
from optclip._states import find_state
from optclip._zclip import ZClipState

# The states that say how much of the last update they clipped: the coordinate-wise clips keep a
# fraction; ZClip clips the whole update or nothing; AdaGC clips whole leaves.
_COORDINATE_STATES = (
    ScaleByACClipState,
    ClipCoordinatewiseState,
    ScaleBySpamState,
    ClipBySecondMomentState,
)
_WHOLE_STATES = (ZClipState, AdaGCState)


def clip_fraction(opt_state: optax.OptState) -> jax.Array:
    """Fraction of coordinates clipped at the last step, read from any optimizer state.

    Finds the first clipping state inside ``opt_state``, however deeply chained
    or wrapped (``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ...), and returns the fraction of coordinates it
    clipped: ACClip, coordinate-wise clipping and SPAM's spike clip count
    coordinates; ZClip clips all of them or none (1 or 0); AdaGC, the
    coordinates of the leaves it scaled down.

    Args:
      opt_state: an optimizer state holding one of those states.

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
    state = find_state(opt_state, _COORDINATE_STATES + _WHOLE_STATES)
    if isinstance(state, _WHOLE_STATES):
        return state.clipped
    if isinstance(state, _COORDINATE_STATES):
        return state.clip_fraction
    raise ValueError(
        "`opt_state` holds no ACClip, coordinate-wise clipping, SPAM, ZClip or AdaGC "
        "state to read a clip fraction from."
    )
