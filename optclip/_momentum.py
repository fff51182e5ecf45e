"""Exponential-moving-average momentum, the statistic every clipping method of the papers clips."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import momentum_zeros
from optclip._types import Scalar


class EmaMomentumState(NamedTuple):
    """State of :func:`ema_momentum`: the running average ``mu``."""

    mu: optax.Updates


def ema_update(g: jax.Array, mu: jax.Array, decay: Scalar) -> jax.Array:
    """``decay * mu + (1 - decay) * g`` computed in float32 (or wider).

    Args:
      g: the incoming update (any float dtype).
      mu: the stored average.
      decay: ``beta_1``.

    Returns:
      The new average, in float32 or ``g``'s dtype if wider.
    """
    g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    return jnp.asarray(decay * mu.astype(g32.dtype) + (1.0 - decay) * g32)


def ema_momentum(
    decay: Scalar = 0.9, mu_dtype: jax.typing.DTypeLike | None = None
) -> optax.GradientTransformation:
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

    References:
      Zhang, Karimireddy, Veit, Kim, Reddi, Kumar, Sra, 2020,
      https://arxiv.org/abs/1912.03194, Algorithm 1.

    Examples:
      >>> import optax, optclip, jax.numpy as jnp
      >>> tx = optax.chain(optclip.ema_momentum(0.9), optclip.clip_by_global_norm(1.0))
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    _checks.check_decay("decay", decay)
    dtype = _checks.state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return EmaMomentumState(mu=momentum_zeros(params, dtype))

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.mu, "the momentum")
        mu = jax.tree.map(lambda g, m: ema_update(g, m, decay), updates, state.mu)
        out = jax.tree.map(lambda m, g: m.astype(g.dtype), mu, updates)
        return out, EmaMomentumState(mu=optax.tree.cast_like(mu, state.mu))

    return optax.GradientTransformation(init_fn, update_fn)
