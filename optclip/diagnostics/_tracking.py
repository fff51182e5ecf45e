"""Clipping statistics recorded in the optimizer state from inside a chain."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip._global_clip import ClipByGlobalNormState
from optclip._numerics import global_norm
from optclip._states import find_state
from optclip._statistics import clip_fraction


class TrackStatisticsState(NamedTuple):
    """State of :func:`track_statistics`: the wrapped state and the last step's statistics.

    Attributes:
      inner: the wrapped transformation's state (``optax.EmptyState()`` if none).
      count: steps seen.
      grad_norm: global norm of the incoming update.
      update_norm: global norm of the outgoing update.
      max_grad_norm: largest ``grad_norm`` so far.
      clip_fraction: :func:`optclip.clip_fraction` of the wrapped state (NaN
        if it holds no clip that function reads).
      pre_clip_norm: the wrapped transform's pre-clip global norm (NaN if none).
    """

    inner: optax.OptState
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    grad_norm: jax.Array
    update_norm: jax.Array
    max_grad_norm: jax.Array
    clip_fraction: jax.Array
    pre_clip_norm: jax.Array


def track_statistics(
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Records norms (and clipping statistics) in the state; the updates pass unchanged.

    ``track_statistics()`` alone is an identity link to put anywhere in a
    chain; ``track_statistics(tx)`` wraps ``tx`` and also reads its clip
    fraction (:func:`optclip.clip_fraction`) and pre-clip norm
    (:func:`optclip.clip_by_global_norm`). Log the
    :class:`TrackStatisticsState` fields from the training loop without
    splitting the chain. It jits, chains and shards like any transform: the
    statistics are scalars. (optax's own :func:`optax.monitor` records
    user-chosen measurements; this one knows optclip's clipping states.)

    What it adds is the norm of the update at its place in the chain, in and
    out. Every statistic the optimizer's states already keep (norms, clip
    fractions, thresholds, skipped steps) needs no wrapper:
    :func:`optclip.statistics` reads them from any state.

    Args:
      inner: the transformation to wrap; ``None`` for an identity link.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with state
      :class:`TrackStatisticsState`.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> from optclip import diagnostics
      >>> tx = diagnostics.track_statistics(optclip.clip_by_global_norm(1.0))
      >>> _, s = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> float(s.grad_norm), float(s.update_norm), float(s.pre_clip_norm)
      (5.0, 1.0, 5.0)
    """
    inner = inner if inner is not None else optax.identity()

    def _pre_clip(state):
        clip = find_state(state, ClipByGlobalNormState)
        return jnp.float32(jnp.nan) if clip is None else clip.norm

    def _fraction(state):
        try:
            return jnp.asarray(clip_fraction(state), jnp.float32)
        except ValueError:
            return jnp.float32(jnp.nan)

    def init_fn(params):
        nan = jnp.float32(jnp.nan)
        return TrackStatisticsState(
            inner.init(params), jnp.zeros([], jnp.int32), nan, nan, jnp.float32(0.0), nan, nan
        )

    def update_fn(updates, state, params=None, **extra):
        gnorm = global_norm(updates)
        out, inner_state = optax.with_extra_args_support(inner).update(
            updates, state.inner, params, **extra
        )
        return out, TrackStatisticsState(
            inner=inner_state,
            count=optax.safe_increment(state.count),
            grad_norm=gnorm,
            update_norm=global_norm(out),
            max_grad_norm=jnp.maximum(state.max_grad_norm, gnorm),
            clip_fraction=_fraction(inner_state),
            pre_clip_norm=_pre_clip(inner_state),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
