"""SPAM: Adam with spike-aware coordinate clipping, periodic momentum reset and warm-up after it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._momentum import ema_update
from optclip._numerics import denominator_eps, fraction_true, momentum_zeros
from optclip._trees import unzip
from optclip._types import Mask, Scalar
from optclip._weight_decay import decoupled_weight_decay

# ---------------------------------------------------------------------------------------------
# The schedule of the three additions, as functions of the 0-based step T about to run.


def reset_now(count: jax.Array, interval: Scalar) -> jax.Array:
    """Whether step ``T = count`` resets the moments: ``(T + 1) % interval == 0``."""
    return (count + 1) % interval == 0


def clip_on(
    count: jax.Array, interval: Scalar, spike_free_steps: Scalar, threshold: Scalar
) -> jax.Array:
    """Whether step ``T`` clips: ``T + 1 >= N``, ``(T + 1) % interval >= N`` and ``theta != 0``
    (the authors' switch that turns the clip off)."""
    t = count + 1
    on = (t >= spike_free_steps) & (t % interval >= spike_free_steps)
    return on & (jnp.asarray(threshold) != 0)


def reset_warmup_scale(count: jax.Array, interval: Scalar, warmup_steps: Scalar) -> jax.Array:
    r"""The step's factor after a reset: ``1 - 0.99 (1 + cos(pi s / (W + 1))) / 2`` for ``s < W``.

    ``s`` counts steps since the last reset (0 on the step of a reset); before the
    first reset, and from ``s = W`` on, the factor is 1.
    """
    t = count + 1
    s = t % interval
    ramp = 1.0 - 0.99 * (1.0 + jnp.cos(math.pi * s / (warmup_steps + 1.0))) / 2.0
    return jnp.where((t >= interval) & (s < warmup_steps), ramp, 1.0).astype(jnp.float32)


def spike_bound(rms: jax.Array, threshold: Scalar, active: jax.Array) -> jax.Array:
    """``sqrt(theta v)`` from ``rms = sqrt(v)``, float32; ``inf`` when the clip is off, and where
    ``v = 0``.

    A coordinate with ``v = 0`` has no statistic to call its gradient a spike against; the
    authors' rule clips it to 0, which freezes it until the next reset (every coordinate when
    no step precedes the first clip, ``spike_free_steps <= 1``, and any whose gradient was zero
    through the spike-free steps, such as the embedding row of a token not yet seen). Here it
    is not clipped.

    Args:
      rms: ``sqrt(v) >= 0``.
      threshold: ``theta``.
      active: a boolean scalar, the clip's schedule.

    Returns:
      The bound on ``|g|``, shaped like ``rms``.
    """
    rms = rms.astype(jnp.float32)
    bound = jnp.sqrt(jnp.asarray(threshold, jnp.float32)) * rms
    return jnp.where(active & (rms > 0), bound, jnp.inf)


def spike_clip(
    g: jax.Array, rms: jax.Array, threshold: Scalar, active: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``g`` where ``g^2 <= theta v``, else ``sign(g) sqrt(theta v)``; and which were clipped.

    Only when ``active`` (a scalar: the clip's schedule); else ``g`` as it is.

    Written on ``rms = sqrt(v)``, as ``|g| > sqrt(theta) rms``, so no square is formed.
    A NaN ``g`` compares false and is kept (the numerics rule).
    """
    bound = spike_bound(rms, threshold, active)
    mag = jnp.abs(g).astype(jnp.float32)
    hit = mag > bound
    if jnp.iscomplexobj(g):  # the modulus to the bound, the phase kept (rule 5)
        scaled = g * (bound / jnp.where(hit, mag, 1.0)).astype(g.dtype)
        return jnp.where(hit, scaled, g), hit
    # A select on the comparison, not jnp.clip: XLA's min and max carry NaN operands through,
    # which costs three vector operations each on CPU, and the comparison is already made.
    return jnp.where(hit, jnp.copysign(bound.astype(g.dtype), g), g), hit


# The float32 exponent field, the largest biased exponent a scale may take, twice the bias.
_EXPONENT_MASK, _HIGHEST, _TWICE_BIAS = 0x7F800000, 253 << 23, 254 << 23


def moment_update(r: jax.Array, m: jax.Array, b2: Scalar, keep: Scalar = 1.0) -> jax.Array:
    """``sqrt(b2 keep r^2 + (1 - b2) m^2)`` for float32 ``r, m >= 0``: the EMA of ``g^2`` on its
    root, ``keep = 0`` restarting it from zero.

    :func:`jnp.hypot`'s result without its cost: both terms are scaled by the power of two
    that brings the larger into ``[1, 2)`` (set through the exponent bits, so exact, and
    capped so the scale and its inverse are normal floats), which keeps the squares from
    overflowing or flushing to zero, and scaled back after the square root. A NaN or inf
    term gives NaN or inf. About half of ``hypot``'s operations, none a division: this update
    runs on every coordinate of every step.

    Args:
      r: the current ``sqrt(v) >= 0`` (float32).
      m: the magnitude ``|g| >= 0`` of the gradient entering the EMA (float32).
      b2: the decay ``beta_2``.
      keep: 1, or 0 to drop ``r`` (a reset), folded into ``r``'s scalar weight.

    Returns:
      The new ``sqrt(v)`` in float32.
    """
    # ``1 - b2`` before the cast, as the EMA weights elsewhere: in float32 it loses 1e-5.
    a = (jnp.sqrt(jnp.asarray(b2, jnp.float32)) * keep) * r
    b = jnp.sqrt(jnp.asarray(1.0 - b2, jnp.float32)) * m
    # The larger exponent from the bits: for floats >= 0 the integer order is the float order,
    # one vector operation where jnp.maximum's NaN handling costs four. A NaN still reaches
    # the result through the products below.
    bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)
    top = jnp.maximum(bits(a), bits(b)) & _EXPONENT_MASK
    # Only capped above (a scale of 2^-127 would be 0); a zero or subnormal top gives a 0 result,
    # at most the smallest normal float from the true one (XLA:CPU flushes such inputs anyway).
    top = jnp.minimum(top, _HIGHEST)
    down = jax.lax.bitcast_convert_type(_TWICE_BIAS - top, jnp.float32)
    up = jax.lax.bitcast_convert_type(top, jnp.float32)
    a, b = a * down, b * down
    return jnp.sqrt(a * a + b * b) * up


def signed_second_moment(
    updates: optax.Updates,
    rms: optax.Updates,
    first: optax.Updates,
    bound: Callable[[jax.Array], jax.Array],
    b2: Scalar,
    keep: Scalar,
) -> tuple[optax.Updates, optax.Updates]:
    """The new ``sqrt(v)`` from the clipped gradient, signed: negative where the clip cut it.

    Every read of the old ``sqrt(v)`` (the clip inside ``first``) is ordered before the new
    one is written over it: each leaf of ``first`` and of the old state passes through an
    optimization barrier, so XLA:CPU updates ``sqrt(v)`` in place instead of copying the old
    one aside (``docs/design.md``, "SPAM's step in place"). Only the clipped magnitude
    ``min(|g|, bound)`` enters ``v``, whatever ``g``'s sign or phase.

    Args:
      updates: the raw gradient.
      rms: the stored, signed ``sqrt(v)``.
      first: what was computed from the clip before this (SPAM's momentum, or the clipped
        gradient itself); returned through the barrier.
      bound: ``|stored| ->`` the clip's bound on ``|g|`` (:func:`spike_bound`, with a reset
        folded into its threshold).
      b2: the decay of ``v``.
      keep: 1, or 0 where this step resets ``v`` (a scalar).

    Returns:
      ``first`` (through the barrier) and the new signed ``sqrt(v)``.
    """

    def leaf(g, f, r):
        # One barrier per leaf: a leaf's update waits for its own reads, not for every leaf's.
        f, r = jax.lax.optimization_barrier((f, r))
        r = jnp.abs(r)
        cap, mag = bound(r), jnp.abs(g).astype(jnp.float32)
        # min(|g|, cap) as a select on the comparison the sign needs anyway; a NaN |g|
        # compares false and enters v (XLA's minimum would cost three more operations).
        hit = mag > cap
        new = moment_update(r, jnp.where(hit, cap, mag), b2, keep)
        return f, jnp.where(hit, -new, new)

    return unzip(jax.tree.map(leaf, updates, first, rms), updates)


def signed_fraction(rms: optax.Updates) -> jax.Array:
    """The fraction of entries of ``rms`` with the sign bit set, NaN entries not counted.

    Args:
      rms: a stored, signed ``sqrt(v)``.

    Returns:
      A float32 scalar.
    """
    return fraction_true(jax.tree.map(lambda r: jnp.signbit(r) & ~jnp.isnan(r), rms))


def one_minus_power(decay: Scalar, k: jax.Array) -> jax.Array:
    """``1 - decay^k`` as ``-expm1(k log decay)``, with ``log decay`` in double precision when
    ``decay`` is a Python number: the same rounding as the EMA weights ``1 - decay`` it
    corrects, whether or not :func:`optax.inject_hyperparams` made ``decay`` a float32 array."""
    value = _checks.static_value(decay)
    if value is not None and not isinstance(decay, jax.Array):
        log = jnp.float32(math.log(value)) if value > 0 else jnp.float32(-jnp.inf)
    else:
        log = jnp.log(jnp.asarray(decay, jnp.float32))
    return -jnp.expm1(k.astype(jnp.float32) * log)


def spike_schedule(
    count: jax.Array, threshold: Scalar, interval: Scalar, spike_free_steps: Scalar
) -> tuple[jax.Array, Callable, Callable]:
    """Step ``T = count``'s reset and spike clip, for a stored, signed ``sqrt(v)``.

    Returns:
      ``keep`` (float32 0 on a reset step, else 1); the clip, ``(g, stored) -> g`` clipped at
      ``sqrt(theta v)``; and its bound, ``|stored| -> sqrt(theta v)``. A reset step clips
      nothing: its ``v`` is 0 after the reset (:func:`spike_bound`), which only
      ``spike_free_steps = 0`` would otherwise reach. So the stored ``r`` is read as it is,
      not multiplied by ``keep`` in every coordinate.
    """
    reset = reset_now(count, interval)
    keep = 1.0 - reset.astype(jnp.float32)
    active = clip_on(count, interval, spike_free_steps, threshold) & ~reset
    bound = lambda r: spike_bound(r, threshold, active)
    clip = lambda g, r: spike_clip(g, jnp.abs(r), threshold, active)[0]
    return keep, clip, bound


_WITHIN_INTERVAL = {
    "warmup_steps": "a longer warm-up restarts at the next reset before it ends, so the step "
    "never reaches its full size",
    "spike_free_steps": "with more the clip never runs (threshold=0 turns it off)",
}


def check_within_interval(name: str, value: object, interval: object) -> None:
    """``0 <= value < interval`` (``interval`` checked first), as :func:`_checks.check_count`."""
    why = f" (interval - 1: {_WITHIN_INTERVAL[name]})"
    _checks.check_count(name, value, lo=0, hi=interval - 1, why=why)  # type: ignore[operator]


def _check_schedule(threshold, interval, warmup_steps, spike_free_steps):
    _checks.check_nonnegative("threshold", threshold)
    _checks.check_count("interval", interval, lo=1)
    check_within_interval("warmup_steps", warmup_steps, interval)
    check_within_interval("spike_free_steps", spike_free_steps, interval)


# ---------------------------------------------------------------------------------------------
# The whole direction, in one pass over the moments.


class ScaleBySpamState(NamedTuple):
    """State of :func:`scale_by_spam`.

    Attributes:
      count: steps taken (Adam's bias-correction count; never reset).
      mu: first moment ``m`` (``mu_dtype``, float32 by default).
      rms: ``sqrt(v)``, the root of the second moment (float32), stored with its sign bit set
        at the coordinates the last step clipped: ``jnp.abs(rms)`` is ``sqrt(v)``.
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: optax.Updates
    rms: optax.Updates

    @property
    def clip_fraction(self) -> jax.Array:
        """Fraction of coordinates clipped at the last step (float32).

        Read from the signs of ``rms`` instead of counted inside every step, where the count
        costs a reduction pass over the gradient (``docs/design.md``, "SPAM's step in place").
        A NaN entry (a NaN gradient reached it) is not counted.
        """
        return signed_fraction(self.rms)


def scale_by_spam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    threshold: Scalar = 5000.0,
    interval: int = 500,
    warmup_steps: int = 150,
    spike_free_steps: int = 20,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""The SPAM direction: Adam with spike-aware clipping, momentum reset and warm-up.

    With ``T`` the 0-based step about to run and ``k = T + 1`` Adam's count:

    .. math::

        &\text{if } (T+1) \bmod \Delta T = 0: \quad m = v = 0 \\
        &\text{if } T+1 \ge N \text{ and } (T+1) \bmod \Delta T \ge N: \quad
          g_i \leftarrow \operatorname{sign}(g_i)\sqrt{\theta v_i}
          \text{ where } g_i^2 > \theta v_i \\
        &m = \beta_1 m + (1-\beta_1) g, \quad v = \beta_2 v + (1-\beta_2) g^2 \\
        &u = s_T \frac{\sqrt{1-\beta_2^k}}{1-\beta_1^k} \frac{m}{\sqrt v + \epsilon},
          \quad s_T = 1 - 0.99\,\frac{1 + \cos(\pi \sigma / (W+1))}{2}
          \text{ for } \sigma < W \text{, else } 1

    where ``sigma`` counts steps since the last reset (no warm-up before the
    first one). This follows the authors' code, quirks kept: the bias
    correction's count is never reset, so right after a reset ``m`` and ``v``
    restart from zero under a correction near 1 (the cosine warm-up is what
    keeps those steps small); the clip is off for the first ``N`` steps of
    each interval, where ``v`` is rebuilding; ``eps`` is added to ``sqrt(v)``
    before the bias correction, as in Hugging Face's AdamW.

    Where it differs: a coordinate with ``v = 0`` is not clipped (the
    authors' rule clips it to 0, which freezes it until the next reset:
    :func:`spike_bound`). The state keeps ``sqrt(v)`` (a rescaled EMA,
    :func:`moment_update`), so a finite gradient of any size never overflows
    ``g^2``; results agree with the ``v`` form to float32 rounding. Its sign
    marks the coordinates the last step clipped, which is where
    ``clip_fraction`` is read from (the step counts nothing).

    Args:
      b1: first-moment decay in ``[0, 1)``.
      b2: second-moment decay in ``[0, 1)``.
      eps: ``>= 0``, added to ``sqrt(v)``.
      threshold: ``theta >= 0``; a coordinate with ``g^2 > theta v`` is a spike
        (0 turns the clip off, as in the authors' code).
      interval: ``DeltaT``, steps between moment resets, an integer ``>= 1``.
      warmup_steps: steps of cosine warm-up after each reset, an integer in
        ``[0, interval)``.
      spike_free_steps: ``N``, steps at the start of each interval without
        clipping (the reset step included; ``N - 1`` before the first reset,
        as the authors count), an integer in ``[0, interval)``.
      mu_dtype: dtype of the stored first moment; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleBySpamState`.

    References:
      Huang, Zhu, Jin, Liu, Wang, Liu, 2025, "SPAM: Spike-Aware Adam with Momentum
      Reset for Stable LLM Training", ICLR, https://arxiv.org/abs/2501.06842;
      the authors' code, ``TianjinYellow/SPAM-Optimizer``, ``galore_torch/SPAM.py``.
    """
    _checks.check_decay("b1", b1)
    _checks.check_decay("b2", b2)
    _checks.check_nonnegative("eps", eps)
    _check_schedule(threshold, interval, warmup_steps, spike_free_steps)
    dtype = _checks.state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return ScaleBySpamState(
            count=jnp.zeros([], jnp.int32),
            mu=momentum_zeros(params, dtype),
            rms=optax.tree.zeros_like(params, dtype=jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.mu, "the first moment")
        keep, clip, bound = spike_schedule(state.count, threshold, interval, spike_free_steps)
        grads = jax.tree.map(clip, updates, state.rms)
        mu = jax.tree.map(lambda g, m: ema_update(g, m * keep.astype(m.dtype), b1), grads, state.mu)
        mu, rms = signed_second_moment(updates, state.rms, mu, bound, b2, keep)
        k = optax.safe_increment(state.count)
        step = reset_warmup_scale(state.count, interval, warmup_steps) * (
            jnp.sqrt(one_minus_power(b2, k)) / one_minus_power(b1, k)
        )
        floor = denominator_eps(eps)
        out = jax.tree.map(
            lambda m, r, g: (step * m / (jnp.abs(r) + floor)).astype(g.dtype), mu, rms, updates
        )
        return out, ScaleBySpamState(
            count=k,
            mu=optax.tree.cast_like(mu, state.mu),
            rms=optax.tree.cast_like(rms, state.rms),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def spam(
    learning_rate: optax.ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    threshold: Scalar = 5000.0,
    interval: int = 500,
    warmup_steps: int = 150,
    spike_free_steps: int = 20,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""SPAM: spike-aware Adam with momentum reset (Huang et al., ICLR 2025).

    ``optax.chain(scale_by_spam(...), decoupled weight decay,
    optax.scale_by_learning_rate(learning_rate))``; see :func:`scale_by_spam`
    for the rule. Defaults are the authors' (``theta = 5000``, ``DeltaT = 500``,
    150 warm-up steps, 20 spike-free steps, ``eps = 1e-6``); their ``DeltaT`` is
    ``interval`` here and their ``grad_accu_steps`` is ``spike_free_steps``.

    Weight decay is decoupled and, like the authors', not scaled by the warm-up;
    it is added to the direction (``x - lr (u + lambda x)``) where the authors
    shrink the already-updated parameters (``(x - lr u)(1 - lr lambda)``), a
    difference of ``lr^2 lambda u``.

    State: first moment (``mu_dtype``) and ``sqrt(v)`` (float32): 8 bytes per
    parameter, Adam's. ``optclip.clip_fraction(state)`` reads the fraction of
    coordinates clipped at the last step.

    Args:
      learning_rate: a float or an optax schedule (Adam's scale).
      b1: first-moment decay in ``[0, 1)``.
      b2: second-moment decay in ``[0, 1)``.
      eps: ``>= 0``, added to ``sqrt(v)``.
      weight_decay: decoupled weight decay ``lambda >= 0`` (float or schedule).
      threshold: ``theta >= 0`` of the spike test ``g^2 > theta v`` (0: no clip).
      interval: ``DeltaT``, steps between moment resets, an integer ``>= 1``.
      warmup_steps: cosine warm-up steps after each reset, an integer in ``[0, interval)``.
      spike_free_steps: ``N``, unclipped steps at the start of each interval
        (``N - 1`` before the first reset).
      mask: which params get weight decay (as :func:`optax.add_decayed_weights`).
      mu_dtype: dtype of the stored first moment; float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Huang et al., 2025, https://arxiv.org/abs/2501.06842.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optclip.spam(1e-3)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      >>> [round(u, 6) for u in updates["w"].tolist()]  # Adam's first step: -lr sign(g)
      [-0.001, -0.001, -0.001]
    """
    _checks.check_nonnegative("learning_rate", learning_rate, schedule=True)
    return optax.chain(
        scale_by_spam(b1, b2, eps, threshold, interval, warmup_steps, spike_free_steps, mu_dtype),
        decoupled_weight_decay(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
