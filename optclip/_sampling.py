"""Heavy-tailed samplers shared by the diagnostics and the test problems."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def symmetric_alpha_stable(key: jax.Array, alpha: float, shape: Sequence[int]) -> jax.Array:
    r"""Standard symmetric alpha-stable samples by the Chambers-Mallows-Stuck method.

    .. math:: X = \frac{\sin(\alpha V)}{\cos(V)^{1/\alpha}}
              \left(\frac{\cos((1-\alpha)V)}{W}\right)^{(1-\alpha)/\alpha}

    with ``V ~ U(-pi/2, pi/2)`` and ``W ~ Exp(1)``; ``alpha = 2`` is a Gaussian
    with variance 2, ``alpha = 1`` a Cauchy. The reference distribution of
    [000] Fig. 2 and the test data for :func:`optclip.diagnostics.tail_index`.

    Args:
      key: a PRNG key.
      alpha: the tail index in ``(0, 2]``.
      shape: the output shape.

    Returns:
      float32 samples of ``shape``.
    """
    if not 0 < alpha <= 2:
        raise ValueError(f"`alpha` must be in (0, 2], got {alpha}.")
    kv, kw = jax.random.split(key)
    v = jax.random.uniform(kv, shape, minval=-jnp.pi / 2, maxval=jnp.pi / 2)
    w = jax.random.exponential(kw, shape)
    if alpha == 1.0:
        return jnp.tan(v)
    return (
        jnp.sin(alpha * v)
        / jnp.cos(v) ** (1 / alpha)
        * (jnp.cos((1 - alpha) * v) / w) ** ((1 - alpha) / alpha)
    )


def student_t(key: jax.Array, df: float, shape: Sequence[int]) -> jax.Array:
    r"""Student-t(``df``) samples by Bailey's polar method, without rejection.

    For ``(u, v)`` uniform on the unit disc and ``w = u^2 + v^2``,
    ``u sqrt(df (w^(-2/df) - 1) / w)`` is Student-t distributed (Bailey, 1994,
    Math. Comp. 62). Drawing the point in polar form, ``w`` uniform on ``(0, 1]``
    and angle ``theta`` uniform, this is ``cos(theta) sqrt(df (w^(-2/df) - 1))``:
    two uniforms per sample, where :func:`jax.random.t` runs a gamma rejection
    sampler. float32 uniforms put ``w >= 2^-23``, so
    samples stop at about ``sqrt(df) 2^(23/df)`` (5e4 for ``df = 1.5``), a tail
    of probability ~1e-7.

    Args:
      key: a PRNG key.
      df: degrees of freedom ``> 0`` (infinite variance for ``df <= 2``).
      shape: the output shape.

    Returns:
      float32 samples of ``shape``.
    """
    if not df > 0:
        raise ValueError(f"`df` must be > 0, got {df}.")
    k1, k2 = jax.random.split(key)
    w = 1.0 - jax.random.uniform(k1, tuple(shape), jnp.float32)  # (0, 1]
    theta = jax.random.uniform(k2, tuple(shape), jnp.float32, 0.0, 2.0 * np.pi)
    return jnp.cos(theta) * jnp.sqrt(df * (w ** (-2.0 / df) - 1.0))
