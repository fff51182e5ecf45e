"""ACClip: momentum clipped coordinate-wise at the adaptive alpha-moment threshold."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._acclip_threshold import (
    alpha_moment_update,
    check_robust,
    first_step_decay,
    init_threshold,
    robust_clip_tree,
)
from optclip._coordinate_clip import coordinate_clip
from optclip._momentum import ema_update
from optclip._numerics import denominator_eps, fraction_true, momentum_zeros
from optclip._trees import unzip
from optclip._types import Scalar


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

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: optax.Updates
    tau: optax.Updates
    rms: optax.Updates | None
    eps: jax.Array

    @property
    def clip_fraction(self) -> jax.Array:
        """Fraction of coordinates clipped at the last step.

        Derived from the state instead of stored: step ``k`` clipped coordinate
        ``i`` exactly when ``|m_k,i| + eps > tau_k,i`` and ``m_k,i != 0``, and both
        are in the state. Computing it inside every step would cost an unfused
        reduction pass (``docs/performance.md``); here it costs nothing until
        read. With a narrow ``mu_dtype`` the rounding of the stored momentum can
        move a coordinate that sits at the threshold.
        """
        mask = jax.tree.map(
            lambda m, t: (jnp.abs(m).astype(jnp.float32) + self.eps > t) & (m != 0),
            self.mu,
            self.tau,
        )
        return fraction_true(mask)


def _update(
    updates, state, params=None, *, b1, b2, alpha, eps, initial_threshold, rms_scale, robust,
    spike_factor,
):  # fmt: skip
    """One step of :func:`scale_by_acclip` with its hyperparameters."""
    del params
    seeded = initial_threshold is None
    _gradient_checks.check_like(updates, state.mu, "the momentum")
    d2 = first_step_decay(b2, state.count, seeded)
    raw, tau = updates, state.tau
    spike_clip = lambda g, t: robust_clip_tree(
        g, t, state.count, b2, alpha, initial_threshold, spike_factor
    )
    if robust:
        updates = spike_clip(raw, tau)
    mu = jax.tree.map(lambda g, m: ema_update(g, m, b1), updates, state.mu)
    rms = None
    if rms_scale:
        if robust:
            # Each moment recomputes the pre-clip, one after the other, instead of sharing it
            # (XLA:CPU writes a shared one out), and the new threshold comes after every read
            # of the old one, so it is written in place (docs/design.md, "SPAM's step in place").
            mu, tau = jax.lax.optimization_barrier((mu, tau))
            updates = spike_clip(raw, tau)
        rms = jax.tree.map(lambda r, g: alpha_moment_update(r, g, b2, 2.0), state.rms, updates)
    if robust:
        (mu, rms), tau = jax.lax.optimization_barrier(((mu, rms), tau))
        updates = spike_clip(raw, tau)
    tau = jax.tree.map(lambda t, g: alpha_moment_update(t, g, d2, alpha), tau, updates)
    direction, _ = unzip(jax.tree.map(lambda m, t: coordinate_clip(m, t, eps), mu, tau), updates)
    if rms is not None:
        floor = denominator_eps(eps)
        direction = jax.tree.map(lambda u, r: u / (r + floor), direction, rms)
    out = jax.tree.map(lambda u, g: u.astype(g.dtype), direction, raw)
    return out, ScaleByACClipState(
        count=optax.safe_increment(state.count),
        mu=optax.tree.cast_like(mu, state.mu),
        tau=optax.tree.cast_like(tau, state.tau),
        rms=None if rms is None else optax.tree.cast_like(rms, state.rms),
        eps=jnp.asarray(eps, jnp.float32),
    )


def scale_by_acclip(
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    alpha: Scalar = 1.0,
    eps: Scalar = 1e-5,
    initial_threshold: Scalar | None = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    rms_scale: bool = False,
    robust: bool = False,
    spike_factor: Scalar = 4.0,
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

    With ``robust=True`` (optclip's own form, ``docs/spikes.md``) each
    coordinate of ``g_k`` is first clipped at ``c = spike_factor`` times the
    previous threshold's estimate of its scale, ``tau_{k-1}``, debiased by
    ``(1 - beta_2^(k-1))^(1/alpha)`` when ``tau_0 = 0`` (no clip without an
    estimate: a first step, or a coordinate whose gradient has been zero so
    far), and the clipped gradient replaces ``g_k`` in the momentum, the
    threshold and the RMS: a spike raises neither its own threshold nor the
    momentum. The momentum clip stays; ``spike_factor = inf`` is ACClip.

    One transform, not a chain: the threshold and the RMS read the *raw*
    gradient while the clip acts on the *momentum*, so it forks ``g_k`` into
    :func:`ema_update`, :func:`alpha_moment_update` and :func:`coordinate_clip`
    (``docs/architecture.md``).

    Args:
      b1: momentum decay in ``[0, 1)``.
      b2: threshold (and RMS) decay in ``[0, 1)``.
      alpha: moment order of the threshold in ``[1, 2]``; 1 is the paper's default.
      eps: ``>= 0``, added to ``|m|`` in the clip (and to the RMS).
      initial_threshold: ``tau_0 >= 0`` (default 0), or ``None`` to seed
        ``tau_1 = |g_1|``.
      mu_dtype: dtype of the stored momentum; float32 if ``None``.
      rms_scale: divide by the RMS of the raw gradient (keyword-only).
      robust: keyword-only; clip ``g_k`` at the previous threshold first.
      spike_factor: keyword-only, ``>= 1``, the ``c`` of ``robust``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByACClipState`.

    References:
      Zhang et al., 2020, "Why are Adaptive Methods Good for Attention Models?",
      https://arxiv.org/abs/1912.03194 (eq. ACClip).

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optax.chain(optclip.scale_by_acclip(), optax.scale_by_learning_rate(0.1))
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state)
    """
    _checks.check_decay("b1", b1)
    _checks.check_decay("b2", b2)
    _checks.check_range("alpha", alpha, 1.0, 2.0)
    _checks.check_nonnegative("eps", eps)
    _checks.check_flag("rms_scale", rms_scale)
    check_robust(robust, spike_factor)
    if initial_threshold is not None:
        _checks.check_threshold_leaves("initial_threshold", initial_threshold)
    dtype = _checks.state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return ScaleByACClipState(
            count=jnp.zeros([], jnp.int32),
            mu=momentum_zeros(params, dtype),
            tau=init_threshold(params, initial_threshold),
            rms=optax.tree.zeros_like(params, dtype=jnp.float32) if rms_scale else None,
            eps=jnp.asarray(eps, jnp.float32),
        )

    hp = dict(b1=b1, b2=b2, alpha=alpha, eps=eps, initial_threshold=initial_threshold)
    flags = dict(rms_scale=rms_scale, robust=robust, spike_factor=spike_factor)
    return optax.GradientTransformation(init_fn, functools.partial(_update, **hp, **flags))
