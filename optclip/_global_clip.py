"""Global-norm clipping: one scalar factor ``min(1, tau / ||u||)`` for the whole update."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import global_norm_parts
from optclip._scaled import divide, norm_value, scale
from optclip._types import Threshold, at_step


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`.

    Attributes:
      count: number of updates seen (drives a scheduled threshold).
      norm: global norm of the last incoming update, before clipping.
      clipped: whether the last update was scaled down (float32 0 or 1).
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    norm: jax.Array
    clipped: jax.Array


def clip_by_global_norm(max_norm: Threshold) -> optax.GradientTransformation:
    r"""Scales the update so that its global norm is at most ``max_norm``.

    .. math:: \hat u = \min\left(1, \frac{\tau_k}{\|u\|}\right) u

    A drop-in for :func:`optax.clip_by_global_norm` (same argument, same
    updates up to one rounding: optax computes ``(u / ||u||) * tau``, this
    computes ``u * (tau / ||u||)``), with three differences:

    * One scalar factor multiplies every leaf, so XLA fuses the scaling into
      whatever consumes the update instead of writing a divided copy. That
      saves time on XLA:CPU on a very large leaf; on model trees, and on GPU,
      where XLA fuses optax's divide as well, the two cost about the same
      (``docs/performance.md`` has the measurements).
    * ``max_norm`` may be a schedule of the step count (``tau_k`` of GClip).
    * The state records the pre-clip norm and whether the step was clipped;
      in any chain, ``optclip.statistics(state)`` reads them as
      ``"clip_by_global_norm/norm"`` and ``"clip_by_global_norm/clipped"``.

    Numerics follow the package rule (``docs/numerics.md``): a zero update with
    ``max_norm = 0`` gives zeros (optax gives NaN); any finite update, up to
    its dtype's largest entries (a norm beyond float32's range included), is
    clipped to length ``max_norm`` (the recorded ``norm`` is then inf, the
    norm rounded to float32); NaN/inf in the update give a NaN update so
    :func:`optax.apply_if_finite` can skip the step.

    With momentum in front (``optax.chain(optclip.ema_momentum(b1),
    optclip.clip_by_global_norm(tau))``) this is GClip of Zhang et al. (2020),
    Algorithm 1.

    Args:
      max_norm: threshold ``tau >= 0`` (float, scalar array or schedule).

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`ClipByGlobalNormState`.

    References:
      Pascanu et al., 2013, https://arxiv.org/abs/1211.5063;
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.clip_by_global_norm(1.0)
      >>> u, s = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> u["w"].tolist(), float(s.norm)
      ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    _checks.check_threshold_leaves("max_norm", max_norm)

    def init_fn(params):
        del params
        return ClipByGlobalNormState(
            count=jnp.zeros([], jnp.int32),
            norm=jnp.zeros([], jnp.float32),
            clipped=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        tau = jnp.asarray(at_step(max_norm, state.count), jnp.float32)
        parts = global_norm_parts(updates)
        norm = norm_value(parts)
        clipped = norm > tau
        # tau / ||u|| as an exact exponent shift and a normal factor: a norm near or beyond
        # float32's largest value would make the plain factor subnormal (flushed to 0) or 0.
        shift, factor = divide(tau, parts, clipped)
        # An unclipped update passes through as it is, like optax's: multiplying by 1.0 would
        # flush subnormal entries to zero on backends that do (XLA:CPU). A NaN norm compares
        # false here, so the NaN in the update survives (the numerics rule).
        updates = jax.tree.map(
            lambda u: jnp.where(clipped, scale(u, shift, factor), u).astype(u.dtype), updates
        )
        new_state = ClipByGlobalNormState(
            count=optax.safe_increment(state.count),
            norm=norm,
            clipped=clipped.astype(jnp.float32),
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)
