"""ZClip: the global norm clipped when it is an outlier against an EMA of its mean and spread."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import global_norm_parts, power_mean
from optclip._scaled import divide, norm_value, plus, scale
from optclip._types import Scalar

MODES = ("zscore", "percentile")
CLIP_OPTIONS = ("adaptive_scaling", "mean")
# torch.nn.utils.clip_grad_norm_'s guard, which the reference clips with: max / (norm + 1e-6).
_TORCH_NORM_EPS = 1e-6
# The statistics see a norm beyond float32's range as float32's largest value, and saturate
# there themselves (docs/numerics.md): a float32 norm of float32 gradients can overflow.
_LARGEST = float(jnp.finfo(jnp.float32).max)


def _init(params) -> ZClipState:
    del params
    # A new array per field: a donated state may not hold one buffer twice.
    zero = lambda: jnp.zeros([], jnp.float32)
    return ZClipState(jnp.zeros([], jnp.int32), zero(), zero(), zero(), zero(), zero())


def _threshold(norm, mean, std, mode, clip_option, z_thresh, eps, clip_factor):
    """The adaptive threshold and whether ``norm`` is a spike (after warm-up)."""
    if mode == "percentile":
        bound = mean + z_thresh * std
        return bound, norm > bound
    z = (norm - mean) / (std + eps)
    spike = z > z_thresh
    if clip_option == "mean":
        return mean, spike  # clip_factor scales the adaptive threshold only, as theirs
    # On a spike z > z_thresh > 0, so the division is safe; elsewhere it is not used.
    scaled = mean + z_thresh * std / jnp.where(spike, z / z_thresh, 1.0)
    return clip_factor * scaled, spike


def _statistics(state, norm, absorbed, alpha, warming):
    """The next mean and standard deviation of the norm, in warm-up or after it."""
    mean, std = state.mean, state.std
    # Warm-up: running mean and population variance of the norms (Welford's update,
    # s_k^2 = w s_{k-1}^2 + (1 - w) (w delta^2) with w = (k-1)/k, on the root).
    k = (state.count + 1).astype(jnp.float32)
    delta = norm - mean
    w = (k - 1.0) / k
    warm_mean = mean + delta / k
    warm_std = power_mean(std, jnp.abs(delta) * jnp.sqrt(w), w, 2.0)
    # After it: the EMA absorbs the threshold (or the norm), the variance uses the new mean.
    ema_mean = alpha * mean + (1.0 - alpha) * absorbed
    ema_std = power_mean(std, jnp.abs(absorbed - ema_mean), alpha, 2.0)
    return jnp.where(warming, warm_mean, ema_mean), jnp.where(warming, warm_std, ema_std)


def _update(updates, state, params=None, *, hp):
    del params
    alpha, max_grad_norm, warmup_steps = hp["alpha"], hp["max_grad_norm"], hp["warmup_steps"]
    _gradient_checks.check_dtypes(updates)
    parts = global_norm_parts(updates)
    true_norm = norm_value(parts)  # inf beyond float32's range
    finite = jnp.isfinite(parts.mantissa)  # whether the gradient is
    # A zero gradient is no statistic of the norm: recorded, a warm-up of them would leave
    # mean = std = 0, against which every later norm is a spike clipped to 0, for ever.
    observed = finite & (parts.mantissa != 0)
    norm = jnp.minimum(true_norm, _LARGEST)
    warming = state.count < warmup_steps
    mean, std = state.mean, state.std
    bound, spike = _threshold(
        norm, mean, std, *(hp[k] for k in ("mode", "clip_option", "z_thresh", "eps", "clip_factor"))
    )
    # No spike while the statistics have no spread: against std = 0 every larger norm would be
    # one, clipped to the mean, which the EMA absorbs, and std would stay 0 for ever.
    spike = spike & ~warming & finite & (std > 0)
    absorbed = jnp.minimum(jnp.where(spike, bound, norm), _LARGEST)
    limit = jnp.asarray(jnp.inf if max_grad_norm is None else max_grad_norm, jnp.float32)
    cap = jnp.where(warming, limit, jnp.minimum(absorbed, limit))
    # Warm-up clips as torch's clip_grad_norm_ (a factor max / (norm + 1e-6) whenever it is
    # below 1); after it, the authors clip only a norm above the threshold.
    clipped = jnp.where(warming, true_norm + _TORCH_NORM_EPS > cap, true_norm > cap)
    # cap / (norm + 1e-6) as an exact exponent shift and a normal factor (a norm near or
    # beyond float32's range would flush the plain factor to 0).
    shift, factor = divide(cap, plus(parts, _TORCH_NORM_EPS), clipped)
    factor = jnp.where(finite, factor, jnp.nan)  # the numerics rule: NaN in, NaN out
    # An unclipped update passes through as it is (no multiply by 1.0, which flushes
    # subnormals on some backends); a non-finite one becomes NaN everywhere.
    scaled = clipped | ~finite
    updates = jax.tree.map(
        lambda u: jnp.where(scaled, scale(u, shift, factor), u).astype(u.dtype), updates
    )

    new_mean, new_std = _statistics(state, norm, absorbed, alpha, warming)
    new_mean, new_std = jnp.minimum(new_mean, _LARGEST), jnp.minimum(new_std, _LARGEST)
    keep = ~observed | (spike & hp["skip_update_on_spike"])
    new_mean, new_std = jnp.where(keep, mean, new_mean), jnp.where(keep, std, new_std)
    return updates, ZClipState(
        count=jnp.where(observed, optax.safe_increment(state.count), state.count),
        mean=new_mean.astype(jnp.float32),
        std=new_std.astype(jnp.float32),
        norm=true_norm,
        clipped=(clipped & finite).astype(jnp.float32),
        spike=spike.astype(jnp.float32),
    )


class ZClipState(NamedTuple):
    """State of :func:`zclip`.

    Attributes:
      count: finite, nonzero norms recorded (the first ``warmup_steps`` of them are the
        warm-up).
      mean: EMA of the (clipped) norm; during warm-up, the plain mean of the norms so far.
      std: root of the EMA of the squared deviation (the authors' ``sqrt(var)``);
        during warm-up, the population standard deviation of the norms so far.
        Kept as a root, in ``hypot`` form, so norms above ``1e19`` cannot overflow it.
        The statistics see a norm beyond float32's range as float32's largest value
        and saturate there themselves (docs/numerics.md).
      norm: global norm of the last incoming update, before clipping, rounded to
        float32 (inf beyond float32's range; the update is clipped by the exact norm).
      clipped: whether the last update was scaled down (float32 0 or 1).
      spike: whether the last norm was an outlier (float32 0 or 1; 0 during warm-up).
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mean: jax.Array
    std: jax.Array
    norm: jax.Array
    clipped: jax.Array
    spike: jax.Array


def zclip(
    alpha: Scalar = 0.97,
    z_thresh: Scalar = 2.5,
    max_grad_norm: Scalar | None = 1.0,
    eps: Scalar = 1e-6,
    warmup_steps: int = 25,
    mode: str = "zscore",
    clip_option: str = "adaptive_scaling",
    clip_factor: Scalar = 1.0,
    skip_update_on_spike: bool = False,
) -> optax.GradientTransformation:
    r"""ZClip: clips the global norm when it is a z-score outlier against its own EMA.

    Warm-up, the first ``warmup_steps`` steps: the update is clipped at
    ``max_grad_norm`` only, and the norms' mean and population variance start
    the EMA. After it, with :math:`\mu, s^2` the EMA mean and variance of the
    norm and :math:`n_k = \|g_k\|`:

    .. math::

        z_k &= (n_k - \mu) / (s + \epsilon), \qquad
        \text{spike} \iff z_k > z_{\text{thresh}} \\
        c_k &= \text{clip\_factor} \cdot \left(\mu + \frac{z_{\text{thresh}}\, s}
               {z_k / z_{\text{thresh}}}\right) \quad \text{(adaptive\_scaling;
               } \mu \text{ with clip\_option="mean")} \\
        a_k &= c_k \text{ on a spike, } n_k \text{ otherwise}, \qquad
        e_k = \min(a_k, \text{max\_grad\_norm}) \\
        \hat g_k &= \frac{e_k}{n_k + 10^{-6}} g_k \text{ if } n_k > e_k, \qquad
        \mu \leftarrow \alpha\mu + (1-\alpha) a_k, \quad
        s^2 \leftarrow \alpha s^2 + (1-\alpha)(a_k - \mu)^2

    (``mode="percentile"``: a spike is ``n_k > mu + z_thresh s`` and the
    threshold is that bound.) The EMA absorbs the adaptive threshold, never
    the raw spike nor the cap, and the variance uses the mean just updated;
    with ``skip_update_on_spike`` a spike leaves the EMA as it was. These are
    the authors' names, defaults and order of operations, so a ZClip
    configuration ports unchanged and gives its updates to float32 rounding.

    Differences (``docs/design.md``, "Spike-robust clipping"): a non-finite
    norm makes the whole update NaN and leaves the statistics as they were
    (the numerics rule); the warm-up keeps a running mean and variance
    instead of a list of norms; a zero norm is not recorded (a warm-up of zero
    gradients would leave ``mu = s = 0`` and clip every later step to 0); and
    while ``s = 0`` (equal warm-up norms, or ``warmup_steps=1``) no norm is a
    spike, where the authors' rule clips every larger norm to ``mu``, which the
    EMA absorbs, so ``s`` stays 0 and the cap for ever.

    Chain it in front of an optimizer; ``docs/spikes.md`` measured it in front of
    Adam: ``optax.chain(optclip.zclip(), optax.adam(lr))`` at Adam's learning rate.

    Args:
      alpha: EMA decay of the norm's mean and variance, in ``[0, 1)``.
      z_thresh: z-score above which a norm is a spike, ``> 0``.
      max_grad_norm: a fixed cap ``>= 0`` on every step (it caps the adaptive
        threshold too), or ``None``.
      eps: ``>= 0``, added to the standard deviation in the z-score.
      warmup_steps: steps of statistics before the test starts, an integer ``>= 1``.
      mode: ``"zscore"`` or ``"percentile"``.
      clip_option: ``"adaptive_scaling"`` (the threshold falls as the spike
        grows) or ``"mean"`` (clip to the mean); used with ``mode="zscore"``.
      clip_factor: ``> 0``, multiplies the ``adaptive_scaling`` threshold (the
        authors' code ignores it otherwise, and so does this).
      skip_update_on_spike: keep the EMA unchanged on a spike.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ZClipState`.

    References:
      Kumar, Owen, Ashraf, Tirumala, Tawde, 2025, "ZClip: Adaptive Spike
      Mitigation for LLM Pre-Training", https://arxiv.org/abs/2504.02507;
      the authors' code, ``bluorion-com/ZClip``, ``zclip/zclip.py``.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optclip.zclip(warmup_steps=2, max_grad_norm=None)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> for n in (3.0, 5.0, 4.0):  # warm-up on norms 3 and 5: mean 4, std 1
      ...     _, state = tx.update({"w": jnp.array([n, 0.0])}, state)
      >>> u, state = tx.update({"w": jnp.array([100.0, 0.0])}, state)
      >>> round(float(u["w"][0]), 3), float(state.spike)  # clipped to about mean + 2.5 std
      (4.063, 1.0)
    """
    _checks.check_decay("alpha", alpha)
    _checks.check_positive("z_thresh", z_thresh)
    if max_grad_norm is not None:
        _checks.check_nonnegative("max_grad_norm", max_grad_norm)
    _checks.check_nonnegative("eps", eps)
    _checks.check_count("warmup_steps", warmup_steps, lo=1)
    _checks.check_choice("mode", mode, MODES)
    _checks.check_choice("clip_option", clip_option, CLIP_OPTIONS)
    _checks.check_positive("clip_factor", clip_factor)
    _checks.check_flag("skip_update_on_spike", skip_update_on_spike)

    update_fn = functools.partial(
        _update,
        hp=dict(alpha=alpha, z_thresh=z_thresh, max_grad_norm=max_grad_norm, eps=eps,
                warmup_steps=warmup_steps, mode=mode, clip_option=clip_option,
                clip_factor=clip_factor, skip_update_on_spike=skip_update_on_spike),
    )  # fmt: skip
    return optax.GradientTransformation(_init, update_fn)
