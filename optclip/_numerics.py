"""The package-wide numerics rule and the helpers that implement it.

Every transform in optclip follows one rule (also in ``docs/numerics.md``):

1. **Non-finite in, NaN out.** If an incoming update holds NaN or +-inf, the
   outgoing update is NaN where the bad value reaches it (every coordinate for
   the global-norm transforms, that coordinate for coordinate-wise ones). A
   spike is never silently turned into a finite step, so
   :func:`optax.apply_if_finite` can reject the step and keep the old state.
2. **0/0 is the no-op value.** A clip factor ``min(1, tau / ||u||)`` with
   ``||u|| = 0`` is 1 (nothing to clip); a normalised or sign direction
   ``u / ||u||`` of a zero vector is 0.
3. **Finite in, finite out.** For any finite float32 input, norms, moments and
   thresholds are computed in forms that cannot overflow or underflow to the
   wrong answer: rescaled global norms, ``hypot``-form root-mean-squares and
   power means, so ``|g|^alpha`` and ``m^2`` are never formed directly.
4. **float32 statistics.** Norms and running statistics are accumulated in
   float32 whatever the leaf dtype; updates leave a transform in the dtype they
   entered it, and state leaves keep the dtype ``init`` gave them.
5. **Complex leaves by modulus.** Norms come from ``|x|^2``, clipping and
   thresholds from ``|x|``, and a complex leaf's momentum is complex (of the
   stored precision); magnitudes such as thresholds and RMS stay real.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from optclip._checks import static_value
from optclip._types import Scalar

# Below this sum of squares, float32 squares of the entries may have flushed
# to zero; the rescaled path gets the norm right there.
_SMALL_SQUARED_NORM = 1e-30


def _leaves(tree: chex.ArrayTree) -> list[jax.Array]:
    return [jnp.asarray(x) for x in jax.tree.leaves(tree)]


def _squares(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """``|scale * x|^2`` in float32, without the imaginary part's loss a cast would cause.

    ``scale`` (a power of two, so exact) multiplies after the cast to float32.
    """
    if jnp.iscomplexobj(x):
        x = x.astype(jnp.promote_types(x.dtype, jnp.complex64))
        re, im = x.real.astype(jnp.float32), x.imag.astype(jnp.float32)
        if scale != 1.0:
            re, im = re * scale, im * scale
        return jnp.square(re) + jnp.square(im)
    x = x.astype(jnp.float32)
    return jnp.square(x * scale if scale != 1.0 else x)


def _sum_of_squares(leaves: list[jax.Array], scale: float = 1.0) -> jax.Array:
    """``sum |scale * x|^2`` over every leaf, in float32."""
    return jnp.asarray(sum(jnp.sum(_squares(x, scale)) for x in leaves))


def _rescaled_norm(leaves: list[jax.Array]) -> jax.Array:
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in leaves]))
    # inf/NaN scales are left to produce a non-finite norm (rule 1).
    safe = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    # |x| only for complex leaves: on real leaves the extra abs kept XLA:CPU from fusing this
    # pass, which then wrote a parameter-sized temporary.
    ssq = sum(
        jnp.sum(jnp.square((jnp.abs(x) if jnp.iscomplexobj(x) else x).astype(jnp.float32) / safe))
        for x in leaves
    )
    return safe * jnp.sqrt(ssq)


def _usable(sq: jax.Array) -> jax.Array:
    """Whether a float32 sum of squares is the norm's square to float32 accuracy."""
    return jnp.isfinite(sq) & (sq >= _SMALL_SQUARED_NORM)


def _norm_with_fallback(leaves: list[jax.Array]) -> jax.Array:
    # One read in the common case, a second (max-rescaled) only when the sum is unusable.
    # A lax.cond is free on CPU, where its predicate already lives on the host.
    sq = _sum_of_squares(leaves)

    def rescaled(leaves):
        # The barrier keeps XLA from turning the cond into a select that runs both branches.
        return _rescaled_norm(jax.lax.optimization_barrier(leaves))

    return jax.lax.cond(_usable(sq), lambda leaves: jnp.sqrt(sq), rescaled, leaves)


# Sums of (2^-96 x)^2 and (2^96 x)^2 cover the norms whose plain sum of squares overflows or
# underflows float32: 2^-96 maps the largest float32 to 2^32 (its square, summed over up to
# 2^60 entries, stays finite) and flushes only |x| < 2^33, which a norm above 2^64 cannot
# see; 2^96 lifts every nonzero float32 (|x| >= 2^-149) above the flush-to-zero range, and a
# plain sum below 1e-30 keeps the lifted one far from overflow.
_DOWN, _UP = 2.0**-96, 2.0**96


def _norm_in_one_pass(leaves: list[jax.Array]) -> jax.Array:
    # Three sums of one read and no control flow: XLA fuses sibling reductions of a leaf into
    # one kernel on accelerators, where a lax.cond would stop the host every step to read its
    # predicate (the GPU conditional copies it to the host and waits for the stream).
    sq, down, up = (_sum_of_squares(leaves, s) for s in (1.0, _DOWN, _UP))
    # A NaN sum fails both tests and reaches `up`, NaN too; an infinite entry makes `down`
    # infinite (rule 1).
    rescued = jnp.where(sq > 1.0, jnp.sqrt(down) * _UP, jnp.sqrt(up) * _DOWN)
    return jnp.where(_usable(sq), jnp.sqrt(sq), rescued)


def global_norm(tree: chex.ArrayTree) -> jax.Array:
    """Euclidean norm of all leaves of ``tree`` as a float32 scalar.

    The norm of any finite float32 tree is finite and accurate (even with
    entries near float32's largest or smallest values), and a tree holding NaN
    or inf has a non-finite norm. How, depends on the backend (picked when the
    program is compiled, with :func:`jax.lax.platform_dependent`):

    * CPU: one fused read of the tree for a float32 sum of squares; only when
      that sum overflowed, underflowed or is not finite, a ``lax.cond`` runs a
      max-rescaled second pass.
    * GPU, TPU and others: one read without control flow. Each leaf's kernel
      also sums the squares of ``2^-96 x`` and ``2^96 x``, and the sum that did
      not overflow or underflow gives the norm.

    Args:
      tree: a pytree of arrays.

    Returns:
      A float32 scalar.
    """
    leaves = _leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jax.lax.platform_dependent(leaves, cpu=_norm_with_fallback, default=_norm_in_one_pass)


def momentum_zeros(params: optax.Params, dtype: jax.typing.DTypeLike) -> optax.Updates:
    """Zeros shaped like ``params`` in ``dtype``, made complex for complex leaves (rule 5)."""

    def zeros(p):
        leaf_dtype = jnp.result_type(p)
        if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
            return jnp.zeros_like(p, dtype=jnp.promote_types(dtype, leaf_dtype))
        return jnp.zeros_like(p, dtype=dtype)

    return jax.tree.map(zeros, params)


def clip_factor(norm: jax.typing.ArrayLike, threshold: jax.typing.ArrayLike) -> jax.Array:
    """``min(1, threshold / norm)`` with ``0/0 = 1`` and NaN kept.

    Element-wise, so it serves both a global norm and per-coordinate
    magnitudes. Where ``norm > threshold >= 0`` the division is safe; where the
    norm is NaN the comparison is false and the factor is 1, so the NaN in the
    update itself survives. An infinite norm gives factor 0, and ``0 * inf``
    makes the update NaN (rule 1).

    Args:
      norm: a norm or magnitudes ``>= 0`` (or NaN/inf).
      threshold: ``tau >= 0``, broadcastable to ``norm``.

    Returns:
      The factor, shaped like ``norm`` broadcast with ``threshold``.
    """
    norm = jnp.asarray(norm)
    threshold = jnp.asarray(threshold, dtype=jnp.result_type(norm, jnp.float32))
    clipped = norm > threshold
    return jnp.where(clipped, threshold / jnp.where(clipped, norm, 1.0), 1.0)


def safe_divide(numerator: jax.typing.ArrayLike, denominator: jax.typing.ArrayLike) -> jax.Array:
    """``numerator / denominator`` with ``x / 0 = 0`` for the 0/0 rule.

    Callers only divide by a denominator that is zero when the numerator is
    zero too (a norm or an RMS of the numerator), so ``x/0 -> 0`` is the 0/0
    rule. NaN in either argument still gives NaN.
    """
    denominator = jnp.asarray(denominator)
    positive = denominator > 0
    return jnp.where(
        jnp.isnan(denominator),
        jnp.nan,
        numerator / jnp.where(positive, denominator, 1.0),
    )


def power_mean(a: jax.Array, b: jax.Array, weight: Scalar, alpha: Scalar) -> jax.Array:
    """``(weight * a^alpha + (1 - weight) * b^alpha)^(1/alpha)`` for ``a, b >= 0``.

    This is the alpha-moment EMA of ACClip written on the threshold itself
    instead of its alpha-th power, so a finite ``b`` (a gradient magnitude up
    to float32's maximum) can never overflow. ``alpha`` 1 and 2 are exact
    special cases when their value is known; other values, and traced ones
    (``optax.inject_hyperparams``), use a max-rescaled form.
    """
    order = static_value(alpha)
    if order == 1.0:
        return jnp.asarray(weight * a + (1.0 - weight) * b)
    if order == 2.0:
        return jnp.hypot(
            jnp.sqrt(jnp.asarray(weight, a.dtype)) * a,
            jnp.sqrt(jnp.asarray(1.0 - weight, b.dtype)) * b,
        )
    s = jnp.maximum(a, b)
    safe = jnp.where(s > 0, s, 1.0)
    inner = weight * (a / safe) ** alpha + (1.0 - weight) * (b / safe) ** alpha
    return s * inner ** (1.0 / alpha)


def fraction_true(tree_of_bools: chex.ArrayTree) -> jax.Array:
    """Fraction of True entries over all leaves, as a float32 scalar."""
    leaves = jax.tree.leaves(tree_of_bools)
    total = optax.tree.size(leaves)
    if total == 0:
        return jnp.zeros((), jnp.float32)
    # An int32 count fuses with the comparison that produces the mask; a float32
    # sum of the converted mask was materialized as a parameter-sized temporary
    # on CPU. Per-leaf int32 counts cannot overflow below 2^31 elements per leaf.
    count = sum(jnp.sum(x, dtype=jnp.int32).astype(jnp.float32) for x in leaves)
    return count / jnp.float32(total)
