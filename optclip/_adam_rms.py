"""Adam with its second moment kept on its root: Muon's AdamW link, finite for any finite input."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optclip._numerics import denominator_eps
from optclip._spam import moment_update
from optclip._types import Scalar


class ScaleByAdamRmsState(NamedTuple):
    """State of :func:`scale_by_adam_rms`: the step count, the first moment and ``sqrt(v)``."""

    count: chex.Array
    mu: optax.Updates
    rms: optax.Updates


def scale_by_adam_rms(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    *,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""``optax.scale_by_adam`` with ``sqrt(v)`` stored instead of ``v``.

    .. math::

        m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \quad
        r_k = \sqrt{\beta_2 r_{k-1}^2 + (1 - \beta_2) g_k^2}, \quad
        u_k = \frac{\hat m_k}{r_k / \sqrt{1 - \beta_2^k} + \epsilon}

    with ``r`` updated on the exponent-scaled root (``optclip._spam.moment_update``), so no
    ``g^2`` is formed: a gradient near float32's maximum leaves a finite state, where optax's
    ``v`` overflows above about 1.8e19. The same iterates as optax's Adam to float32 rounding
    (``tests/test_lmo_alias.py``); ``nesterov`` as optax's.

    Args:
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the bias-corrected root.
      nesterov: keyword-only; optax's Nesterov form of the first moment.
      mu_dtype: keyword-only; the first moment's dtype (the gradient's if ``None``).

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByAdamRmsState`.
    """

    def init(params):
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype), params)
        rms = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
        return ScaleByAdamRmsState(jnp.zeros([], jnp.int32), mu, rms)

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        mu = jax.tree.map(lambda g, m: (b1 * m + (1.0 - b1) * g).astype(m.dtype), updates, state.mu)
        rms = jax.tree.map(
            lambda g, r: moment_update(r, jnp.abs(g).astype(jnp.float32), b2), updates, state.rms
        )
        root = jnp.sqrt(1.0 - jnp.asarray(b2, jnp.float32) ** t)
        floor = denominator_eps(eps)

        def step(g, m, r):
            if nesterov:
                m_hat = b1 * m / (1.0 - b1 ** (t + 1)) + (1.0 - b1) * g / (1.0 - b1**t)
            else:
                m_hat = m / (1.0 - b1**t)
            return (m_hat / (r / root + floor)).astype(g.dtype)

        out = jax.tree.map(step, updates, mu, rms)
        return out, ScaleByAdamRmsState(count, mu, rms)

    return optax.GradientTransformation(init, update)
