"""Statistics read from an optimizer state, wherever the transform that keeps them sits."""

from __future__ import annotations

import collections
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip._acclip import ScaleByACClipState
from optclip._acclip_threshold import AlphaMomentThresholdState
from optclip._adagc import AdaGCState
from optclip._coordinate_clip import ClipCoordinatewiseState
from optclip._global_clip import ClipByGlobalNormState
from optclip._normalize import NormalizeByGlobalNormState, ScaleByClipMomentumState
from optclip._skip_step import SkipStepState
from optclip._spam import ScaleBySpamState
from optclip._spam_pieces import ClipBySecondMomentState
from optclip._states import find_state
from optclip._stochastic_ingd import StochasticIngdState
from optclip._zclip import ZClipState

# The states that say how much of the last update they clipped: the coordinate-wise clips keep a
# fraction; a global-norm clip and ZClip clip the whole update or nothing; AdaGC, whole leaves.
_COORDINATE_STATES = (
    ScaleByACClipState,
    ClipCoordinatewiseState,
    ScaleBySpamState,
    ClipBySecondMomentState,
)
_WHOLE_STATES = (ClipByGlobalNormState, ZClipState, AdaGCState)


def clip_fraction(opt_state: optax.OptState) -> jax.Array:
    """Fraction of coordinates clipped at the last step, read from any optimizer state.

    Looks inside ``opt_state``, however deeply chained or wrapped
    (``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
    ...), and returns the fraction of coordinates clipped at the last step by
    the first coordinate-wise clip in chain order (ACClip, ``cclip``, SPAM's
    spike clip), wherever a clip of whole updates sits. Without one, the first
    clip of whole updates or leaves:
    a global-norm clip (``gclip``, ``clipped_gd``) and ZClip clip all of them or
    none (1 or 0); AdaGC, the coordinates of the leaves it scaled down. For
    every statistic of every link of a chain, see :func:`statistics`.

    Args:
      opt_state: an optimizer state holding one of those states.

    Returns:
      A float32 scalar in ``[0, 1]``.

    Raises:
      ValueError: if ``opt_state`` holds no such state.

    Example:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.acclip(0.1, initial_threshold=0.0)
      >>> params = {"w": jnp.ones(4)}
      >>> _, state = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
      >>> float(optclip.clip_fraction(state))
      1.0
    """
    coordinates: Any = find_state(opt_state, _COORDINATE_STATES)
    if coordinates is not None:
        return coordinates.clip_fraction
    whole: Any = find_state(opt_state, _WHOLE_STATES)
    if whole is not None:
        return whole.clipped
    raise ValueError(
        "`opt_state` holds no ACClip, coordinate-wise clipping, SPAM, global-norm clipping, "
        "ZClip or AdaGC state to read a clip fraction from."
    )


# What `statistics` calls each state: the transform that keeps it. States of other libraries
# (optax's, a user's) are named from their class: `ScaleByAdamState` -> "scale_by_adam".
_NAMES: dict[type, str] = {
    ClipByGlobalNormState: "clip_by_global_norm",
    NormalizeByGlobalNormState: "normalize_by_global_norm",
    ScaleByClipMomentumState: "clip_momentum",
    ScaleByACClipState: "acclip",
    AlphaMomentThresholdState: "alpha_moment_threshold",
    ClipCoordinatewiseState: "clip_coordinatewise",
    ZClipState: "zclip",
    AdaGCState: "adagc",
    ScaleBySpamState: "spam",
    ClipBySecondMomentState: "clip_by_second_moment",
    SkipStepState: "skip_step",
    StochasticIngdState: "stochastic_ingd",
    optax.InjectHyperparamsState: "hyperparams",
    optax.InjectStatefulHyperparamsState: "hyperparams",
}
# Scalars a state keeps that say nothing about the run: a constant, a random key.
_SKIP = {ScaleByACClipState: {"eps"}, StochasticIngdState: {"key"}}
# Per-coordinate thresholds, summarized: (the state, the field that holds them).
_THRESHOLDS = {ScaleByACClipState: "tau", AlphaMomentThresholdState: "tau", AdaGCState: "gamma"}


def _name(state) -> str:
    if type(state) in _NAMES:
        return _NAMES[type(state)]
    stem = type(state).__name__.removesuffix("State")
    stem = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", stem)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", stem).lower()


def _is_scalar(x) -> bool:
    return (
        isinstance(x, jax.Array | np.ndarray | np.generic)
        and x.ndim == 0
        and (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_)
    )


def _of(state) -> dict[str, jax.Array]:
    """The named scalars of one state (not of the states inside it)."""
    kind = type(state)
    stats = {
        f: v
        for f, v in zip(state._fields, state, strict=True)
        if _is_scalar(v) and f not in _SKIP.get(kind, ())
    }
    if isinstance(getattr(state, "hyperparams", None), dict):  # optax.inject_hyperparams
        stats |= {k: v for k, v in state.hyperparams.items() if _is_scalar(v)}
    if kind is ScaleByACClipState:
        stats["clip_fraction"] = state.clip_fraction
    leaves = jax.tree.leaves(getattr(state, _THRESHOLDS.get(kind, ""), None))
    if leaves:
        stats["threshold_mean"] = sum(jnp.sum(x, dtype=jnp.float32) for x in leaves) / sum(
            x.size for x in leaves
        )
        stats["threshold_max"] = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
    return stats


def _states(node, path: tuple[str, ...], out: list) -> None:
    """Every NamedTuple state inside ``node`` with the path that leads to it, in chain order."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        out.append((path, node))
        for field, value in zip(node._fields, node, strict=True):
            _states(value, (*path, field), out)
    elif isinstance(node, tuple | list):
        for i, value in enumerate(node):
            _states(value, (*path, str(i)), out)
    elif isinstance(node, dict):  # optax.multi_transform's labels
        for key, value in node.items():
            _states(value, (*path, str(key)), out)


def _unboxed(opt_state):
    """``opt_state`` with Flax NNX's variables replaced by the arrays they hold."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return opt_state
    is_var = lambda x: isinstance(x, nnx.Variable)
    value = lambda v: v.get_value() if hasattr(v, "get_value") else v.value
    return jax.tree.map(lambda x: value(x) if is_var(x) else x, opt_state, is_leaf=is_var)


def statistics(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Every statistic an optimizer state keeps, as a flat mapping of named scalars.

    Reads any optimizer state of optclip or optax, however chained or wrapped
    (``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
    ``optax.apply_if_finite``, ``optax.multi_transform``, ``skip_step``, a Flax
    NNX ``Optimizer``'s ``opt_state``), under ``jax.jit`` or outside it. Each
    state contributes its scalars (a norm, a clip fraction, a count, a skip
    flag, an injected hyperparameter) and, where it keeps per-coordinate or
    per-leaf thresholds, their mean and maximum (``threshold_mean``,
    ``threshold_max``); ACClip's ``clip_fraction`` is derived from its state.

    Keys are ``"<transform>/<statistic>"``, where ``<transform>`` names the
    transform that keeps the state (``"clip_by_global_norm"``, ``"acclip"``,
    ``"zclip"``; a state of another library is named from its class:
    ``ScaleByAdamState`` gives ``"scale_by_adam"``). When several links of a
    chain keep the same kind of state, each of their keys starts with its path
    in the state, indices and field names joined by dots:
    ``"0/clip_by_global_norm/norm"`` and ``"1.0/clip_by_global_norm/norm"``
    for ``optax.chain(clip_by_global_norm(1.0), gclip(0.1, 2.0))``.

    Args:
      opt_state: an optimizer state.

    Returns:
      A ``dict`` from key to scalar array (in chain order outside ``jax.jit``;
      a jitted function returns it sorted by key); empty if the state keeps no
      scalar (``generalized_signsgd`` keeps only its two moments).
      ``jax.device_get`` turns it into numbers for a logger.

    Example:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.gclip(0.1, 2.0))
      >>> params = {"w": jnp.zeros(2)}
      >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> {k: float(v) for k, v in optclip.statistics(state).items() if k.endswith("norm")}
      {'0/clip_by_global_norm/norm': 5.0, '1.0/clip_by_global_norm/norm': 1.0}
    """
    found: list = []
    _states(_unboxed(opt_state), (), found)
    named = [(path, _name(state), _of(state)) for path, state in found]
    named = [(path, name, stats) for path, name, stats in named if stats]
    counts = collections.Counter(name for _, name, _ in named)
    out: dict[str, jax.Array] = {}
    for path, name, stats in named:
        prefix = f"{'.'.join(path)}/{name}" if counts[name] > 1 and path else name
        out |= {f"{prefix}/{k}": v for k, v in stats.items()}
    return out
