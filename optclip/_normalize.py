"""Normalized directions and the momentum/gradient clipping mix."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._momentum import ema_update
from optclip._numerics import global_norm_parts, momentum_zeros
from optclip._scaled import divide, norm_value, plus, scale
from optclip._types import Scalar, Threshold, at_step


class NormalizeByGlobalNormState(NamedTuple):
    """State of :func:`normalize_by_global_norm`: the last input's global norm."""

    norm: jax.Array


def normalize_by_global_norm(beta: Scalar = 0.0) -> optax.GradientTransformation:
    r"""Divides the update by its global norm plus ``beta``.

    .. math:: \hat u = \frac{u}{\|u\| + \beta}

    ``beta = 0`` gives the unit direction ``u / ||u||`` (normalized momentum
    SGD after :func:`ema_momentum`); ``beta > 0`` gives the normalized GD step
    of Zhang et al. (2020b), ``h_n = eta / (||g|| + beta)``. A zero update stays
    zero (``0/0 = 0``); the norm is overflow-safe, and a finite update whose
    norm is beyond float32's range still gives the unit direction.

    Args:
      beta: ``>= 0``.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`NormalizeByGlobalNormState`.
    """
    _checks.check_nonnegative("beta", beta)

    def init_fn(params):
        del params
        return NormalizeByGlobalNormState(norm=jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        parts = global_norm_parts(updates)
        denominator = plus(parts, beta)
        # 1 / (||u|| + beta) as an exact exponent shift and a normal factor, so a norm beyond
        # float32's range still gives the unit direction. A zero norm divides by 1 (the update
        # is zero); an inf entry makes the factor 0 and the entry inf * 0 = NaN (the rule).
        shift, inv = divide(1.0, denominator, ~(denominator.mantissa <= 0))
        out = jax.tree.map(lambda u: scale(u, shift, inv).astype(u.dtype), updates)
        return out, NormalizeByGlobalNormState(norm=norm_value(parts))

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByClipMomentumState(NamedTuple):
    """State of :func:`scale_by_clip_momentum`.

    Attributes:
      count: number of updates seen (drives a scheduled threshold).
      mu: momentum ``m_t``.
      momentum_norm: ``||m_t||`` before clipping.
      gradient_norm: ``||g_t||`` before clipping.
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: optax.Updates
    momentum_norm: jax.Array
    gradient_norm: jax.Array


def scale_by_clip_momentum(
    threshold: Threshold,
    b1: Scalar = 0.9,
    nu: Scalar = 1.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""A ``nu``-mix of the clipped momentum and the clipped gradient.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \hat g_t &= \nu \min\left(1, \frac{\tau}{\|m_t\|}\right) m_t
                 + (1 - \nu) \min\left(1, \frac{\tau}{\|g_t\|}\right) g_t

    Multiplied by a learning rate ``eta`` with ``tau = gamma / eta`` this is the
    update of SGDClipGrad (``nu = 0``) and SGDClipMomentum (``nu = 1``) of
    Zhang, Jin, Fang and Wang (2020), Algorithm 1, with the hard ``min``;
    :func:`optclip.clip_momentum_sgd` builds it that way.

    Args:
      threshold: ``tau >= 0`` (float or schedule).
      b1: momentum decay in ``[0, 1)``.
      nu: mixing weight in ``[0, 1]``.
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`ScaleByClipMomentumState`.
    """
    _checks.check_threshold_leaves("threshold", threshold)
    _checks.check_decay("b1", b1)
    _checks.check_range("nu", nu, 0.0, 1.0)
    dtype = _checks.state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return ScaleByClipMomentumState(
            count=jnp.zeros([], jnp.int32),
            mu=momentum_zeros(params, dtype),
            momentum_norm=jnp.zeros([], jnp.float32),
            gradient_norm=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.mu, "the momentum")
        tau = jnp.asarray(at_step(threshold, state.count), jnp.float32)
        mu = jax.tree.map(lambda g, m: ema_update(g, m, b1), updates, state.mu)
        m_parts, g_parts = global_norm_parts(mu), global_norm_parts(updates)
        m_norm, g_norm = norm_value(m_parts), norm_value(g_parts)
        # Each clip factor as an exact exponent shift and a normal factor (see
        # clip_by_global_norm); where a norm is not clipped the pair is (0, 1).
        m_shift, m_clip = divide(tau, m_parts, m_norm > tau)
        g_shift, g_clip = divide(tau, g_parts, g_norm > tau)
        m_factor, g_factor = nu * m_clip, (1.0 - nu) * g_clip

        def mix(m, g):
            wide = g.astype(m.dtype)
            return (scale(m, m_shift, m_factor) + scale(wide, g_shift, g_factor)).astype(g.dtype)

        out = jax.tree.map(mix, mu, updates)
        return out, ScaleByClipMomentumState(
            count=optax.safe_increment(state.count),
            mu=optax.tree.cast_like(mu, state.mu),
            momentum_norm=m_norm,
            gradient_norm=g_norm,
        )

    return optax.GradientTransformation(init_fn, update_fn)
