"""Full optimizers: a direction, decoupled weight decay, and a learning rate.

Each is ``optax.chain(direction, decay, optax.scale_by_learning_rate(lr))``
where ``decay`` is :func:`optax.add_decayed_weights` (decoupled, as in AdamW:
added to the direction, then scaled by the learning rate), or a stateless
identity when ``weight_decay`` is a concrete zero, so ``update`` then needs no
params. Both links have the same (empty) state, so the state's structure never
depends on the decay's value (``optax.inject_hyperparams`` may pass it traced).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optclip import _checks
from optclip._acclip import scale_by_acclip
from optclip._coordinate_clip import clip_coordinatewise
from optclip._global_clip import clip_by_global_norm
from optclip._momentum import ema_momentum
from optclip._normalize import normalize_by_global_norm, scale_by_clip_momentum
from optclip._sign import scale_by_generalized_sign
from optclip._types import Mask, Scalar, Threshold
from optclip._weight_decay import decoupled_weight_decay


def _finish(
    direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
) -> optax.GradientTransformation:
    _checks.check_nonnegative("learning_rate", learning_rate, schedule=True)
    return optax.chain(
        direction,
        decoupled_weight_decay(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _with_momentum(
    b1: Scalar, mu_dtype: jax.typing.DTypeLike | None, then: optax.GradientTransformation
) -> optax.GradientTransformation:
    _checks.check_decay("b1", b1)
    if _checks.drops_state(b1):
        return then
    return optax.chain(ema_momentum(b1, mu_dtype), then)


def acclip(
    learning_rate: optax.ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    alpha: Scalar = 1.0,
    eps: Scalar = 1e-5,
    initial_threshold: Scalar | None = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    rms_scale: bool = False,
    robust: bool = False,
    spike_factor: Scalar = 4.0,
) -> optax.GradientTransformation:
    r"""ACClip: SGD with momentum clipped at adaptive per-coordinate thresholds.

    .. math::

        m_k &= \beta_1 m_{k-1} + (1 - \beta_1) g_k \\
        \tau_k^\alpha &= \beta_2 \tau_{k-1}^\alpha + (1 - \beta_2) |g_k|^\alpha \\
        x_k &= x_{k-1} - \eta \left[\min\left(\frac{\tau_k}{|m_k| + \epsilon}, 1\right) m_k
               + \lambda x_{k-1}\right]

    Two forms, two learning-rate scales (``docs/acclip.md`` has the measurements):

    * ``acclip(3e-3, rms_scale=True)``: the clipped momentum over ``sqrt(v_k) + eps``
      (``v`` an EMA of ``g^2``), at Adam's learning rates; a research option: it tied
      or beat Adam on one transformer and lost on another (``docs/acclip.md``).
    * ``acclip(1.0)``: the printed rule moves each coordinate by at most ``eta * tau_k``,
      an SGD-sized step, so it takes SGD's rates; below 0.01 it warns (``UserWarning``).

    See :func:`scale_by_acclip`.

    State: momentum (``mu_dtype``, float32 by default) and threshold (float32):
    8 bytes per parameter, 12 with ``rms_scale``. The fraction of coordinates
    clipped at the last step is ``optclip.clip_fraction(state)`` (derived from
    the state at no cost to the step).

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      b1: momentum decay in ``[0, 1)``.
      b2: threshold decay in ``[0, 1)``.
      alpha: moment order in ``[1, 2]`` (1 in the paper).
      eps: ``>= 0``; on gradients below ~1e-5 it shrinks the step (``docs/acclip.md``).
      initial_threshold: ``tau_0 >= 0`` (default 0: the first ~100 steps are
        clipped hard, which acts as a warm-up, ``docs/design.md``), or ``None``
        to seed ``tau_1 = |g_1|``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.
      rms_scale: keyword-only; the Adam-scale RMS-scaled form.
      robust: keyword-only; clip the gradient at ``spike_factor`` times the
        previous threshold first, so a spike cannot raise its own threshold.
      spike_factor: keyword-only, ``>= 1`` (default 4).

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optclip.acclip(0.1)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> # From a zero threshold the first step is lr * (1 - b2) * |g| = 0.1 * 0.01 * 2:
      >>> [round(w, 6) for w in optax.apply_updates(params, updates)["w"].tolist()]
      [0.998, 0.998, 0.998]
    """
    _checks.warn_if_adam_sized(learning_rate, rms_scale)
    direction = scale_by_acclip(
        b1, b2, alpha, eps, initial_threshold, mu_dtype,
        rms_scale=rms_scale, robust=robust, spike_factor=spike_factor,
    )  # fmt: skip
    return _finish(direction, learning_rate, weight_decay, mask)


def gclip(
    learning_rate: optax.ScalarOrSchedule,
    threshold: Threshold,
    b1: Scalar = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""GClip: momentum, then global-norm clipping of the momentum.

    .. math::

        m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \qquad
        x_k = x_{k-1} - \eta_k \min\left(1, \frac{\tau_k}{\|m_k\|}\right) m_k

    ``optax.chain(ema_momentum(b1), clip_by_global_norm(threshold))`` then the
    learning rate; ``b1 = 0`` is clipped SGD. ``threshold`` may be a schedule
    (see :mod:`optclip.theory` for the paper's ``tau_k = G k^(1/alpha)``).

    State: 4 bytes per parameter with momentum, 0 without (scalars aside).

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      threshold: ``tau >= 0``, a float or a schedule of the step count.
      b1: momentum decay in ``[0, 1)``; a Python or NumPy 0 keeps no momentum.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, Algorithm 1.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.gclip(0.1, threshold=1.0, b1=0.9)
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update({"w": jnp.full(3, 100.0)}, tx.init(params), params)
    """
    # Checked here too, so that an error names `threshold`, not the inner `max_norm`.
    _checks.check_threshold_leaves("threshold", threshold)
    return _finish(
        _with_momentum(b1, mu_dtype, clip_by_global_norm(threshold)),
        learning_rate,
        weight_decay,
        mask,
    )


def cclip(
    learning_rate: optax.ScalarOrSchedule,
    threshold: Threshold,
    b1: Scalar = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    track_clip_fraction: bool = True,
) -> optax.GradientTransformation:
    r"""CClip: momentum, then coordinate-wise clipping at fixed thresholds.

    .. math:: x_k = x_{k-1} - \eta_k \min\left(1, \frac{\tau_{k,i}}{|m_{k,i}|}\right) m_{k,i}

    State: 4 bytes per parameter with momentum, 0 without.

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      threshold: ``tau >= 0``: a float, a pytree matching the params (per leaf
        or per element), or a schedule of the step count.
      b1: momentum decay in ``[0, 1)``; a Python or NumPy 0 keeps no momentum.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.
      track_clip_fraction: keyword-only; ``False`` skips the per-step count of
        clipped coordinates (see :func:`clip_coordinatewise` for its cost).

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, eq. (CClip).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.cclip(0.1, threshold=0.5, b1=0.9)
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      >>> float(optclip.clip_fraction(state))
      0.0
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
    gamma: Scalar,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
) -> optax.GradientTransformation:
    r"""Clipped gradient descent: ``x -= h g`` with ``h = min(eta, gamma * eta / ||g||)``.

    Equal to ``eta * min(1, gamma / ||g||) g``, i.e. :func:`clip_by_global_norm`
    at ``gamma`` followed by the learning rate. Under (L0, L1)-smoothness, with
    ``eta = 1/(10 L0)`` and ``gamma = min(1/eta, 1/(10 L1 eta))`` it reaches
    ``||grad|| <= eps`` in ``O(L0 Delta / eps^2 + max(1, L1^2) Delta / L0)``
    steps, independently of the gradient bound ``M`` (Zhang et al., 2020b,
    Theorem 3). No state beyond scalars.

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      gamma: ``> 0``, the gradient-norm threshold.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang, He, Sra, Jadbabaie, 2020, https://arxiv.org/abs/1905.11881, §3.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.clipped_gd(0.1, gamma=1.0)
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.06, -0.08]
    """
    _checks.check_positive("gamma", gamma)
    return _finish(clip_by_global_norm(gamma), learning_rate, weight_decay, mask)


def normalized_gd(
    learning_rate: optax.ScalarOrSchedule,
    beta: Scalar,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
) -> optax.GradientTransformation:
    r"""Normalized gradient descent: ``x -= eta / (||g|| + beta) * g``.

    Within a factor 2 of :func:`clipped_gd` when ``gamma * eta_c = eta_n`` and
    ``eta_c = eta_n / beta`` (Zhang et al., 2020b, §3.1). No state beyond scalars.

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      beta: ``> 0``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang, He, Sra, Jadbabaie, 2020, https://arxiv.org/abs/1905.11881, §3.1.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.normalized_gd(1.0, beta=1.0)
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.5, -0.6667]
    """
    _checks.check_positive("beta", beta)
    return _finish(normalize_by_global_norm(beta), learning_rate, weight_decay, mask)


def normalized_momentum_sgd(
    learning_rate: optax.ScalarOrSchedule,
    b1: Scalar = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Normalized SGD with momentum: ``m = b1 m + (1 - b1) g``, ``x -= eta m / ||m||``.

    The baseline of Crawshaw et al. (2022), after Jin et al. (2021). A zero
    momentum gives a zero step. State: 4 bytes per parameter.

    Args:
      learning_rate: ``eta``, a float or an optax schedule.
      b1: momentum decay in ``[0, 1)``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Crawshaw et al., 2022, https://arxiv.org/abs/2208.11195 (its baseline).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.normalized_momentum_sgd(0.1)
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.06, -0.08]
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
    gamma: Scalar,
    b1: Scalar = 0.9,
    nu: Scalar = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
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
      learning_rate: ``eta``, a float or an optax schedule.
      gamma: ``> 0``.
      b1: momentum decay in ``[0, 1)``.
      nu: in ``[0, 1]``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Zhang, Jin, Fang, Wang, 2020, https://arxiv.org/abs/2010.02519, Algorithm 1.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.clip_momentum_sgd(0.1, gamma=0.05, b1=0.0)
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.03, -0.04]
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
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    eps: Scalar = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Generalized SignSGD (Crawshaw et al., 2022, Algorithm 1).

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) m_t^2, \quad
        x_{t+1} = x_t - \eta \frac{m_t}{\sqrt{v_t}}

    ``b2 = 0`` is Signum. Each coordinate moves at most ``eta / sqrt(1 - b2)``
    per step. State: 8 bytes per parameter (4 for Signum).

    Args:
      learning_rate: ``eta``, about Adam's / 10 (unit-scale direction; ``docs/results.md``).
      b1: momentum decay in ``[0, 1)``.
      b2: in ``[0, 1)``; a Python or NumPy 0 (with ``eps = 0``) is Signum,
        which keeps no second-moment state.
      eps: ``>= 0`` added to ``sqrt(v)``; 0 as in the paper, with ``0/0 = 0``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored momentum; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Crawshaw, Liu, Orabona, Zhang, Zhuang, 2022, https://arxiv.org/abs/2208.11195.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.generalized_signsgd(0.1, b2=0.0)
      >>> u, _ = tx.update({"w": jnp.array([3.0, -4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.1, 0.1]
    """
    return _finish(
        scale_by_generalized_sign(b1, b2, eps, mu_dtype), learning_rate, weight_decay, mask
    )
