"""Adam (RMSProp) seen as adaptive coordinate-wise clipping."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from optclip import _checks
from optclip._types import Scalar


class ClippingEquivalent(NamedTuple):
    """Step size ``eta_k`` and per-coordinate threshold ``tau_k`` of the clipping method."""

    learning_rate: chex.ArrayTree
    threshold: chex.ArrayTree


def adam_as_clipping(
    learning_rate: Scalar, b2: Scalar, eps: Scalar, nu: chex.ArrayTree
) -> ClippingEquivalent:
    r"""Maps an RMSProp state to the clipped-SGD step that matches it within a factor 2.

    RMSProp (Adam with ``b1 = 0``) with learning rate ``a`` takes the step
    ``h_adam g`` with ``h_adam = a / (eps + sqrt(b2 nu + (1 - b2) g^2))``, where
    ``nu`` is the second moment *before* the current gradient. Clipped SGD
    takes ``h_clip g`` with ``h_clip = eta min(tau / |g|, 1)``. With

    .. math::

        D = \epsilon + \sqrt{\beta_2 \nu}, \qquad
        \eta = \frac{a}{D}, \qquad \tau = \frac{D}{\sqrt{1 - \beta_2}},

    every coordinate satisfies ``h_clip / 2 <= h_adam <= h_clip``, hence the
    paper's ``h_clip / 2 <= h_adam <= 2 h_clip``.

    The paper (Zhang et al., 2020, §3.1) prints ``eta = 2a / D``. With that
    choice ``h_clip / 4 <= h_adam <= h_clip / 2`` instead, and the stated lower
    bound fails, e.g. for ``sqrt(b2 nu) = sqrt(1 - b2) |g|`` and ``eps -> 0``
    (``h_adam = h_clip / (2 sqrt 2)``). ``docs/design.md`` has the derivation.

    Args:
      learning_rate: RMSProp's ``a > 0``.
      b2: in ``[0, 1)``.
      eps: ``> 0`` (with ``eps = 0`` and ``nu = 0`` the map is singular).
      nu: pytree of second moments ``>= 0``.

    Returns:
      :class:`ClippingEquivalent` with pytrees shaped like ``nu``.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, §3.1.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> eq = optclip.adam_as_clipping(1e-3, b2=0.99, eps=1e-8, nu={"w": jnp.ones(2)})
      >>> eq.threshold["w"].shape
      (2,)
    """
    _checks.check_positive("learning_rate", learning_rate)
    _checks.check_decay("b2", b2)
    # D = eps + sqrt(b2 nu) must be positive: at D = 0 the map is eta = inf, tau = 0.
    _checks.check_positive("eps", eps)
    d = jax.tree.map(lambda n: eps + jnp.sqrt(b2 * n), nu)
    return ClippingEquivalent(
        learning_rate=jax.tree.map(lambda x: learning_rate / x, d),
        threshold=jax.tree.map(lambda x: x / jnp.sqrt(1.0 - b2), d),
    )
