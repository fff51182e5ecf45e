"""Small leaves packed into one flat buffer per dtype, so a step runs a few kernels for them.

A model's parameter tree holds a few large weight matrices and many small
leaves (biases, norm scales): 98 of GPT-2's 148 leaves have at most 2^16
entries and hold 0.1% of its parameters (ResNet-50: 126 of 161 leaves, 3%).
Each leaf costs its own kernels in a step, so those leaves cost launches, not
bytes.
:func:`group_small_leaves` hands its inner transformation the large leaves as
they are and the small ones concatenated by dtype; the inner state is kept in
that packed layout, and the update is split back into the caller's tree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip import _checks

_NOT_PARAM_SHAPED = (
    "group_small_leaves got {what}, not an array. Its optimizer state is packed into flat "
    "buffers that are not shaped like the parameters, so tools that map the state onto the "
    "parameters (optax.tree_map_params, optclip.state_shardings) cannot place it; use the "
    "inner transformation with those tools."
)


class GroupSmallLeavesState(NamedTuple):
    """State of :func:`group_small_leaves`: the inner state, on the packed buffers.

    Attributes:
      inner_state: the wrapped transformation's state.
    """

    inner_state: optax.OptState


class _Packing:
    """Which leaves of a tree are packed, and where each one sits in its group's buffer."""

    def __init__(self, tree: chex.ArrayTree, max_size: int | None, what: str):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        self.paths = [jax.tree_util.keystr(path) for path, _ in flat]
        self.leaves = [leaf for _, leaf in flat]
        self.sizes, self.shapes, self.groups = [], [], []
        for i, leaf in enumerate(self.leaves):
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise TypeError(
                    _NOT_PARAM_SHAPED.format(
                        what=f"leaf {i} of the {what}, a {type(leaf).__name__}"
                    )
                )
            size = math.prod(leaf.shape)
            packed = max_size is None or size <= max_size
            self.sizes.append(size)
            self.shapes.append(tuple(leaf.shape))
            self.groups.append(jnp.dtype(leaf.dtype).name if packed else None)

    def pack(self) -> tuple[tuple[jax.Array, ...], dict]:
        """The tree's large leaves as they are, and its small ones end to end per dtype."""
        large = tuple(x for x, g in zip(self.leaves, self.groups, strict=True) if g is None)
        small: dict[str, list[jax.Array]] = {}
        for x, g in zip(self.leaves, self.groups, strict=True):
            if g is not None:
                small.setdefault(g, []).append(jnp.ravel(x))
        return large, {g: jnp.concatenate(xs) for g, xs in small.items()}

    def unpack(self, packed: tuple[tuple[jax.Array, ...], dict]) -> list[jax.Array]:
        large, buffers = iter(packed[0]), packed[1]
        offsets = dict.fromkeys(buffers, 0)
        out = []
        for size, shape, g in zip(self.sizes, self.shapes, self.groups, strict=True):
            if g is None:
                out.append(next(large))
            else:
                out.append(jnp.reshape(buffers[g][offsets[g] : offsets[g] + size], shape))
                offsets[g] += size
        return out


def _check_not_split(packing: _Packing, what: str) -> None:
    """Packing concatenates small leaves, which is only right when each one is whole."""
    for path, leaf, g in zip(packing.paths, packing.leaves, packing.groups, strict=True):
        sharding = getattr(leaf, "sharding", None)
        if g is None or isinstance(leaf, jax.core.Tracer) or sharding is None:
            continue
        if not sharding.is_fully_replicated:
            raise ValueError(
                f"group_small_leaves: {what}{path} "
                f"(shape {tuple(leaf.shape)}) is split across devices ({sharding}); only "
                "whole leaves (one device, or replicated) can be packed. Lower max_size "
                "below its size so that it stays a leaf of its own, or leave it unwrapped."
            )


def _check_same_groups(ours: _Packing, params: _Packing) -> None:
    """The updates must pack like the params, which ``init`` packed the state like."""
    for path, mine, theirs in zip(ours.paths, ours.groups, params.groups, strict=True):
        if mine != theirs:
            raise TypeError(
                f"group_small_leaves: updates{path} is {mine} where its "
                f"param is {theirs}; the small leaves are packed by dtype, so an update must "
                "have its param's dtype."
            )


def group_small_leaves(
    inner: optax.GradientTransformation, max_size: int | None = 2**16
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``inner`` with every leaf of at most ``max_size`` entries packed by dtype.

    The inner transformation sees a tree of the large leaves, unchanged, and one
    flat buffer per dtype holding the small leaves end to end; its state keeps
    that layout. The update it returns is split back into the caller's tree. A
    step on a tree with many small leaves then runs one set of kernels for all
    of them instead of one per leaf, at the cost of copying the small leaves'
    gradients in and their updates out (``max_size`` bounds that copy).

    The result equals the inner transformation's on the unpacked tree for any
    transformation that treats coordinates independently or through whole-tree
    statistics: optclip's ACClip, CClip, GClip, generalized SignSGD, SPAM, the
    normalized and clipped methods, ZClip and Stochastic INGD, and optax's
    Adam, SGD and Signum families, global-norm clipping included (its sum is
    taken in another order, so it agrees to rounding). It is **wrong** for a
    transformation that looks at leaf shapes or per-leaf statistics: optclip's
    ``muon``, ``scion``, ``gluon`` and ``scale_by_lmo`` (a packed matrix is a
    vector to them: Muon would step it with AdamW), ``adagc`` and
    ``record_norms`` (one norm for the packed leaves), ``optax.adafactor``,
    LAMB's trust ratio, a ``mask`` or threshold given as a tree or as a function
    of the leaves: put those outside the wrapper, e.g.
    ``optax.chain(group_small_leaves(optclip.scale_by_acclip()),
    optax.add_decayed_weights(1e-4, mask), optax.scale_by_learning_rate(lr))``.

    Unlike :func:`optax.flatten`, which concatenates every leaf into one vector
    of a common dtype, leaves above ``max_size`` stay as they are (no copy) and
    each dtype keeps its own buffer. ``max_size=None`` packs every leaf.

    Small leaves must be whole on each device (unsharded or replicated); a small
    leaf split across devices raises a ``ValueError`` wherever its sharding is
    visible (outside ``jit``). Large leaves may be sharded. The packed state is
    not parameter-shaped, so :func:`optax.tree_map_params` and
    :func:`optclip.state_shardings` refuse it.

    Args:
      inner: the transformation to run on the packed tree.
      max_size: leaves with at most this many entries are packed (an int
        ``>= 0``), or ``None`` to pack every leaf.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is the
      inner transformation's state on the packed tree.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.ones((300, 300)), "b": jnp.ones(300), "scale": jnp.ones(300)}
      >>> tx = optclip.group_small_leaves(optclip.acclip(1e-3, rms_scale=True))
      >>> state = tx.init(params)
      >>> large, small = optax.tree.get(state, "mu")  # ACClip's momentum, packed
      >>> [x.shape for x in large], {k: x.shape for k, x in small.items()}
      ([(300, 300)], {'float32': (600,)})
      >>> updates, state = tx.update(params, state, params)
      >>> jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
      True
    """
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, int | np.integer):
            raise TypeError(
                f"group_small_leaves: max_size must be an int >= 0 or None, got "
                f"{max_size!r} (a {type(max_size).__name__})."
            )
        _checks.check_nonnegative("max_size", max_size)
    inner = optax.with_extra_args_support(inner)

    def packed(tree, what):
        packing = _Packing(tree, max_size, what)
        _check_not_split(packing, what)
        return packing, packing.pack()

    def init_fn(params):
        if not jax.tree.leaves(params) and not isinstance(params, dict | list | tuple):
            # optax.tree_map_params calls init with a leafless stand-in for the params.
            raise TypeError(_NOT_PARAM_SHAPED.format(what=f"a {type(params).__name__}"))
        return GroupSmallLeavesState(inner.init(packed(params, "params")[1]))

    def update_fn(updates, state, params=None, **extra_args):
        packing, flat_updates = packed(updates, "updates")
        flat_params = None
        if params is not None:
            param_packing, flat_params = packed(params, "params")
            _check_same_groups(packing, param_packing)
        flat_out, inner_state = inner.update(
            flat_updates, state.inner_state, flat_params, **extra_args
        )
        treedef = jax.tree.structure(updates)
        return jax.tree.unflatten(treedef, packing.unpack(flat_out)), GroupSmallLeavesState(
            inner_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
