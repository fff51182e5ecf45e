"""ACClip's adaptive threshold: the running alpha-moment of the raw gradient, per coordinate."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._coordinate_clip import coordinate_clip
from optclip._numerics import power_mean
from optclip._types import Scalar


class AlphaMomentThresholdState(NamedTuple):
    """State of :func:`estimate_alpha_moment_threshold`.

    Attributes:
      count: number of updates seen.
      tau: the per-coordinate threshold ``tau_k`` itself (not ``tau_k^alpha``).
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    tau: optax.Updates


def alpha_moment_update(tau: jax.Array, g: jax.Array, decay: Scalar, alpha: Scalar) -> jax.Array:
    r"""One step of ``tau^alpha = decay * tau^alpha + (1 - decay) |g|^alpha``, overflow-safe.

    Args:
      tau: the current threshold ``tau_{k-1} >= 0``.
      g: the raw gradient ``g_k``.
      decay: ``beta_2``.
      alpha: the moment order ``> 0``.

    Returns:
      ``tau_k`` in float32 (or ``g``'s dtype if wider).
    """
    g32 = jnp.abs(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
    return power_mean(tau.astype(g32.dtype), g32, decay, alpha)


def first_step_decay(decay: Scalar, count: jax.Array, seeded: bool) -> jax.typing.ArrayLike:
    """The decay of step ``count``: 0 at the first step when the threshold is seeded.

    Seeding ``tau_0 = |g_1|`` is the same as running the first EMA step with
    decay 0, which keeps the seeding a scalar select, not a per-element one.
    """
    return jnp.where(count == 0, 0.0, decay) if seeded else decay


def robust_clip(
    g: jax.Array,
    tau: jax.Array,
    count: jax.Array,
    decay: Scalar,
    alpha: Scalar,
    initial_threshold: Scalar | None,
    spike_factor: Scalar,
) -> jax.Array:
    """``g`` clipped coordinate-wise at ``spike_factor`` times the previous threshold's estimate.

    The estimate of the scale ``E[|g|^alpha]^(1/alpha)`` from steps ``1..k-1``:
    ``tau_{k-1}`` itself when the threshold was seeded or started above 0;
    ``tau_{k-1} / (1 - decay^(k-1))^(1/alpha)``, the EMA debiased for its zero
    start, when it started at 0. With no history yet (the first step of a
    seeded or zero start) nothing is clipped, and neither is a coordinate whose
    estimate is still 0 (its gradient has been zero so far).
    """
    n = count.astype(jnp.float32)
    first = count == 0
    if initial_threshold is None:
        scale = tau
        no_history = first
    else:
        zero_start = jnp.asarray(initial_threshold) == 0
        debias = (1.0 - jnp.asarray(decay, jnp.float32) ** jnp.where(first, 1.0, n)) ** (
            1.0 / jnp.asarray(alpha, jnp.float32)
        )
        scale = jnp.where(zero_start, tau / debias, tau)
        no_history = first & zero_start
    # A coordinate whose gradient has been zero so far has no scale yet: clipping it at 0 would
    # hold it at zero for good, so it passes until it has one.
    bound = jnp.where(no_history | (scale <= 0), jnp.inf, spike_factor * scale)
    return coordinate_clip(g, bound)[0]


def robust_clip_tree(
    updates: optax.Updates,
    tau: optax.Updates,
    count: jax.Array,
    decay: Scalar,
    alpha: Scalar,
    initial_threshold: Scalar | None,
    spike_factor: Scalar,
) -> optax.Updates:
    """:func:`robust_clip` of every leaf of ``updates`` against its threshold in ``tau``."""
    clip = lambda g, t: robust_clip(g, t, count, decay, alpha, initial_threshold, spike_factor)
    return jax.tree.map(clip, updates, tau)


def check_robust(robust: object, spike_factor: object) -> None:
    _checks.check_flag("robust", robust)
    _checks.check_range("spike_factor", spike_factor, 1.0, float("inf"))


def init_threshold(params: optax.Params, initial_threshold: Scalar | None) -> optax.Updates:
    """``tau_0`` shaped like the params, in float32 (0 when the threshold is seeded)."""
    fill = 0.0 if initial_threshold is None else initial_threshold
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), fill, jnp.float32), params)


def estimate_alpha_moment_threshold(
    decay: Scalar = 0.99,
    alpha: Scalar = 1.0,
    initial_threshold: Scalar | None = 0.0,
    *,
    robust: bool = False,
    spike_factor: Scalar = 4.0,
) -> optax.GradientTransformation:
    r"""Tracks ACClip's per-coordinate threshold; passes updates through unchanged.

    .. math:: \tau_k^\alpha = \beta_2 \tau_{k-1}^\alpha + (1 - \beta_2) |g_k|^\alpha

    With ``robust=True`` each coordinate is first clipped at ``spike_factor``
    times the threshold's previous estimate of its scale (:func:`scale_by_acclip`
    has the rule), the threshold is updated from the clipped gradient, and the
    clipped gradient is what this transform passes on: a coordinate-wise spike
    clip that a spike cannot raise, to put in front of an optimizer
    (``optax.chain(estimate_alpha_moment_threshold(robust=True), optax.adam(lr))``;
    not benchmarked: ``docs/spikes.md`` measured ``acclip(robust=True)``).

    ``tau_k`` estimates the coordinate-wise alpha-moment ``E[|g|^alpha]^(1/alpha)``
    (``B`` in Assumption 2 of Zhang et al., 2020). Put it first in a chain to
    watch that statistic of the raw gradient; :func:`scale_by_acclip` uses the
    same update to set its clipping thresholds.

    The state stores ``tau`` rather than ``tau^alpha`` and updates it as a
    weighted power mean, so ``|g|^alpha`` is never formed and cannot overflow.

    Args:
      decay: ``beta_2`` in ``[0, 1)``.
      alpha: moment order in ``[1, 2]`` (the paper uses 1; 2 gives an RMS).
      initial_threshold: ``tau_0 >= 0`` (default 0); ``None`` seeds it with the first
        gradient's magnitude, ``tau_1 = |g_1|`` (see ``docs/design.md``).
      robust: keyword-only; clip at the previous threshold first (``docs/spikes.md``).
      spike_factor: keyword-only, ``>= 1``; with ``robust``, how many times the
        scale a coordinate may reach before it is clipped.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`AlphaMomentThresholdState`.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, eq. (ACClip).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.estimate_alpha_moment_threshold(decay=0.5, initial_threshold=None)
      >>> _, state = tx.update({"w": jnp.array([2.0, -4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> state.tau["w"].tolist()
      [2.0, 4.0]
    """
    _checks.check_decay("decay", decay)
    _checks.check_range("alpha", alpha, 1.0, 2.0)
    if initial_threshold is not None:
        _checks.check_threshold_leaves("initial_threshold", initial_threshold)
    check_robust(robust, spike_factor)

    def init_fn(params):
        return AlphaMomentThresholdState(
            count=jnp.zeros([], jnp.int32), tau=init_threshold(params, initial_threshold)
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.tau, "the threshold")
        d = first_step_decay(decay, state.count, initial_threshold is None)
        tau = state.tau
        if robust:
            updates = robust_clip_tree(
                updates, tau, state.count, decay, alpha, initial_threshold, spike_factor
            )
            # The clipped updates are written out before the threshold is written over the one
            # they read: one buffer (the output) instead of two (it and a copy of the old
            # threshold; docs/design.md, "SPAM's step in place").
            updates, tau = jax.lax.optimization_barrier((updates, tau))
        tau = jax.tree.map(lambda t, g: alpha_moment_update(t, g, d, alpha), tau, updates)
        return updates, AlphaMomentThresholdState(
            optax.safe_increment(state.count), optax.tree.cast_like(tau, state.tau)
        )

    return optax.GradientTransformation(init_fn, update_fn)
