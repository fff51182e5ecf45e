"""Sign-based directions: Signum and generalized SignSGD."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._momentum import ema_momentum
from optclip._numerics import power_mean, safe_divide
from optclip._trees import unzip
from optclip._types import Scalar


def scale_by_sign() -> optax.GradientTransformation:
    r"""Replaces each coordinate by its sign, ``u_i / |u_i|``, with ``0/0 = 0``.

    Written as a division rather than :func:`jax.numpy.sign` so that an
    infinite coordinate becomes NaN (``inf / inf``) instead of ``+-1``: the
    package rule keeps non-finite input visible to :func:`optax.apply_if_finite`.
    After :func:`ema_momentum` this is the Signum direction.

    Returns:
      A stateless :class:`optax.GradientTransformation`.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.scale_by_sign()
      >>> u, _ = tx.update({"w": jnp.array([-3.0, 0.0, 2.0])}, tx.init(None))
      >>> u["w"].tolist()
      [-1.0, 0.0, 1.0]
    """

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        return jax.tree.map(lambda u: safe_divide(u, jnp.abs(u)), updates), state

    # optax.identity's init: optax.init_empty_state needs optax 0.2.6.
    return optax.GradientTransformation(optax.identity().init, update_fn)


class RunningRmsState(NamedTuple):
    """State of :func:`normalize_by_running_rms`: ``rms = sqrt(v)`` (float32)."""

    rms: optax.Updates


def normalize_by_running_rms(
    decay: Scalar = 0.99, eps: Scalar = 0.0
) -> optax.GradientTransformation:
    r"""Divides each coordinate by the running RMS of that coordinate, current step included.

    .. math::

        v_t = \beta_2 v_{t-1} + (1 - \beta_2) u_t^2, \qquad
        \hat u_t = \frac{u_t}{\sqrt{v_t} + \epsilon}

    Since ``v_t >= (1 - beta_2) u_t^2``, ``|hat u_t| <= 1 / sqrt(1 - beta_2)``:
    the output is bounded without clipping. The state stores ``sqrt(v_t)``
    and updates it in ``hypot`` form, so ``u^2`` is never formed (no overflow
    for ``|u|`` up to float32's maximum, no flush to zero for tiny ``u``).
    ``0/0`` (a coordinate that has only ever been 0) gives 0.

    Args:
      decay: ``beta_2`` in ``[0, 1)``; 0 gives the sign of ``u``.
      eps: ``>= 0`` added to the RMS; the paper has none (0).

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`RunningRmsState`.
    """
    _checks.check_decay("decay", decay)
    _checks.check_nonnegative("eps", eps)

    def init_fn(params):
        return RunningRmsState(rms=optax.tree.zeros_like(params, dtype=jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.rms, "the running RMS")

        def leaf(u, r):
            u32 = u.astype(jnp.promote_types(u.dtype, jnp.float32))
            r = power_mean(r, jnp.abs(u32), decay, 2.0)
            return safe_divide(u32, r + eps).astype(u.dtype), r

        pairs = jax.tree.map(leaf, updates, state.rms)
        out, rms = unzip(pairs, updates)
        return out, RunningRmsState(rms=optax.tree.cast_like(rms, state.rms))

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_generalized_sign(
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    eps: Scalar = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Generalized SignSGD direction (Crawshaw et al., 2022, Algorithm 1).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) m_t^2 \\
        \hat g_t &= m_t / \sqrt{v_t}

    Unlike Adam, ``v`` averages the squared *momentum*, so the direction is a
    plain chain: ``optax.chain(ema_momentum(b1), normalize_by_running_rms(b2))``.
    ``b2 = 0`` gives Signum (``sign(m_t)``), built statelessly after the
    momentum. Every coordinate satisfies ``|hat g_i| <= 1 / sqrt(1 - b2)``.
    The theory (Theorem 1) asks for ``sqrt(b2) < b1``; the defaults follow
    practice (the paper tunes ``b2`` close to 1), not that condition.

    Args:
      b1: momentum decay in ``[0, 1)``.
      b2: decay of the squared-momentum average in ``[0, 1)``.
      eps: ``>= 0`` added to ``sqrt(v)``; 0 as in the paper (0/0 gives 0).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation` (an ``optax.chain``).

    References:
      Crawshaw, Liu, Orabona, Zhang, Zhuang, 2022, "Robustness to Unbounded
      Smoothness of Generalized SignSGD", https://arxiv.org/abs/2208.11195.
    """
    _checks.check_decay("b1", b1)
    _checks.check_decay("b2", b2)
    _checks.check_nonnegative("eps", eps)
    # Signum needs no second-moment state; only a Python or NumPy zero may drop it
    # (docs/design.md, "Zero and the state's structure").
    if _checks.drops_state(b2) and _checks.drops_state(eps):
        return optax.chain(ema_momentum(b1, mu_dtype), scale_by_sign())
    return optax.chain(ema_momentum(b1, mu_dtype), normalize_by_running_rms(b2, eps))
