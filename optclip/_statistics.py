"""Statistics read from an optimizer state, wherever the transform that keeps them sits."""

from __future__ import annotations

import collections
import dataclasses
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

    Examples:
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
# Per-leaf values kept as one vector in the tree's leaf order (a tree would be sharded like the
# params): named by leaf only when `statistics` is given the tree.
_LEAF_VECTORS = {AdaGCState: ("gamma", "norms")}


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


def _is_state(x) -> bool:
    """A NamedTuple with fields: a transform's state (optax's empty ``MaskedNode`` is not)."""
    return isinstance(x, tuple) and bool(getattr(x, "_fields", ()))


def _is_vector(x, size: int) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and x.shape == (size,)


def _leaf_path(path: tuple) -> str:
    """A leaf's path in a tree as its statistics name it: entries joined by dots."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _per_leaf(tree) -> dict[str, jax.Array]:
    """``tree``'s leaves by path if it is a tree of scalars holding no state, else nothing."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_state)[0]
    if not flat or not all(_is_scalar(x) for _, x in flat):
        return {}
    return {_leaf_path(path): x for path, x in flat}


def _summary(leaves: list) -> dict[str, jax.Array]:
    mean = sum(jnp.sum(x, dtype=jnp.float32) for x in leaves) / sum(x.size for x in leaves)
    return {
        "threshold_mean": mean,
        "threshold_max": jnp.max(jnp.stack([jnp.max(x) for x in leaves])),
    }


def _of(state, names: list[str] | None) -> dict[str, jax.Array]:
    """The named scalars of one state (not of the states inside it); ``names``: leaf paths."""
    kind = type(state)
    hyperparams = getattr(state, "hyperparams", None)
    stats: dict[str, jax.Array] = {}
    for field, value in zip(state._fields, state, strict=True):
        if field in _SKIP.get(kind, ()):
            continue
        if _is_scalar(value):
            stats[field] = value
        elif isinstance(hyperparams, dict) and value is hyperparams:  # inject_hyperparams
            stats |= {k: v for k, v in hyperparams.items() if _is_scalar(v)}
        else:
            stats |= {f"{field}/{path}": x for path, x in _per_leaf(value).items()}
    if isinstance(getattr(kind, "clip_fraction", None), property):  # ACClip's, SPAM's: derived
        stats["clip_fraction"] = state.clip_fraction
    leaves = jax.tree.leaves(getattr(state, _THRESHOLDS.get(kind, ""), None))
    if leaves:
        stats |= _summary(leaves)
    for field in _LEAF_VECTORS.get(kind, ()):
        vector = getattr(state, field)
        if names is not None and _is_vector(vector, len(names)):  # a label's is shorter
            stats |= {f"{field}/{name}": vector[i] for i, name in enumerate(names)}
    return stats


@dataclasses.dataclass
class _Found:
    """A state found in the walk, its scope, and (once named) its statistics and key prefix."""

    scope: tuple[str, ...]
    state: Any
    stats: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    prefix: str = ""


def _walk(node, scope: tuple[str, ...], before: list, after: list) -> None:
    """Every state inside ``node`` with its scope (the dict keys on the way: ``named_chain``'s
    names, ``multi_transform``'s labels), in chain order (``before``: a wrapper before what it
    wraps) and in the order updates finish (``after``: the wrapped states first)."""
    if _is_state(node):
        entry = _Found(scope, node)
        before.append(entry)
        for value in node:
            _walk(value, scope, before, after)
        after.append(entry)
    elif isinstance(node, tuple | list):
        for value in node:
            _walk(value, scope, before, after)
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, (*scope, str(key)), before, after)


def _unboxed(tree):
    """``tree`` with Flax NNX's variables replaced by the arrays they hold."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree
    is_var = lambda x: isinstance(x, nnx.Variable)
    value = lambda v: v.get_value() if hasattr(v, "get_value") else v.value
    return jax.tree.map(lambda x: value(x) if is_var(x) else x, tree, is_leaf=is_var)


def statistics(
    opt_state: optax.OptState, params: optax.Params | None = None
) -> dict[str, jax.Array]:
    """Every statistic an optimizer state keeps, as a flat mapping of named scalars.

    Reads any optimizer state of optclip or optax, however chained or wrapped
    (``optax.chain``, ``optax.named_chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ``optax.apply_if_finite``, ``optax.multi_transform``,
    ``skip_step``, ``record_norms``, a Flax NNX ``Optimizer``'s ``opt_state``),
    under ``jax.jit`` or outside it. Each state contributes its scalars (a
    norm, a clip fraction, a count, a skip flag, an injected hyperparameter),
    one value per leaf of each field that is a tree of scalars (the per-leaf
    norms of :func:`record_norms`), and, where it keeps per-coordinate or
    per-leaf thresholds, their mean and maximum (``threshold_mean``,
    ``threshold_max``); a ``clip_fraction`` a state derives (ACClip's, SPAM's) is read too.

    A key is ``[<scope>/]<transform>/<statistic>[/<leaf>]``. ``<transform>``
    names the transform that keeps the state (``clip_by_global_norm``,
    ``acclip``; another library's state is named from its class:
    ``ScaleByAdamState`` gives ``scale_by_adam``); a second link of the same
    kind in one scope is ``<transform>_1``, a third ``<transform>_2``, a
    wrapped link counted before its wrapper. ``<scope>``: the
    ``optax.named_chain`` names and ``optax.multi_transform`` labels around the
    state, joined by ``/``. ``<leaf>``: the leaf's path in the parameter tree,
    entries joined by dots (``layers.0.kernel``). No key holds a position in
    the chain, so adding or wrapping links keeps every key, except that a link
    added in front of one of its own kind renames it; naming links with
    ``optax.named_chain`` pins every key (``docs/design.md``).

    Args:
      opt_state: an optimizer state.
      params: optional, the parameter tree (or any tree of its structure, such
        as the gradients); given, the per-leaf values a state keeps as one
        vector in leaf order (AdaGC's ``gamma`` and ``norms``) get one key per
        leaf too. Flax NNX variables are read as their values.

    Returns:
      A ``dict`` from key to scalar array (in chain order outside ``jax.jit``;
      a jitted function returns it sorted by key); empty if the state keeps no
      scalar (``generalized_signsgd`` keeps only its two moments).
      ``jax.device_get`` turns it into numbers for a logger.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.gclip(0.1, 2.0))
      >>> params = {"w": jnp.zeros(2)}
      >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> {k: float(v) for k, v in optclip.statistics(state).items() if k.endswith("norm")}
      {'clip_by_global_norm/norm': 5.0, 'clip_by_global_norm_1/norm': 1.0}
    """
    names = None
    if params is not None:
        flat = jax.tree_util.tree_flatten_with_path(_unboxed(params))[0]
        names = [_leaf_path(path) for path, _ in flat]
    before: list[_Found] = []
    after: list[_Found] = []
    _walk(_unboxed(opt_state), (), before, after)
    for found in before:
        found.stats = _of(found.state, names)
    seen: collections.Counter = collections.Counter()
    for found in after:  # a wrapped link is numbered before its wrapper
        if found.stats:
            kind = _name(found.state)
            n = seen[found.scope, kind]
            seen[found.scope, kind] += 1
            found.prefix = "/".join((*found.scope, kind if n == 0 else f"{kind}_{n}"))
    out: dict[str, jax.Array] = {}
    for found in before:
        out |= {f"{found.prefix}/{k}": v for k, v in found.stats.items()}
    return out
