"""Decoupled weight decay whose state never depends on the decay's value."""

from __future__ import annotations

import optax

from optclip import _checks
from optclip._types import Mask


def decoupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule, mask: Mask = None
) -> optax.GradientTransformation:
    """``optax.add_decayed_weights``, or a link with the same state that needs no params at 0."""
    _checks.check_nonnegative("weight_decay", weight_decay, schedule=True)
    if _checks.is_static_zero(weight_decay):
        return optax.identity() if mask is None else optax.masked(optax.identity(), mask)
    return optax.add_decayed_weights(weight_decay, mask)
