"""Skip-step: a zero update and the inner state kept on a step whose norm or loss is an outlier."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import global_norm
from optclip._types import Scalar


class SkipStepState(NamedTuple):
    """State of :func:`skip_step`.

    Attributes:
      count: steps seen, skipped or not.
      skipped: steps skipped so far (int32).
      skip: whether the last step was skipped (float32 0 or 1).
      norm: global norm of the last incoming update.
      norms: the last ``window`` finite gradient norms (a ring buffer, float32).
      norms_seen: finite norms recorded so far (the buffer holds ``min(norms_seen, window)``).
      losses: the last ``window`` finite losses, when ``value`` is passed (float32).
      losses_seen: finite losses recorded so far.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    skipped: jax.Array
    skip: jax.Array
    norm: jax.Array
    norms: jax.Array
    norms_seen: jax.Array
    losses: jax.Array
    losses_seen: jax.Array
    inner_state: optax.OptState


class _Window(NamedTuple):
    values: jax.Array
    seen: jax.Array


def _outlier(window: _Window, x: jax.Array, sigma: Scalar, min_history: int):
    """Whether ``x`` exceeds the window's ``mean + sigma * std`` (sample std), and that bound.

    Never while the window has no spread (all its values equal): against such a window every
    larger one would be an outlier, recorded as the bound, which is the window's value again,
    so every later step would be skipped (64 zero gradients, or a loss constant for as long).
    """
    size = window.values.shape[0]
    n = jnp.minimum(window.seen, size)
    valid = jnp.arange(size) < n
    nf = jnp.maximum(n, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, window.values, 0.0)) / nf
    var = jnp.sum(jnp.where(valid, jnp.square(window.values - mean), 0.0)) / jnp.maximum(nf - 1, 1)
    bound = mean + sigma * jnp.sqrt(var)
    # The spread tested exactly: a float32 mean of equal values such as 7.77 is an ulp off, and
    # the variance of them a tiny positive number.
    spread = jnp.max(jnp.where(valid, window.values, -jnp.inf)) > jnp.min(
        jnp.where(valid, window.values, jnp.inf)
    )
    # A NaN or inf value compares false: it is never an outlier, so it reaches the inner
    # optimizer and the update (the numerics rule), and it is never recorded.
    return (n >= min_history) & spread & (x > bound), bound


def _record(window: _Window, x: jax.Array, outlier: jax.Array, bound: jax.Array) -> _Window:
    """``x`` (or, for an outlier, the bound it crossed) into the ring buffer, if finite."""
    finite = jnp.isfinite(x)
    entry = jnp.where(outlier, bound, x)
    slot = window.seen % window.values.shape[0]
    values = window.values.at[slot].set(jnp.where(finite, entry, window.values[slot]))
    return _Window(values, jnp.where(finite, window.seen + 1, window.seen))


def _check(window: object, sigma_factor: object, min_history: int | None) -> int:
    """Validates the arguments; returns the history needed before any skip."""
    if not isinstance(window, int) or isinstance(window, bool):
        raise TypeError(
            f"`window` must be a Python int (it sizes the state; under "
            f"optax.inject_hyperparams pass static_args=('window',)), got {window!r}."
        )
    _checks.check_count("window", window, lo=2)
    _checks.check_positive("sigma_factor", sigma_factor)
    history = max(2, window // 2) if min_history is None else min_history
    _checks.check_count("min_history", history, lo=2, hi=window, why=" (the window)")
    return history


def skip_step(
    inner: optax.GradientTransformation,
    window: int = 128,
    sigma_factor: Scalar = 6.0,
    min_history: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Skips a step whose gradient norm, or loss, is an outlier against a rolling window.

    With the last ``window`` recorded values of the gradient's global norm
    (and of the loss, when ``update`` gets it as ``value=loss``), a step is
    skipped when either value exceeds its window's

    .. math:: \bar x + \sigma \, s_x \qquad (\text{mean and sample standard deviation})

    once the window holds at least ``min_history`` values. A skipped step
    returns a zero update and leaves ``inner``'s state untouched; the state
    counts skipped steps (``skipped``; ``optclip.statistics(state)`` reads it
    as ``"skip_step/skipped"``, beside the inner optimizer's statistics). The
    defaults are Levanter's and OLMo-core's (a window of 128 steps, 6 sigma,
    active from half a window).

    Decisions (``docs/design.md``, "Spike-robust clipping"): an outlier enters
    its window as the bound it crossed, not as itself, so one spike cannot
    widen the window enough to let the next through (OLMo-core records it raw),
    while a lasting shift in scale moves the window, a bound at a time; a window
    of equal values skips nothing (it could never move). A non-finite norm or
    loss is never an outlier and never recorded: the NaN reaches ``inner`` and
    the update, so :func:`optax.apply_if_finite` around this wrapper rejects
    the step (OLMo-core skips it). A ``lax.cond`` runs
    ``inner`` only on a step it takes (``docs/performance.md`` has what a
    select of old and new state cost). Composes with :func:`optax.apply_if_finite`
    and :class:`optax.MultiSteps` (tested).

    Args:
      inner: the optimizer to guard.
      window: values kept per statistic, a Python integer ``>= 2`` (it sizes the state).
      sigma_factor: ``> 0``, standard deviations above the mean that make an outlier.
      min_history: values needed before any step is skipped, an integer in
        ``[2, window]``; ``window // 2`` if ``None``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (state :class:`SkipStepState`).

    References: OLMo-core's ``SkipStepAdamW``; Levanter's skip-step; MaxText's skip on spikes.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optclip.skip_step(optax.sgd(0.1), window=4, min_history=2)
      >>> state = tx.init({"w": jnp.zeros(1)})
      >>> for g in (1.0, 1.1, 0.9, 1.0):
      ...     _, state = tx.update({"w": jnp.array([g])}, state)
      >>> u, state = tx.update({"w": jnp.array([1e4])}, state)
      >>> float(u["w"][0]), int(state.skipped)
      (0.0, 1)
    """
    history = _check(window, sigma_factor, min_history)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        # A new array per field: a donated state may not hold one buffer twice.
        i, f, w = (
            (lambda: jnp.zeros([], jnp.int32)),
            (lambda: jnp.zeros([], jnp.float32)),
            (lambda: jnp.zeros([window], jnp.float32)),
        )
        return SkipStepState(i(), i(), f(), f(), w(), i(), w(), i(), inner.init(params))

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        _gradient_checks.check_dtypes(updates)
        norm = global_norm(updates)
        norms = _Window(state.norms, state.norms_seen)
        norm_out, norm_bound = _outlier(norms, norm, sigma_factor, history)
        skip = norm_out
        losses = _Window(state.losses, state.losses_seen)
        if value is not None:
            loss = jnp.asarray(value, jnp.float32)
            if loss.ndim != 0:
                raise ValueError(f"`value` must be the scalar loss, got shape {loss.shape}.")
            loss_out, loss_bound = _outlier(losses, loss, sigma_factor, history)
            skip = skip | loss_out
            losses = _record(losses, loss, loss_out, loss_bound)
            extra_args = dict(extra_args, value=value)
        norms = _record(norms, norm, norm_out, norm_bound)

        take = lambda g, s: inner.update(g, s, params, **extra_args)
        skipped = lambda g, s: (jax.tree.map(jnp.zeros_like, g), s)
        new_updates, inner_state = jax.lax.cond(skip, skipped, take, updates, state.inner_state)
        return new_updates, SkipStepState(
            count=optax.safe_increment(state.count),
            skipped=state.skipped + skip.astype(jnp.int32),
            skip=skip.astype(jnp.float32),
            norm=norm,
            norms=norms.values,
            norms_seen=norms.seen,
            losses=losses.values,
            losses_seen=losses.seen,
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
