"""Where an optimizer's state lives on a mesh: with the parameters, or sharded over data.

Data-parallel training replicates the parameters on every device of the data
axis; an Adam-like state (two parameter-sized leaves) replicated the same way
is most of the memory. :func:`state_shardings` lays each parameter-shaped state
leaf out like its parameter and, where the parameter is not split over the
data axis, splits the leaf over that axis as well (ZeRO stage 1). Training is
unchanged: the update is element-wise in the state, so XLA computes each
device's slice where it is stored and gathers only the parameter update, as
long as the step pins the parameters' output shardings (``out_shardings``);
otherwise propagation may return them in the state's split layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import chex
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optclip._grouping import GroupSmallLeavesState
from optclip._states import find_state


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A parameter's partition spec and shape, held as one pytree leaf."""

    spec: tuple[object, ...]
    shape: tuple[int, ...]


def _axes(entry: object) -> tuple[str, ...]:
    """The mesh axes one dimension of a partition spec is split over."""
    if entry is None:
        return ()
    return tuple(str(a) for a in entry) if isinstance(entry, tuple | list) else (str(entry),)


def _param_layout(path: jax.tree_util.KeyPath, param: object, mesh: Mesh) -> _Layout:
    """The partition spec of ``param`` on ``mesh``; a replicated one when it has none."""
    name = "params" + jax.tree_util.keystr(path)
    ndim = len(getattr(param, "shape", ()))
    sharding = getattr(param, "sharding", None)
    shape = tuple(getattr(param, "shape", ()))
    if sharding is None or (
        not isinstance(sharding, NamedSharding) and sharding.is_fully_replicated
    ):
        return _Layout((None,) * ndim, shape)
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            f"state_shardings: {name} is split by a "
            f"{type(sharding).__name__}; give sharded parameters a jax.sharding.NamedSharding"
        )
    # Axis names, sizes and devices all equal: the spec's axes are then the mesh's too.
    own, given = (np.asarray(m.device_ids).ravel().tolist() for m in (sharding.mesh, mesh))
    if sharding.mesh.shape != mesh.shape or own != given:
        raise ValueError(
            f"state_shardings: {name} is sharded on a mesh with axes "
            f"{dict(sharding.mesh.shape)} and devices {own}, not on the given mesh "
            f"({dict(mesh.shape)}, devices {given})"
        )
    return _Layout(tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec)), shape)


def _split_over(
    spec: tuple[object, ...], shape: tuple[int, ...], axis: str, sizes: Mapping[str, int]
) -> P:
    """``spec`` with ``axis`` added to the first dimension whose shard count it still divides."""
    if any(axis in _axes(e) for e in spec):
        return P(*spec)  # the parameter is split over the data axis already (FSDP)
    # A dimension nobody splits yet first, then one split over other axes.
    for free in (True, False):
        for d, (entry, n) in enumerate(zip(spec, shape, strict=True)):
            if (entry is None) != free:
                continue
            axes = (*_axes(entry), axis)
            if n % math.prod(sizes[a] for a in axes) == 0:
                return P(*spec[:d], axes[0] if len(axes) == 1 else axes, *spec[d + 1 :])
    return P(*spec)  # too small or indivisible: the leaf stays with its parameter


def state_shardings(
    optimizer: optax.GradientTransformation | optax.MultiSteps,
    params: chex.ArrayTree,
    mesh: Mesh,
    *,
    data_axis: str | None = "data",
) -> chex.ArrayTree:
    """Shardings for ``optimizer.init(params)``: parameter-shaped state split, the rest replicated.

    Each state leaf that mirrors a parameter (momenta, second moments,
    coordinate-wise thresholds, :class:`optax.MultiSteps`' accumulators) gets
    the parameter's partition spec, plus ``data_axis`` on the first dimension
    that the data-axis size divides when the parameter is not split over that
    axis already:

    * parameters sharded over ``data_axis`` (FSDP): the state follows them;
    * parameters replicated over ``data_axis`` (plain data parallelism or
      tensor parallelism on other axes): the state is split ``|data_axis|``
      ways, ZeRO stage 1, so each device holds ``1/|data_axis|`` of it;
    * a leaf with no dimension the data-axis size divides stays with its
      parameter.

    A state subtree mirrors the parameters when it has their tree structure
    (leaves that ``optax.partition`` or ``optax.masked`` leave out, its
    ``MaskedNode``s, count as leaves and stay ``MaskedNode``s); in it, a leaf
    of its parameter's shape is placed as above and any other leaf (a scalar
    per parameter, as :func:`optclip.scale_by_lmo` and
    :func:`optclip.record_norms` keep) is replicated. Counts, scalar
    statistics and PRNG keys are replicated. The result is a
    pytree shaped like the state, for ``jax.jit(optimizer.init,
    out_shardings=...)``, the train step's ``out_shardings`` and orbax restore
    targets. Training is the same as with a replicated state: every transform
    is element-wise in its state, with norms reduced across shards.

    Args:
      optimizer: the optimizer: any ``optax.GradientTransformation``,
        including chains and wrappers such as ``optax.inject_hyperparams``,
        or an :class:`optax.MultiSteps`.
      params: the parameters: arrays or :class:`jax.ShapeDtypeStruct` with a
        :class:`~jax.sharding.NamedSharding` on ``mesh``; one without a
        sharding counts as replicated. A Flax NNX ``State`` of ``Param``s
        works as it is; the result then holds ``Param``s around the
        shardings, which ``nnx.as_pure`` strips (``docs/nnx_sharding.md``).
      mesh: the device mesh the parameters live on.
      data_axis: the mesh axis the batch is split over, or ``None`` for state
        that only follows the parameters.

    Returns:
      A pytree of :class:`~jax.sharding.NamedSharding` with the state's structure.

    Raises:
      ValueError: ``data_axis`` is not an axis of ``mesh``, or a parameter is
        sharded on a different mesh.
      TypeError: ``optimizer`` is not a gradient transformation, or a sharded
        parameter has no ``NamedSharding``.

    Examples:
      >>> import jax, optax, optclip
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> params = {"w": jax.device_put(jax.numpy.zeros((4, 3)), NamedSharding(mesh, P()))}
      >>> tx = optclip.acclip(1e-3, rms_scale=True)
      >>> shardings = optclip.state_shardings(tx, params, mesh)
      >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
      >>> state[0].mu["w"].sharding.spec == P("data", None)
      True

    References:
      Rajbhandari et al., "ZeRO: memory optimizations toward training trillion
      parameter models", SC 2020 (stage 1: partitioned optimizer states).
    """
    if not callable(getattr(optimizer, "init", None)):
        raise TypeError(
            f"state_shardings: optimizer must be an optax.GradientTransformation (or another "
            f"object with an init, such as optax.MultiSteps), got "
            f"{optimizer!r} (a {type(optimizer).__name__})"
        )
    if not isinstance(mesh, Mesh):
        raise TypeError(f"state_shardings: mesh must be a jax.sharding.Mesh, got {mesh!r}")
    if data_axis is not None and data_axis not in mesh.axis_names:
        raise ValueError(
            f"state_shardings: data_axis must be one of the mesh's axes "
            f"{list(mesh.axis_names)} or None, got {data_axis!r}"
        )
    layouts = jax.tree_util.tree_map_with_path(lambda k, p: _param_layout(k, p, mesh), params)
    abstract = jax.eval_shape(optimizer.init, params)
    if find_state(abstract, GroupSmallLeavesState) is not None:
        # Replicating the packed buffers would silently undo the sharding asked for.
        raise TypeError(
            "state_shardings: the state holds group_small_leaves' packed buffers, which are "
            "not shaped like the parameters, so it cannot place it; use the inner "
            "transformation with state_shardings."
        )
    return _shardings(abstract, layouts, mesh, data_axis)


def _shardings(
    abstract: chex.ArrayTree, layouts: chex.ArrayTree, mesh: Mesh, data_axis: str | None
) -> chex.ArrayTree:
    """Each subtree of the abstract state with the params' structure placed leaf by leaf,
    every other leaf replicated."""
    replicated = NamedSharding(mesh, P())
    param_def = jax.tree.structure(layouts)

    def mirrors(node: object) -> bool:
        structure = jax.tree.structure(node, is_leaf=_is_masked)
        return bool(structure == param_def)  # type: ignore[operator]

    def assign(node: object) -> object:
        if not mirrors(node):
            return replicated
        flat = jax.tree.leaves(node, is_leaf=_is_masked)
        placed = [
            _place(x, lay, mesh, data_axis)
            for x, lay in zip(flat, jax.tree.leaves(layouts), strict=True)
        ]
        return jax.tree.unflatten(param_def, placed)

    return jax.tree.map(assign, abstract, is_leaf=mirrors)


def _place(leaf: object, layout: _Layout, mesh: Mesh, data_axis: str | None) -> object:
    """The sharding of one state leaf in a subtree that mirrors the parameters."""
    if isinstance(leaf, optax.MaskedNode):
        return leaf  # a leaf optax.partition or optax.masked leaves out
    if tuple(getattr(leaf, "shape", ())) != layout.shape:
        return NamedSharding(mesh, P())  # a per-leaf statistic (a scalar per parameter)
    if data_axis is None:
        return NamedSharding(mesh, P(*layout.spec))
    return NamedSharding(mesh, _split_over(layout.spec, layout.shape, data_axis, mesh.shape))


def _is_masked(x: object) -> bool:
    return isinstance(x, optax.MaskedNode)
