"""Full optimizers: a direction, optional decoupled weight decay, and a learning rate.

Each is ``optax.chain(direction, optax.add_decayed_weights(wd, mask),
optax.scale_by_learning_rate(lr))``: the weight decay is decoupled (added to
the direction, then scaled by the learning rate, as in AdamW) and is left out
of the chain when it is the number 0, so ``update`` then needs no params.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from optclip import _checks
from optclip._clipping import (
    Threshold,
    clip_by_global_norm,
    clip_coordinatewise,
    ema_momentum,
    scale_by_acclip,
)
from optclip._normalize import normalize_by_global_norm, scale_by_clip_momentum
from optclip._numerics import is_number
from optclip._sign import scale_by_generalized_sign


def _is_zero(x: Any) -> bool:
    return is_number(x) and float(x) == 0.0


def _finish(
    direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
    _checks.check_nonnegative("learning_rate", learning_rate)
    _checks.check_nonnegative("weight_decay", weight_decay)
    links = [direction]
    if not _is_zero(weight_decay):
        links.append(optax.add_decayed_weights(weight_decay, mask))
    links.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*links)


def _with_momentum(
    b1: Any, mu_dtype: Any, then: optax.GradientTransformation
) -> optax.GradientTransformation:
    _checks.check_decay("b1", b1)
    if _is_zero(b1):
        return then
    return optax.chain(ema_momentum(b1, mu_dtype), then)


def acclip(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.99,
    alpha: Any = 1.0,
    eps: Any = 1e-5,
    initial_threshold: Any = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
    *,
    rms_scale: bool = False,
) -> optax.GradientTransformation:
    r"""ACClip: SGD with momentum clipped at adaptive per-coordinate thresholds.

    .. math::

        m_k &= \beta_1 m_{k-1} + (1 - \beta_1) g_k \\
        \tau_k^\alpha &= \beta_2 \tau_{k-1}^\alpha + (1 - \beta_2) |g_k|^\alpha \\
        x_k &= x_{k-1} - \eta \left[\min\left(\frac{\tau_k}{|m_k| + \epsilon}, 1\right) m_k
               + \lambda x_{k-1}\right]

    Two forms, two learning-rate scales (measured on a 255k-parameter character
    transformer, ``docs/acclip.md``):

    * ``acclip(3e-3, rms_scale=True)``: the clipped momentum divided by
      ``sqrt(v_k) + eps`` (``v`` an EMA of ``g^2``), a drop-in for Adam at
      Adam's learning rates (best 3e-3 there, val loss 1.793 vs Adam's 1.802).
    * ``acclip(1.0)``: the printed rule moves each coordinate by at most
      ``eta * tau_k``, an SGD-sized step, so its learning rates are SGD's
      (best 1.0 there, val loss 2.02; already worse at 0.3, 2.19): at an Adam-sized
      ``3e-3`` its steps are over 300 times smaller than at its best rate.

    See :func:`scale_by_acclip`.

    State: momentum (``mu_dtype``, float32 by default) and threshold (float32):
    8 bytes per parameter, 12 with ``rms_scale``. The fraction of coordinates
    clipped at the last step is ``optclip.clip_fraction(state)`` (derived from
    the state at no cost to the step).

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      b1: momentum decay in ``[0, 1)``.
      b2: threshold decay in ``[0, 1)``.
      alpha: moment order ``> 0`` (1 in the paper).
      eps: ``>= 0``.
      initial_threshold: ``tau_0 >= 0`` (default 0: the first ~100 steps are
        clipped hard, which acted as a warm-up and measured best in both forms,
        ``docs/acclip.md``), or ``None`` to seed ``tau_1 = |g_1|``.
      weight_decay: decoupled weight decay ``lambda >= 0``.
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum.
      rms_scale: keyword-only; the Adam-scale RMS-scaled form.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optclip.acclip(0.1)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [0.9800000190734863, 0.9800000190734863, 0.9800000190734863]
    """
    return _finish(
        scale_by_acclip(b1, b2, alpha, eps, initial_threshold, mu_dtype, rms_scale=rms_scale),
        learning_rate,
        weight_decay,
        mask,
    )


def gclip(
    learning_rate: optax.ScalarOrSchedule,
    threshold: Threshold,
    b1: Any = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""GClip: momentum, then global-norm clipping of the momentum.

    .. math::

        m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \qquad
        x_k = x_{k-1} - \eta_k \min\left(1, \frac{\tau_k}{\|m_k\|}\right) m_k

    ``optax.chain(ema_momentum(b1), clip_by_global_norm(threshold))`` then the
    learning rate; ``b1 = 0`` is clipped SGD. ``threshold`` may be a schedule
    (see :mod:`optclip.theory` for the paper's ``tau_k = G k^(1/alpha)``).

    State: 4 bytes per parameter with momentum, 0 without (scalars aside).

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, Algorithm 1.
    """
    return _finish(
        _with_momentum(b1, mu_dtype, clip_by_global_norm(threshold)),
        learning_rate,
        weight_decay,
        mask,
    )


def cclip(
    learning_rate: optax.ScalarOrSchedule,
    threshold: Threshold,
    b1: Any = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
    *,
    track_clip_fraction: bool = True,
) -> optax.GradientTransformation:
    r"""CClip: momentum, then coordinate-wise clipping at fixed thresholds.

    .. math:: x_k = x_{k-1} - \eta_k \min\left(1, \frac{\tau_{k,i}}{|m_{k,i}|}\right) m_{k,i}

    ``threshold`` is a float, a pytree matching the params, or a schedule.
    State: 4 bytes per parameter with momentum, 0 without.
    ``track_clip_fraction=False`` skips the per-step count of clipped
    coordinates (see :func:`clip_coordinatewise` for its cost).

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, eq. (CClip).
    """
    return _finish(
        _with_momentum(
            b1, mu_dtype, clip_coordinatewise(threshold, track_clip_fraction=track_clip_fraction)
        ),
        learning_rate,
        weight_decay,
        mask,
    )


def clipped_gd(
    learning_rate: optax.ScalarOrSchedule,
    gamma: Any,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Clipped gradient descent: ``x -= h g`` with ``h = min(eta, gamma * eta / ||g||)``.

    Equal to ``eta * min(1, gamma / ||g||) g``, i.e. :func:`clip_by_global_norm`
    at ``gamma`` followed by the learning rate. Under (L0, L1)-smoothness, with
    ``eta = 1/(10 L0)`` and ``gamma = min(1/eta, 1/(10 L1 eta))`` it reaches
    ``||grad|| <= eps`` in ``O(L0 Delta / eps^2 + max(1, L1^2) Delta / L0)``
    steps, independently of the gradient bound ``M`` (Zhang et al., 2020b,
    Theorem 3). No state beyond scalars.

    Args:
      learning_rate: ``eta``.
      gamma: ``> 0``, the gradient-norm threshold.
    """
    _checks.check_positive("gamma", gamma)
    return _finish(clip_by_global_norm(gamma), learning_rate, weight_decay, mask)


def normalized_gd(
    learning_rate: optax.ScalarOrSchedule,
    beta: Any,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Normalized gradient descent: ``x -= eta / (||g|| + beta) * g``.

    Within a factor 2 of :func:`clipped_gd` when ``gamma * eta_c = eta_n`` and
    ``eta_c = eta_n / beta`` (Zhang et al., 2020b, §3.1). No state beyond scalars.

    Args:
      learning_rate: ``eta``.
      beta: ``> 0``.
    """
    _checks.check_positive("beta", beta)
    return _finish(normalize_by_global_norm(beta), learning_rate, weight_decay, mask)


def normalized_momentum_sgd(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Normalized SGD with momentum: ``m = b1 m + (1 - b1) g``, ``x -= eta m / ||m||``.

    The baseline of Crawshaw et al. (2022), after Jin et al. (2021). A zero
    momentum gives a zero step. State: 4 bytes per parameter.
    """
    _checks.check_decay("b1", b1)
    return _finish(
        optax.chain(ema_momentum(b1, mu_dtype), normalize_by_global_norm(0.0)),
        learning_rate,
        weight_decay,
        mask,
    )


def clip_momentum_sgd(
    learning_rate: optax.ScalarOrSchedule,
    gamma: Any,
    b1: Any = 0.9,
    nu: Any = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""SGDClipGrad / SGDClipMomentum (Zhang, Jin, Fang, Wang, 2020, Algorithm 1).

    .. math::

        x_{t+1} = x_t - \left[\nu \min\left(\eta, \frac{\gamma}{\|m_t\|}\right) m_t
                 + (1 - \nu) \min\left(\eta, \frac{\gamma}{\|g_t\|}\right) g_t\right]

    ``nu = 1`` clips the momentum, ``nu = 0`` the gradient (hard ``min``). Since
    ``min(eta, gamma/||m||) m = eta min(1, (gamma/eta)/||m||) m``, this is
    :func:`scale_by_clip_momentum` at threshold ``gamma / eta_t`` followed by the
    learning rate; a schedule for ``eta`` gives a schedule for the threshold.
    State: 4 bytes per parameter.

    Args:
      learning_rate: ``eta``.
      gamma: ``> 0``.
      b1: momentum decay in ``[0, 1)``.
      nu: in ``[0, 1]``.
    """
    _checks.check_positive("gamma", gamma)

    def threshold(count):
        eta = learning_rate(count) if callable(learning_rate) else learning_rate
        # eta = 0 gives tau = inf: never clip, and the step is 0 anyway.
        return jnp.asarray(gamma, jnp.float32) / eta

    return _finish(
        scale_by_clip_momentum(threshold, b1, nu, mu_dtype),
        learning_rate,
        weight_decay,
        mask,
    )


def generalized_signsgd(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.99,
    eps: Any = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Generalized SignSGD (Crawshaw et al., 2022, Algorithm 1).

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) m_t^2, \quad
        x_{t+1} = x_t - \eta \frac{m_t}{\sqrt{v_t}}

    ``b2 = 0`` is Signum. Each coordinate moves at most ``eta / sqrt(1 - b2)``
    per step. State: 8 bytes per parameter (4 for Signum).

    Args:
      learning_rate: ``eta`` (Adam-sized: the direction has unit scale).
      b1: momentum decay in ``[0, 1)``.
      b2: in ``[0, 1)``.
      eps: ``>= 0`` added to ``sqrt(v)``; 0 as in the paper, with ``0/0 = 0``.
    """
    return _finish(
        scale_by_generalized_sign(b1, b2, eps, mu_dtype), learning_rate, weight_decay, mask
    )
