"""Clipping directions: global, coordinate-wise and adaptive coordinate-wise (ACClip).

These are directions (no learning rate): chain them before
:func:`optax.scale_by_learning_rate`, or use the full optimizers in
:mod:`optclip._alias`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks
from optclip._numerics import (
    clip_factor,
    fraction_true,
    global_norm,
    power_mean,
)

Threshold = float | jax.Array | Callable[[jax.Array], Any] | Any


def _value(threshold: Threshold, count: jax.Array) -> Any:
    return threshold(count) if callable(threshold) else threshold


def _state_dtype(dtype: Any) -> Any:
    return jnp.float32 if dtype is None else jnp.dtype(dtype)


# ---------------------------------------------------------------------------
# Momentum
# ---------------------------------------------------------------------------


class EmaMomentumState(NamedTuple):
    """State of :func:`ema_momentum`: the running average ``mu``."""

    mu: optax.Updates


def ema_update(g: jax.Array, mu: jax.Array, decay: Any) -> jax.Array:
    """``decay * mu + (1 - decay) * g`` computed in float32 (or wider)."""
    g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    return decay * mu.astype(g32.dtype) + (1.0 - decay) * g32


def ema_momentum(decay: Any = 0.9, mu_dtype: Any = None) -> optax.GradientTransformation:
    r"""Exponential moving average momentum, no bias correction.

    .. math:: m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \qquad m_0 = 0.

    This is line 3 of Algorithm 1 of Zhang et al. (2020), the momentum every
    clipping method of the paper clips. It is :func:`optax.ema` with
    ``debias=False`` except for dtypes: the average is kept in float32 (or
    ``mu_dtype``) whatever the parameter dtype, and the outgoing update has the
    dtype of the incoming one.

    Args:
      decay: ``beta_1`` in ``[0, 1)``.
      mu_dtype: dtype of the stored average; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`EmaMomentumState`.

    Example:
      >>> import optax, optclip, jax.numpy as jnp
      >>> tx = optax.chain(optclip.ema_momentum(0.9), optclip.clip_by_global_norm(1.0))
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    _checks.check_decay("decay", decay)
    dtype = _state_dtype(mu_dtype)

    def init_fn(params):
        return EmaMomentumState(mu=optax.tree.zeros_like(params, dtype=dtype))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, m: ema_update(g, m, decay), updates, state.mu)
        out = jax.tree.map(lambda m, g: m.astype(g.dtype), mu, updates)
        return out, EmaMomentumState(mu=optax.tree.cast(mu, dtype))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Global-norm clipping
# ---------------------------------------------------------------------------


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`.

    Attributes:
      count: number of updates seen (drives a scheduled threshold).
      norm: global norm of the last incoming update, before clipping.
      clipped: whether the last update was scaled down (float32 0 or 1).
    """

    count: jax.Array
    norm: jax.Array
    clipped: jax.Array


def clip_by_global_norm(max_norm: Threshold) -> optax.GradientTransformation:
    r"""Scales the update so that its global norm is at most ``max_norm``.

    .. math:: \hat u = \min\left(1, \frac{\tau_k}{\|u\|}\right) u

    A drop-in for :func:`optax.clip_by_global_norm` (same argument, same
    updates up to one rounding: optax computes ``(u / ||u||) * tau``, this
    computes ``u * (tau / ||u||)``), with three differences:

    * One scalar factor multiplies every leaf, so XLA fuses the scaling into
      whatever consumes the update instead of writing a divided copy.
    * ``max_norm`` may be a schedule of the step count (``tau_k`` of GClip).
    * The state records the pre-clip norm and whether the step was clipped.

    Numerics follow the package rule (``docs/numerics.md``): a zero update with
    ``max_norm = 0`` gives zeros (optax gives NaN); the norm of any finite
    float32 tree is finite, even at 1e30 entries; NaN/inf in the update give a
    NaN update so :func:`optax.apply_if_finite` can skip the step.

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

    Example:
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
        tau = jnp.asarray(_value(max_norm, state.count), jnp.float32)
        norm = global_norm(updates)
        factor = clip_factor(norm, tau)
        updates = jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)
        new_state = ClipByGlobalNormState(
            count=optax.safe_increment(state.count),
            norm=norm,
            clipped=(norm > tau).astype(jnp.float32),
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Coordinate-wise clipping
# ---------------------------------------------------------------------------


class ClipCoordinatewiseState(NamedTuple):
    """State of :func:`clip_coordinatewise`.

    Attributes:
      count: number of updates seen (drives a scheduled threshold).
      clip_fraction: fraction of coordinates clipped in the last update.
    """

    count: jax.Array
    clip_fraction: jax.Array


def coordinate_clip(u: jax.Array, tau: Any, eps: Any = 0.0) -> tuple[jax.Array, jax.Array]:
    r"""``min(tau / (|u| + eps), 1) * u`` element-wise, and the mask of changed coordinates.

    The shared core of CClip and ACClip. Computed in float32 and returned in
    ``u``'s dtype. A NaN or inf coordinate gives a NaN coordinate (the package
    rule), never ``+-tau``.
    """
    u32 = u.astype(jnp.promote_types(u.dtype, jnp.float32))
    magnitude = jnp.abs(u32) + eps
    tau = jnp.asarray(tau, u32.dtype)
    clipped = u32 * clip_factor(magnitude, tau)
    # A zero coordinate is left as it is, so it never counts as clipped.
    return clipped.astype(u.dtype), (magnitude > tau) & (u32 != 0)


def _check_threshold_tree(threshold: Any, params: Any) -> None:
    if callable(threshold) or jax.tree.structure(threshold).num_nodes == 1:
        return
    t_struct = jax.tree.structure(threshold)
    p_struct = jax.tree.structure(params)
    if t_struct != p_struct:
        raise ValueError(
            "`threshold` must be a scalar, a schedule, or a pytree with the same "
            f"structure as the params; got structure {t_struct} for params {p_struct}."
        )
    for t, p in zip(jax.tree.leaves(threshold), jax.tree.leaves(params), strict=True):
        try:
            jnp.broadcast_shapes(jnp.shape(t), jnp.shape(p))
        except ValueError as e:
            raise ValueError(
                f"`threshold` leaf of shape {jnp.shape(t)} does not broadcast to the "
                f"parameter shape {jnp.shape(p)}."
            ) from e


def _map_threshold(fn, updates, tau):
    """Applies ``fn(u, tau_leaf)`` with a scalar threshold or a per-leaf threshold tree."""
    if jax.tree.structure(tau).num_nodes == 1:  # a single leaf: broadcast to every leaf
        return jax.tree.map(lambda u: fn(u, tau), updates)
    return jax.tree.map(fn, updates, tau)


def _unzip(tree_of_pairs: Any, like: Any) -> tuple[Any, Any]:
    return jax.tree.transpose(jax.tree.structure(like), jax.tree.structure((0, 0)), tree_of_pairs)


def clip_coordinatewise(
    threshold: Threshold, *, track_clip_fraction: bool = True
) -> optax.GradientTransformation:
    r"""Clips every coordinate to ``[-tau_i, tau_i]`` (CClip).

    .. math:: \hat u_i = \min\left(1, \frac{\tau_i}{|u_i|}\right) u_i

    With momentum in front this is CClip of Zhang et al. (2020): each
    coordinate has its own threshold, and under coordinate-wise heavy-tailed
    noise with scales ``B_i`` the error bound scales with ``||B||_2^2`` instead
    of GClip's ``d ||B||_alpha^2``.

    Args:
      threshold: ``tau >= 0``: a float for all coordinates, a pytree of floats
        or arrays matching the params (one threshold per leaf or per
        element), or a schedule of the step count returning either.
      track_clip_fraction: keyword-only; compute ``state.clip_fraction`` at
        every step. The count is a reduction that XLA's CPU backend does not
        fuse with the clip, so it costs a parameter-sized temporary and about
        2x the step time there (``docs/performance.md``); ``False`` leaves the
        field at 0.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`ClipCoordinatewiseState` (the fraction of clipped coordinates
      is in ``state.clip_fraction``).

    Raises:
      ValueError: at construction for a negative or non-finite threshold; at
        ``init`` for a threshold tree that does not match the params.

    Example:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.clip_coordinatewise({"w": jnp.array([1.0, 10.0])})
      >>> s = tx.init({"w": jnp.zeros(2)})
      >>> u, s = tx.update({"w": jnp.array([-3.0, 3.0])}, s)
      >>> u["w"].tolist(), float(s.clip_fraction)
      ([-1.0, 3.0], 0.5)
    """
    _checks.check_threshold_leaves("threshold", threshold)

    def init_fn(params):
        _check_threshold_tree(threshold, params)
        return ClipCoordinatewiseState(
            count=jnp.zeros([], jnp.int32), clip_fraction=jnp.zeros([], jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        tau = _value(threshold, state.count)
        clipped, mask = _unzip(_map_threshold(coordinate_clip, updates, tau), updates)
        fraction = fraction_true(mask) if track_clip_fraction else state.clip_fraction
        return clipped, ClipCoordinatewiseState(
            count=optax.safe_increment(state.count), clip_fraction=fraction
        )

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# The alpha-moment threshold estimator and ACClip
# ---------------------------------------------------------------------------


class AlphaMomentThresholdState(NamedTuple):
    """State of :func:`estimate_alpha_moment_threshold`.

    Attributes:
      count: number of updates seen.
      tau: the per-coordinate threshold ``tau_k`` itself (not ``tau_k^alpha``).
    """

    count: jax.Array
    tau: optax.Updates


def alpha_moment_update(tau: jax.Array, g: jax.Array, decay: Any, alpha: Any) -> jax.Array:
    r"""One step of ``tau^alpha = decay * tau^alpha + (1 - decay) |g|^alpha``, overflow-safe."""
    g32 = jnp.abs(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
    return power_mean(tau.astype(g32.dtype), g32, decay, alpha)


def _first_step_decay(decay: Any, count: jax.Array, seeded: bool) -> Any:
    # Seeding tau_0 = |g_1| is the same as running the first EMA step with
    # decay 0, which keeps the seeding a scalar select, not a per-element one.
    return jnp.where(count == 0, 0.0, decay) if seeded else decay


def _init_threshold(params: Any, initial_threshold: Any) -> Any:
    fill = 0.0 if initial_threshold is None else initial_threshold
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), fill, jnp.float32), params)


def estimate_alpha_moment_threshold(
    decay: Any = 0.99, alpha: Any = 1.0, initial_threshold: Any = 0.0
) -> optax.GradientTransformation:
    r"""Tracks ACClip's per-coordinate threshold; passes updates through unchanged.

    .. math:: \tau_k^\alpha = \beta_2 \tau_{k-1}^\alpha + (1 - \beta_2) |g_k|^\alpha

    ``tau_k`` estimates the coordinate-wise alpha-moment ``E[|g|^alpha]^(1/alpha)``
    (``B`` in Assumption 2 of Zhang et al., 2020). Put it first in a chain to
    watch that statistic of the raw gradient; :func:`scale_by_acclip` uses the
    same update to set its clipping thresholds.

    The state stores ``tau`` rather than ``tau^alpha`` and updates it as a
    weighted power mean, so ``|g|^alpha`` is never formed and cannot overflow.

    Args:
      decay: ``beta_2`` in ``[0, 1)``.
      alpha: moment order, ``> 0`` (the paper uses 1; 2 gives an RMS).
      initial_threshold: ``tau_0 >= 0`` (default 0); ``None`` seeds it with the first
        gradient's magnitude, ``tau_1 = |g_1|`` (see ``docs/design.md``).

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`AlphaMomentThresholdState`.
    """
    _checks.check_decay("decay", decay)
    _checks.check_positive("alpha", alpha)
    if initial_threshold is not None:
        _checks.check_threshold_leaves("initial_threshold", initial_threshold)

    def init_fn(params):
        return AlphaMomentThresholdState(
            count=jnp.zeros([], jnp.int32), tau=_init_threshold(params, initial_threshold)
        )

    def update_fn(updates, state, params=None):
        del params
        d = _first_step_decay(decay, state.count, initial_threshold is None)
        tau = jax.tree.map(lambda t, g: alpha_moment_update(t, g, d, alpha), state.tau, updates)
        return updates, AlphaMomentThresholdState(optax.safe_increment(state.count), tau)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByACClipState(NamedTuple):
    """State of :func:`scale_by_acclip`.

    Attributes:
      count: number of updates seen.
      mu: momentum ``m_k`` (``mu_dtype``, float32 by default).
      tau: per-coordinate threshold ``tau_k`` (float32).
      rms: ``sqrt(v_k)``, the RMS of the raw gradient, when ``rms_scale=True``;
        ``None`` otherwise.
      eps: the ``eps`` of the clip, kept so the statistics below can be derived.
    """

    count: jax.Array
    mu: optax.Updates
    tau: optax.Updates
    rms: optax.Updates | None
    eps: jax.Array

    @property
    def clip_fraction(self) -> jax.Array:
        """Fraction of coordinates clipped at the last step.

        Derived from the state instead of stored: step ``k`` clipped coordinate
        ``i`` exactly when ``|m_k,i| + eps > tau_k,i`` and ``m_k,i != 0``, and both
        are in the state. Computing it inside every step cost an unfused
        reduction pass (2.3x the step time on CPU); here it costs nothing until
        read. With a narrow ``mu_dtype`` the rounding of the stored momentum can
        move a coordinate that sits at the threshold.
        """
        mask = jax.tree.map(
            lambda m, t: (jnp.abs(m.astype(jnp.float32)) + self.eps > t) & (m != 0),
            self.mu,
            self.tau,
        )
        return fraction_true(mask)


def scale_by_acclip(
    b1: Any = 0.9,
    b2: Any = 0.99,
    alpha: Any = 1.0,
    eps: Any = 1e-5,
    initial_threshold: Any = 0.0,
    mu_dtype: Any = None,
    *,
    rms_scale: bool = False,
) -> optax.GradientTransformation:
    r"""The ACClip direction: momentum clipped at an adaptive per-coordinate threshold.

    .. math::

        m_k &= \beta_1 m_{k-1} + (1 - \beta_1) g_k \\
        \tau_k^\alpha &= \beta_2 \tau_{k-1}^\alpha + (1 - \beta_2) |g_k|^\alpha \\
        \hat g_k &= \min\left(\frac{\tau_k}{|m_k| + \epsilon}, 1\right) m_k

    With ``rms_scale=True`` the clipped momentum is further divided by
    ``sqrt(v_k) + eps``, ``v_k = beta_2 v_{k-1} + (1 - beta_2) g_k^2`` (the
    RMS-scaled form, which lives at Adam's learning rates; no bias correction,
    like the rest of ACClip).

    Why this is one transform and not an ``optax.chain``: the threshold and
    (with ``rms_scale``) the second moment observe the *raw* gradient, while
    the clip acts on the *momentum*. A chain hands each link only the previous
    link's output, so no link after the momentum could see ``g_k``. The
    transform therefore forks ``g_k`` into the same three pieces the package
    exports on their own: :func:`ema_update` (as in :func:`ema_momentum`),
    :func:`alpha_moment_update` (as in :func:`estimate_alpha_moment_threshold`)
    and :func:`coordinate_clip` (as in :func:`clip_coordinatewise`).

    Args:
      b1: momentum decay in ``[0, 1)``.
      b2: threshold (and RMS) decay in ``[0, 1)``.
      alpha: moment order of the threshold, ``> 0``; 1 is the paper's default.
      eps: ``>= 0``, added to ``|m|`` in the clip (and to the RMS).
      initial_threshold: ``tau_0 >= 0`` (default 0), or ``None`` to seed
        ``tau_1 = |g_1|``.
      mu_dtype: dtype of the stored momentum; float32 if ``None``.
      rms_scale: divide by the RMS of the raw gradient (keyword-only).

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByACClipState`.

    References:
      Zhang, Karimireddy, Veit, Kim, Reddi, Kumar, Sra, 2020,
      "Why are Adaptive Methods Good for Attention Models?",
      https://arxiv.org/abs/1912.03194 (eq. ACClip).
    """
    _checks.check_decay("b1", b1)
    _checks.check_decay("b2", b2)
    _checks.check_positive("alpha", alpha)
    _checks.check_nonnegative("eps", eps)
    if initial_threshold is not None:
        _checks.check_threshold_leaves("initial_threshold", initial_threshold)
    dtype = _state_dtype(mu_dtype)
    seeded = initial_threshold is None

    def init_fn(params):
        return ScaleByACClipState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=dtype),
            tau=_init_threshold(params, initial_threshold),
            rms=optax.tree.zeros_like(params, dtype=jnp.float32) if rms_scale else None,
            eps=jnp.asarray(eps, jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        d2 = _first_step_decay(b2, state.count, seeded)
        mu = jax.tree.map(lambda g, m: ema_update(g, m, b1), updates, state.mu)
        tau = jax.tree.map(lambda t, g: alpha_moment_update(t, g, d2, alpha), state.tau, updates)
        direction, _ = _unzip(
            jax.tree.map(lambda m, t: coordinate_clip(m, t, eps), mu, tau), updates
        )
        rms = None
        if rms_scale:
            rms = jax.tree.map(lambda r, g: alpha_moment_update(r, g, b2, 2.0), state.rms, updates)
            direction = jax.tree.map(lambda u, r: u / (r + eps), direction, rms)
        out = jax.tree.map(lambda u, g: u.astype(g.dtype), direction, updates)
        return out, ScaleByACClipState(
            count=optax.safe_increment(state.count),
            mu=optax.tree.cast(mu, dtype),
            tau=tau,
            rms=rms,
            eps=jnp.asarray(eps, jnp.float32),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def clip_fraction(opt_state: Any) -> jax.Array:
    """Fraction of coordinates clipped at the last step, read from any optimizer state.

    Finds the first ACClip (:class:`ScaleByACClipState`) or coordinate-wise
    clipping (:class:`ClipCoordinatewiseState`) state inside ``opt_state``, however
    deeply chained or wrapped (``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ...), and returns its ``clip_fraction``.

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
    kinds = (ScaleByACClipState, ClipCoordinatewiseState)
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds)):
        if isinstance(leaf, kinds):
            return leaf.clip_fraction
    raise ValueError(
        "`opt_state` holds no ACClip or coordinate-wise clipping state "
        "to read a clip fraction from."
    )
