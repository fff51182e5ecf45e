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
3. **Finite in, finite out.** For any finite input up to its dtype's largest
   value, norms, moments and thresholds are computed in forms that cannot
   overflow or underflow to the wrong answer: rescaled global norms carried as
   mantissa and exponent (``_scaled.py``), updates scaled by an exact exponent
   shift and a normal factor, ``hypot``-form root-mean-squares and power
   means, so ``|g|^alpha`` and ``m^2`` are never formed directly.
4. **float32 statistics.** Norms and running statistics are accumulated in
   float32 whatever the leaf dtype; updates leave a transform in the dtype they
   entered it, and state leaves keep the dtype ``init`` gave them.
5. **Complex leaves by modulus.** Norms come from ``|x|^2``, clipping and
   thresholds from ``|x|``, and a complex leaf's momentum is complex (of the
   stored precision); magnitudes such as thresholds and RMS stay real.
"""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import optax

from optclip._checks import static_value
from optclip._scaled import ScaledNorm, exponent_shift, norm_value
from optclip._square_sums import leaf_sums, sums_of_squares
from optclip._types import Scalar

# Below this sum of squares, float32 squares of the entries may have flushed
# to zero; the rescaled sums get the norm right there.
_SMALL_SQUARED_NORM = 1e-30

# How `global_norm` runs its rescue sums (docs/numerics.md, rule 3). "cond": only when
# the plain sum of squares is unusable, through a lax.cond, on every backend (the default).
# "select": always, one read with the plain sum and a select, no control flow. "auto": cond on
# CPU, select on GPU/TPU, where a cond stops the host every step. Read when a program is traced.
NORM_FORM_VARIABLE = "OPTCLIP_GLOBAL_NORM"
NORM_FORMS = ("cond", "select", "auto")


def norm_form() -> str:
    """The form :func:`global_norm` traces with: ``$OPTCLIP_GLOBAL_NORM``, or ``cond`` if unset."""
    form = os.environ.get(NORM_FORM_VARIABLE, "cond")
    if form not in NORM_FORMS:
        raise ValueError(
            f"Environment variable {NORM_FORM_VARIABLE} must be one of {', '.join(NORM_FORMS)}, "
            f"got {form!r}."
        )
    return form


def _leaves(tree: chex.ArrayTree) -> list[jax.Array]:
    return [jnp.asarray(x) for x in jax.tree.leaves(tree)]


# Rescaling by 2^-96 and 2^96 goes through the float32 exponent bits (8 bits above 23 of
# mantissa), never a float multiply: XLA may rewrite (c x)^2 as c^2 x^2, and 2^+-192 leaves
# float32 (inf * 0 = NaN for a zero gradient). 2^-96 maps the largest float32 to 2^32, whose
# square summed over up to 2^60 entries stays finite, and flushes only |x| < 2^-30, which a norm
# above 2^64 cannot see; 2^96 lifts every nonzero float32 (|x| >= 2^-149) above 2^-53, far from
# both flush-to-zero and, since it is used only when every |x| < 1e-15, from overflow.
_SHIFT = 96
_MANTISSA_BITS = 23
_EXPONENT_INF = 255


def _exponent_and_bits(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) & 0x7FFFFFFF  # |x|
    return bits >> _MANTISSA_BITS, bits


def _scaled_down(x: jax.Array) -> jax.Array:
    """``|x| * 2^-96`` exactly, flushing results below float32's normal range; inf/NaN kept."""
    exponent, bits = _exponent_and_bits(x)
    shifted = jax.lax.bitcast_convert_type(bits - (_SHIFT << _MANTISSA_BITS), jnp.float32)
    return jnp.where(
        exponent == _EXPONENT_INF, jnp.abs(x), jnp.where(exponent > _SHIFT, shifted, 0.0)
    )


def _scaled_up(x: jax.Array) -> jax.Array:
    """``|x| * 2^96`` exactly for ``|x| < 2^32`` (subnormals included); larger values stay as
    they are (the up-scaled sum is only read when every ``|x| < 1e-15``), inf/NaN kept."""
    exponent, bits = _exponent_and_bits(x)
    shifted = jax.lax.bitcast_convert_type(bits + (_SHIFT << _MANTISSA_BITS), jnp.float32)
    # A subnormal is bits * 2^-149; times 2^96 that is bits * 2^-53, where bits < 2^23 is an
    # exact float32 and the constant's square is in range.
    subnormal = bits.astype(jnp.float32) * 2.0 ** (_SHIFT - 149)
    fits = exponent < _EXPONENT_INF - _SHIFT
    return jnp.where(exponent == 0, subnormal, jnp.where(fits, shifted, jnp.abs(x)))


def _sums_of_squares(leaves: list[jax.Array], scalings: tuple) -> list[jax.Array]:
    """``sum |s(x)|^2`` over every leaf for each ``s`` in ``scalings`` (None: ``x`` itself), in
    float32: one variadic reduction per large leaf and one for all small ones
    (``_square_sums.py``)."""
    return sums_of_squares(leaves, scalings)


def _usable(sq: jax.Array) -> jax.Array:
    """Whether a float32 sum of squares is the norm's square to float32 accuracy."""
    return jnp.isfinite(sq) & (sq >= _SMALL_SQUARED_NORM)


def _rescued(sq: jax.Array, down: jax.Array, up: jax.Array) -> ScaledNorm:
    """The norm from the sum that neither overflowed nor underflowed, as ``m * 2^(+-96)``.

    A NaN plain sum fails ``sq > 1`` and reaches ``up``, NaN too; an infinite entry makes
    ``down`` infinite (rule 1).
    """
    big = sq > 1.0
    exponent = jnp.where(big, _SHIFT, -_SHIFT).astype(jnp.int32)  # int32 also under x64
    return ScaledNorm(jnp.sqrt(jnp.where(big, down, up)), exponent)


def _plain(sq: jax.Array) -> ScaledNorm:
    return ScaledNorm(jnp.sqrt(sq), jnp.zeros(jnp.shape(sq), jnp.int32))


def _parts_cond(leaves: list[jax.Array]) -> ScaledNorm:
    # One read in the common case; the rescaled sums (a second read) only when the plain sum is
    # unusable. A lax.cond is free on CPU, where its predicate already lives on the host.
    (sq,) = _sums_of_squares(leaves, (None,))

    def rescue(leaves):
        # The barrier keeps XLA from turning the cond into a select that runs both branches.
        leaves = jax.lax.optimization_barrier(leaves)
        return _rescued(sq, *_sums_of_squares(leaves, (_scaled_down, _scaled_up)))

    return jax.lax.cond(_usable(sq), lambda leaves: _plain(sq), rescue, leaves)


def _parts_select(leaves: list[jax.Array]) -> ScaledNorm:
    # Three sums in one reduction per leaf and no control flow: on accelerators a lax.cond stops
    # the host every step to read its predicate (the GPU conditional copies it to the host and
    # waits for the stream).
    sq, down, up = _sums_of_squares(leaves, (None, _scaled_down, _scaled_up))
    return _pick(_usable(sq), _plain(sq), _rescued(sq, down, up))


def _pick(where: jax.Array, a: ScaledNorm, b: ScaledNorm) -> ScaledNorm:
    return ScaledNorm(*(jnp.where(where, x, y) for x, y in zip(a, b, strict=True)))


def _norm_cond(leaves: list[jax.Array]) -> jax.Array:
    return norm_value(_parts_cond(leaves))


def _norm_select(leaves: list[jax.Array]) -> jax.Array:
    return norm_value(_parts_select(leaves))


def global_norm_parts(tree: chex.ArrayTree) -> ScaledNorm:
    """:func:`global_norm` as ``mantissa * 2^exponent``, finite for every finite tree.

    The exponent is 0 when the plain float32 sum of squares gave the norm (the mantissa is
    then :func:`global_norm` itself) and ``+-96`` after a rescue; a norm above float32's range
    has a finite mantissa here, where :func:`global_norm` is inf. Same forms
    (``OPTCLIP_GLOBAL_NORM``) as :func:`global_norm`.
    """
    leaves = _leaves(tree)
    if not leaves:
        return _plain(jnp.zeros((), jnp.float32))
    return _in_form(leaves, _parts_cond, _parts_select)


def global_norm(tree: chex.ArrayTree) -> jax.Array:
    """Euclidean norm of all leaves of ``tree`` as a float32 scalar.

    The norm of any finite float32 tree is finite and accurate (even with
    entries near float32's largest or smallest values), a zero tree has norm 0,
    and a tree holding NaN or inf has a non-finite norm. The plain float32 sum
    of squares gives the norm unless it overflowed, underflowed or is not
    finite; then sums of ``(2^-96 x)^2`` and ``(2^96 x)^2`` do, with the
    scaling done on the exponent bits, so no rewrite of the algebra by the
    compiler can change the answer (docs/numerics.md).

    When the rescaled sums run is a choice of speed, not of result (the forms
    agree to float32 rounding; the order of additions is the compiler's), made
    by the environment variable ``OPTCLIP_GLOBAL_NORM`` when a program is traced:

    * ``cond`` (default): only when needed, through a ``lax.cond``, on every
      backend. Free on CPU; on a GPU the conditional makes the host wait for
      the device once per step.
    * ``select``: always, in the same read of the tree as the plain sum, and
      a select picks the result. No control flow.
    * ``auto``: ``cond`` on CPU and ``select`` on GPU and TPU (picked when the
      program is compiled, with :func:`jax.lax.platform_dependent`).

    Measured on a GPU, ``select`` was slower than ``cond`` inside jitted
    training steps and faster only per call, where a lone step's host wait is
    exposed; that is why ``cond`` is the default on every backend
    (``docs/performance.md`` has the numbers).

    Args:
      tree: a pytree of arrays.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: ``OPTCLIP_GLOBAL_NORM`` holds another value.
    """
    return norm_value(global_norm_parts(tree))


def _in_form(leaves: list[jax.Array], cond, select) -> ScaledNorm:
    """``cond(leaves)`` or ``select(leaves)``, as ``OPTCLIP_GLOBAL_NORM`` says (``auto``: by
    the platform the program is compiled for)."""
    form = norm_form()
    if form == "auto":
        return jax.lax.platform_dependent(leaves, cpu=cond, default=select)
    return (cond if form == "cond" else select)(leaves)


def _leaf_sums(leaves: list[jax.Array], scalings: tuple) -> list[jax.Array]:
    """Per leaf, :func:`_sums_of_squares` of that leaf alone: one vector per scaling, small
    leaves stacked by size into one reduction a size bucket (``_square_sums.py``)."""
    return leaf_sums(leaves, scalings)


def _leaf_norms_select(leaves: list[jax.Array]) -> ScaledNorm:
    sq, down, up = _leaf_sums(leaves, (None, _scaled_down, _scaled_up))
    return _pick(_usable(sq), _plain(sq), _rescued(sq, down, up))


def _leaf_norms_cond(leaves: list[jax.Array]) -> ScaledNorm:
    (sq,) = _leaf_sums(leaves, (None,))
    # A zero sum is taken as a zero leaf (else a model with one all-zero leaf would run the
    # rescue every step); any other unusable sum sends every leaf to the rescue. Telling a
    # zero leaf from one whose squares all flushed would need a second sum in the same pass
    # (a variadic reduction): on XLA:CPU that made AdaGC + Adam a quarter slower.
    zero = sq == 0

    def rescue(leaves):
        leaves = jax.lax.optimization_barrier(leaves)
        return _leaf_norms_select(leaves)

    return jax.lax.cond(jnp.all(_usable(sq) | zero), lambda leaves: _plain(sq), rescue, leaves)


def leaf_norms(tree: chex.ArrayTree) -> chex.ArrayTree:
    """The Euclidean norm of each leaf of ``tree``: float32 scalars in the tree's structure.

    Each is what :func:`global_norm` gives for that leaf alone (same guarantees, same
    ``OPTCLIP_GLOBAL_NORM`` forms), with one decision for the whole tree: the rescaled sums
    run for every leaf when any nonzero leaf's plain sum is unusable, so a tree costs one
    ``lax.cond``, not one per leaf. One exception, in the ``cond`` form: a leaf whose every
    entry is below about ``3.7e-23`` in magnitude (all its squares flush to zero) has norm 0
    there, where :func:`global_norm` would give its tiny norm; a leaf that is exactly zero is
    then told apart from a rescue case without a second read of every leaf.
    """
    flat, treedef = jax.tree.flatten(tree)
    if not flat:
        return tree
    return jax.tree.unflatten(treedef, list(norm_value(leaf_norm_parts(flat))))


def leaf_norm_parts(leaves: list[jax.Array]) -> ScaledNorm:
    """:func:`leaf_norms` of a non-empty list of leaves as one :class:`ScaledNorm` of vectors
    in their order (finite mantissas for finite leaves, as :func:`global_norm_parts`)."""
    return _in_form(_leaves(leaves), _leaf_norms_cond, _leaf_norms_select)


def combined_norm(norms: ScaledNorm) -> ScaledNorm:
    """The Euclidean norm of a vector of norms (``sqrt(sum n_i^2)``), overflow-safe.

    The norms are brought to the largest exponent among the nonzero ones (an exact shift;
    one below float32's range against the largest is dropped), then :func:`global_norm_parts`
    of that vector; with every exponent 0 this is ``global_norm`` of the mantissas.
    """
    m, k = norms
    top = jnp.max(jnp.where(m > 0, k, -_SHIFT))
    top = jnp.where(jnp.any(m > 0), top, 0)
    inner = global_norm_parts(exponent_shift(m, k - top))
    return ScaledNorm(inner.mantissa, inner.exponent + top)


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


def denominator_eps(eps: jax.typing.ArrayLike) -> jax.Array:
    """``eps`` for a denominator ``r + eps`` with ``r >= 0`` an RMS: ``max(eps, tiny)`` in float32.

    ``r = 0`` only where every gradient so far was 0, and the numerator is 0 there too, so
    ``0 / tiny = 0`` keeps the 0/0 rule at ``eps = 0`` (``0 / 0`` would be NaN) for the cost of
    a scalar, not a select per coordinate. ``tiny``, float32's smallest normal number, changes
    no denominator above about ``1e-31``.
    """
    return jnp.maximum(jnp.asarray(eps, jnp.float32), jnp.finfo(jnp.float32).tiny)


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
    total = sum(jnp.size(x) for x in leaves)  # optax.tree.size needs optax 0.2.6
    if total == 0:
        return jnp.zeros((), jnp.float32)
    # An int32 count fuses with the comparison that produces the mask; a float32
    # sum of the converted mask was materialized as a parameter-sized temporary
    # on CPU. Per-leaf int32 counts cannot overflow below 2^31 elements per leaf.
    count = sum(jnp.sum(x, dtype=jnp.int32).astype(jnp.float32) for x in leaves)
    return count / jnp.float32(total)
