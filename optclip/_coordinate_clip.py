"""Coordinate-wise clipping (CClip): each coordinate clipped to its own threshold."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import clip_factor
from optclip._types import Scalar, Threshold, at_step


class ClipCoordinatewiseState(NamedTuple):
    """State of :func:`clip_coordinatewise`.

    Attributes:
      count: number of updates seen (drives a scheduled threshold).
      clip_fraction: fraction of coordinates clipped in the last update.
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    clip_fraction: jax.Array


def coordinate_clip(
    u: jax.Array, tau: jax.typing.ArrayLike, eps: Scalar = 0.0
) -> tuple[jax.Array, jax.Array]:
    r"""``min(tau / (|u| + eps), 1) * u`` element-wise, and the mask of changed coordinates.

    The shared core of CClip and ACClip. Computed in float32 and returned in
    ``u``'s dtype. A NaN or inf coordinate gives a NaN coordinate (the package
    rule), never ``+-tau``.

    Args:
      u: the array to clip.
      tau: thresholds ``>= 0``, broadcastable to ``u``.
      eps: ``>= 0``, added to ``|u|`` before the comparison.

    Returns:
      ``(clipped, mask)``: the clipped array and where the clip changed it.
    """
    u32 = u.astype(jnp.promote_types(u.dtype, jnp.float32))
    magnitude = jnp.abs(u32) + eps
    tau = jnp.asarray(tau, magnitude.dtype)
    clipped = u32 * clip_factor(magnitude, tau)
    # A zero coordinate is left as it is, so it never counts as clipped.
    return clipped.astype(u.dtype), (magnitude > tau) & (u32 != 0)


def count_above(updates: optax.Updates, tau: chex.ArrayTree, zero: jax.Array) -> jax.Array:
    """How many coordinates have ``|u| > tau``, read without a parameter-sized mask.

    XLA:CPU writes a comparison's mask out before any sum of it, and a reduction takes into its
    loop no operand that another instruction uses too: so the count is written in arithmetic
    the CPU backend's reduction fuses (``min(ceil(max(|u| - tau, 0)), 1)`` is 1 exactly where
    ``|u| > tau``), and each leaf's operands and scalars pass through an optimization barrier of
    their own, so that no common-subexpression elimination merges them with the clip's or with
    another leaf's of the same shape (``docs/design.md``). A leaf's float32 sum is exact below
    2^24 (16.7M) coordinates, in any order. A NaN coordinate makes the count NaN.

    Args:
      updates: the tree whose coordinates are counted.
      tau: thresholds ``>= 0``: one for all leaves, or a tree of per-leaf (or per-element) ones.
      zero: a float32 zero computed at run time (the compiler folds a constant through a
        barrier, and then merges the broadcasts of equal leaves).

    Returns:
      The count, a float32 scalar.
    """

    def leaf(u, t):
        u, t, z = jax.lax.optimization_barrier((u, jnp.asarray(t, jnp.float32), zero))
        excess = jnp.abs(u).astype(jnp.float32) - (t + z)
        return jnp.sum(jnp.minimum(jnp.ceil(jnp.maximum(excess, z)), z + 1.0))

    return sum(jax.tree.leaves(map_threshold(leaf, updates, tau)), jnp.zeros((), jnp.float32))


def check_threshold_tree(threshold: Threshold, params: optax.Params) -> None:
    """A threshold tree must match the params' structure and broadcast to each leaf."""
    if callable(threshold) or jax.tree_util.treedef_is_leaf(jax.tree.structure(threshold)):
        return
    t_struct = jax.tree.structure(threshold)
    p_struct = jax.tree.structure(params)
    if t_struct != p_struct:  # type: ignore[operator]  # PyTreeDef compares at run time
        raise ValueError(
            "`threshold` must be a scalar, a schedule, or a pytree with the same "
            f"structure as the params; got structure {t_struct} for params {p_struct}."
        )
    paths = jax.tree_util.tree_leaves_with_path(params)
    for t, (path, p) in zip(jax.tree.leaves(threshold), paths, strict=True):
        try:
            jnp.broadcast_shapes(jnp.shape(t), jnp.shape(p))
        except ValueError as e:
            raise ValueError(
                f"`threshold` leaf {jax.tree_util.keystr(path)} of shape {jnp.shape(t)} does "
                f"not broadcast to the parameter shape {jnp.shape(p)}."
            ) from e


def map_threshold(
    fn: Callable[[jax.Array, jax.typing.ArrayLike], chex.ArrayTree],
    updates: optax.Updates,
    tau: chex.ArrayTree,
) -> chex.ArrayTree:
    """Applies ``fn(u, tau_leaf)`` with a scalar threshold or a per-leaf threshold tree."""
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(tau)):  # one leaf: broadcast it
        return jax.tree.map(lambda u: fn(u, tau), updates)
    return jax.tree.map(fn, updates, tau)


def clip_coordinatewise(
    threshold: Threshold, *, track_clip_fraction: bool = True
) -> optax.GradientTransformation:
    r"""Clips every coordinate to ``[-tau_i, tau_i]`` (CClip).

    .. math:: \hat u_i = \min\left(1, \frac{\tau_i}{|u_i|}\right) u_i

    With momentum in front this is CClip of Zhang et al. (2020): each
    coordinate has its own threshold, and under coordinate-wise heavy-tailed
    noise with scales ``B_i`` the error bound scales with ``||B||_2^2`` instead
    of GClip's ``d ||B||_alpha^2``.

    Args:
      threshold: ``tau >= 0``: a float for all coordinates, a pytree of floats
        or arrays matching the params (one threshold per leaf or per
        element), or a schedule of the step count returning either.
      track_clip_fraction: keyword-only; compute ``state.clip_fraction`` at
        every step, a count that reads the update a second time (no
        parameter-sized mask; ``docs/performance.md`` has its cost). A NaN
        coordinate makes it NaN. ``False`` leaves the field at 0.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`ClipCoordinatewiseState` (the fraction of clipped coordinates
      is in ``state.clip_fraction``).

    Raises:
      ValueError: at construction for a negative or non-finite threshold; at
        ``init`` for a threshold tree that does not match the params.

    References:
      Zhang et al., 2020, https://arxiv.org/abs/1912.03194, eq. (CClip).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.clip_coordinatewise({"w": jnp.array([1.0, 10.0])})
      >>> s = tx.init({"w": jnp.zeros(2)})
      >>> u, s = tx.update({"w": jnp.array([-3.0, 3.0])}, s)
      >>> u["w"].tolist(), float(s.clip_fraction)
      ([-1.0, 3.0], 0.5)
    """
    _checks.check_threshold_leaves("threshold", threshold)
    _checks.check_flag("track_clip_fraction", track_clip_fraction)

    def init_fn(params):
        check_threshold_tree(threshold, params)
        return ClipCoordinatewiseState(
            count=jnp.zeros([], jnp.int32), clip_fraction=jnp.zeros([], jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        tau = at_step(threshold, state.count)
        clipped = map_threshold(lambda u, t: coordinate_clip(u, t)[0], updates, tau)
        fraction = state.clip_fraction
        if track_clip_fraction:  # |u| > tau, the clip's own test with eps = 0
            size = sum(jnp.size(u) for u in jax.tree.leaves(updates))
            zero = jnp.minimum(state.count, 0).astype(jnp.float32)  # the count is never negative
            fraction = count_above(updates, tau, zero) / max(1, size)
        return clipped, ClipCoordinatewiseState(
            count=optax.safe_increment(state.count), clip_fraction=fraction
        )

    return optax.GradientTransformation(init_fn, update_fn)
