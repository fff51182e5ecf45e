"""SPAM's three additions to Adam, each a transform of its own, to put around any optimizer.

Benchmarked only together, as SPAM (``docs/spikes.md``), whose spike clip at its defaults binds
too late to survive the injected spikes there.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._spam import (
    check_within_interval,
    reset_now,
    reset_warmup_scale,
    signed_fraction,
    signed_second_moment,
    spike_schedule,
)
from optclip._types import Scalar


class ClipBySecondMomentState(NamedTuple):
    """State of :func:`clip_by_second_moment`.

    Attributes:
      count: number of updates seen.
      rms: ``sqrt(v)``, the EMA root-mean-square of the clipped updates (float32), with its
        sign bit set where the last step clipped, as :class:`ScaleBySpamState`'s.
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    rms: optax.Updates

    @property
    def clip_fraction(self) -> jax.Array:
        """Fraction of coordinates clipped at the last step, read from the signs of ``rms``."""
        return signed_fraction(self.rms)


def clip_by_second_moment(
    threshold: Scalar = 5000.0,
    b2: Scalar = 0.999,
    interval: int = 500,
    spike_free_steps: int = 20,
) -> optax.GradientTransformation:
    r"""SPAM's spike-aware clip: ``g_i^2 > theta v_i`` gives ``sign(g_i) sqrt(theta v_i)``.

    ``v`` is this transform's own EMA of the *clipped* ``g^2`` (decay ``b2``),
    reset to 0 every ``interval`` steps, and the clip is off for the first
    ``spike_free_steps`` of each interval, all as in :func:`scale_by_spam`.
    In front of ``optax.scale_by_adam(b1, b2)`` with the same ``b2`` and
    ``interval`` (and :func:`reset_periodically` around it), its ``v`` is
    Adam's; it costs 4 bytes per parameter that :func:`scale_by_spam` shares.

    Args:
      threshold: ``theta >= 0`` (0 turns the clip off).
      b2: decay of ``v`` in ``[0, 1)``.
      interval: steps between resets of ``v``, an integer ``>= 1``.
      spike_free_steps: unclipped steps at the start of each interval (``N - 1``
        before the first reset), an integer in ``[0, interval)``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ClipBySecondMomentState`.

    A coordinate with ``v = 0`` (no gradient seen since the last reset) is
    not clipped, where the authors' rule would clip it to 0.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> clip = optclip.clip_by_second_moment(threshold=4.0, spike_free_steps=0)
      >>> state = clip.init({"w": jnp.zeros(2)})
      >>> g, state = clip.update({"w": jnp.array([1.0, 0.0])}, state)  # v = 0: kept
      >>> g, state = clip.update({"w": jnp.array([1e3, 5.0])}, state)
      >>> [round(x, 4) for x in g["w"].tolist()]  # 1e3 > sqrt(4 * 0.001): cut; 5.0 kept
      [0.0632, 5.0]
      >>> tx = optax.chain(optclip.clip_by_second_moment(), optax.adam(1e-3))
    """
    _checks.check_nonnegative("threshold", threshold)
    _checks.check_decay("b2", b2)
    _checks.check_count("interval", interval, lo=1)
    check_within_interval("spike_free_steps", spike_free_steps, interval)

    def init_fn(params):
        return ClipBySecondMomentState(
            count=jnp.zeros([], jnp.int32),
            rms=optax.tree.zeros_like(params, dtype=jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.rms, "the second moment")
        keep, clip, bound = spike_schedule(state.count, threshold, interval, spike_free_steps)
        out = jax.tree.map(clip, updates, state.rms)
        # The clipped updates leave as a buffer of their own, written before sqrt(v) is
        # written over the one they read (the optimizer after this reads them later).
        out, rms = signed_second_moment(updates, state.rms, out, bound, b2, keep)
        return out, ClipBySecondMomentState(
            count=optax.safe_increment(state.count),
            rms=optax.tree.cast_like(rms, state.rms),
        )

    return optax.GradientTransformation(init_fn, update_fn)


class ResetPeriodicallyState(NamedTuple):
    """State of :func:`reset_periodically`: its step count and the inner state."""

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    inner_state: optax.OptState


def _is_count(leaf: object) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.integer)


def reset_periodically(
    inner: optax.GradientTransformation, interval: int = 500
) -> optax.GradientTransformationExtraArgs:
    """Resets ``inner``'s statistics every ``interval`` steps (SPAM's momentum reset).

    On step ``T`` (0-based) with ``(T + 1) % interval == 0`` the inner state's
    floating leaves (momenta, second moments) go back to what ``inner.init``
    gives, before ``inner`` takes the step; its integer leaves (step counts,
    and with them Adam's bias correction) are kept, as in SPAM.

    Args:
      inner: the optimizer whose state is reset.
      interval: steps between resets, an integer ``>= 1``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with state :class:`ResetPeriodicallyState`.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optclip.reset_periodically(optax.adam(1e-3), interval=2)
      >>> state = tx.init({"w": jnp.zeros(2)})
    """
    _checks.check_count("interval", interval, lo=1)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return ResetPeriodicallyState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        fresh = inner.init(updates)
        reset = reset_now(state.count, interval)
        inner_state = jax.tree.map(
            lambda old, new: (
                old if _is_count(old) else jnp.where(reset, new, old).astype(old.dtype)
            ),
            state.inner_state,
            fresh,
        )
        updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
        return updates, ResetPeriodicallyState(optax.safe_increment(state.count), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByResetWarmupState(NamedTuple):
    """State of :func:`scale_by_reset_warmup`: the step count."""

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count


def scale_by_reset_warmup(
    interval: int = 500, warmup_steps: int = 150
) -> optax.GradientTransformation:
    r"""SPAM's cosine warm-up after each reset: the update times ``s_T``.

    .. math:: s_T = 1 - 0.99\,\frac{1 + \cos(\pi \sigma / (W + 1))}{2}
              \text{ for } \sigma < W, \text{ else } 1

    with ``sigma = (T + 1) % interval`` the steps since the last reset (``T``
    0-based); 1 before the first reset.

    Args:
      interval: steps between resets, an integer ``>= 1``.
      warmup_steps: ``W``, an integer in ``[0, interval)``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByResetWarmupState`.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.scale_by_reset_warmup(interval=2, warmup_steps=1)
      >>> u, state = tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.zeros(1)}))
      >>> u, state = tx.update({"w": jnp.ones(1)}, state)  # the step of the first reset
      >>> round(float(u["w"][0]), 4)
      0.01
    """
    _checks.check_count("interval", interval, lo=1)
    check_within_interval("warmup_steps", warmup_steps, interval)

    def init_fn(params):
        del params
        return ScaleByResetWarmupState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        s = reset_warmup_scale(state.count, interval, warmup_steps)
        updates = jax.tree.map(lambda u: (u * s).astype(u.dtype), updates)
        return updates, ScaleByResetWarmupState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
