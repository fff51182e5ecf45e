"""Norms that may leave the float32 range, and updates scaled by ``numerator / norm`` safely.

A global norm of finite float32 entries can exceed float32's largest value (and a clip factor
``tau / ||u||`` can fall below its smallest normal value, where XLA:CPU flushes it to zero). So
the norm is carried as ``mantissa * 2^exponent`` (:class:`ScaledNorm`), and an update is scaled
as ``shift(u, s) * f``: ``shift`` moves the exponent bits of each entry by ``s`` (exact, no float
multiply, so no rewrite of the algebra by a compiler can fold it into the factor), and ``f`` is a
float32 factor in the normal range. For ordinary norms ``s = 0`` and ``f`` is the plain quotient,
so the result has the same bits as ``u * (numerator / norm)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# float32 exponent field: 8 bits above 23 of mantissa, bias 127.
_F32 = (jnp.int32, 23, 255)
_F64 = (jnp.int64, 52, 2047)
_BIAS = 127
_TINY = float(jnp.finfo(jnp.float32).tiny)


class ScaledNorm(NamedTuple):
    """A norm ``mantissa * 2^exponent``.

    Attributes:
      mantissa: float32, finite for a finite tree (0, inf or NaN carry those values).
      exponent: int32, 0 when the plain sum of squares gave the norm (``+-96`` after a
        rescue; a norm combined from several can have another).
    """

    mantissa: jax.Array
    exponent: jax.Array


def exponent_shift(x: jax.Array, k: jax.typing.ArrayLike) -> jax.Array:
    """``x * 2^k`` on the exponent bits of a float32 or float64 ``x`` (``k`` broadcasts).

    Exact wherever the result is a normal number; a result below the normal range is 0, one
    above it is inf (with ``x``'s sign); zero, subnormal, inf and NaN entries are kept as they
    are when ``k == 0`` (so a shift by 0 is the identity), and zero, inf and NaN always.
    """
    int_type, mantissa_bits, exponent_max = _F64 if x.dtype == jnp.float64 else _F32
    k = jnp.asarray(k, int_type)
    bits = jax.lax.bitcast_convert_type(x, int_type)
    exponent = (bits >> mantissa_bits) & exponent_max
    new_exponent = exponent + k
    shifted = jax.lax.bitcast_convert_type(bits + (k << mantissa_bits), x.dtype)
    normal = (exponent > 0) & (exponent < exponent_max)
    out = jnp.where(normal & (new_exponent > 0), shifted, jnp.zeros_like(x))
    out = jnp.where(normal & (new_exponent >= exponent_max), jnp.copysign(jnp.inf, x), out)
    return jnp.where(~normal & ((exponent == exponent_max) | (k == 0)), x, out)


def norm_value(norm: ScaledNorm) -> jax.Array:
    """The float32 value of ``norm`` as IEEE rounding gives it (inf beyond float32's range).

    The rescue exponents ``+-96`` are applied as an exact shift by ``+-48`` then a multiply by
    ``2^+-48`` (a constant whose square is a normal float32), which rounds a subnormal norm and
    overflows one beyond float32's range to inf.
    """
    m, k = norm
    half = k // 2
    scaled = exponent_shift(m, jnp.where(k == 0, 0, half)) * jnp.where(k > 0, 2.0**48, 2.0**-48)
    return jnp.where(k == 0, m, scaled)


def plus(norm: ScaledNorm, c: jax.typing.ArrayLike) -> ScaledNorm:
    """``norm + c`` for a scalar ``c >= 0``, as a :class:`ScaledNorm`.

    With exponent 0 this is the float32 sum ``mantissa + c``; otherwise ``c`` is shifted to
    the mantissa's scale, or, when it would overflow there (``c`` dwarfs a tiny norm), the sum
    is ``c`` to float32 accuracy.
    """
    m, k = norm
    c = jnp.asarray(c, jnp.float32)
    c_shifted = exponent_shift(c, -k)
    fits = jnp.isfinite(c_shifted) | (k >= 0)
    return ScaledNorm(
        jnp.where(fits, m + jnp.where(k == 0, c, c_shifted), c), jnp.where(fits, k, 0)
    )


def divide(
    numerator: jax.typing.ArrayLike, norm: ScaledNorm, active: jax.typing.ArrayLike = True
) -> tuple[jax.Array, jax.Array]:
    """``(shift, factor)`` with ``u * numerator / norm == exponent_shift(u, shift) * factor``.

    Where ``active`` is false the pair is ``(0, 1)`` (leave ``u`` as it is). Where the plain
    float32 quotient ``numerator / mantissa`` is usable (exponent 0 and the quotient not below
    float32's normal range), it is the factor and the shift is 0: the same bits as the plain
    product. Otherwise the norm's mantissa is brought to ``[1, 2)`` by its own exponent ``e``,
    the factor is ``numerator / (mantissa 2^-e)`` (within a factor 2 of ``numerator``) and the
    shift is ``-(exponent + e)``. A NaN norm gives a NaN factor, an infinite one a zero factor
    (so an infinite entry becomes ``inf * 0 = NaN``).

    Args:
      numerator: float32 ``>= 0`` (a threshold, 1, ...), broadcastable to the norm.
      norm: the denominator (may be a vector of norms).
      active: where the quotient applies.

    Returns:
      An int32 shift and a float32 factor, shaped like the broadcast arguments.
    """
    m, k = norm
    active = jnp.asarray(active)
    numerator = jnp.asarray(numerator, jnp.float32)
    m = jnp.where(active, m, 1.0)
    k = jnp.where(active, k, 0)
    plain = numerator / m
    bits = jax.lax.bitcast_convert_type(m, jnp.int32)
    finite = jnp.isfinite(m) & (m > 0)
    e = jnp.where(finite, ((bits >> 23) & 0xFF) - _BIAS, 0)
    unit = exponent_shift(m, -e)  # in [1, 2)
    decompose = finite & ((k != 0) | (plain < _TINY))
    shift = jnp.where(decompose, -(k + e), 0)
    factor = jnp.where(decompose, numerator / unit, jnp.where(active, plain, 1.0))
    return shift.astype(jnp.int32), factor


def _shift_entries(x: jax.Array, k: jax.typing.ArrayLike) -> jax.Array:
    """``x * 2^k`` for the entries of an update, in few operations: exact for a normal result,
    0 for one below the normal range. With ``k == 0`` it is ``x`` (subnormal entries included).

    Callers shift by ``k != 0`` only a finite update whose entries are at most its norm, which
    the shift brings to ``[0, 2)``: no entry overflows, and no inf or NaN is shifted.
    """
    int_type, mantissa_bits, exponent_max = _F64 if x.dtype == jnp.float64 else _F32
    k = jnp.asarray(k, int_type)
    bits = jax.lax.bitcast_convert_type(x, int_type)
    field = bits & (exponent_max << mantissa_bits)
    # The exponent is above max(0, -k): x is normal and so is x 2^k.
    normal = field > (jnp.maximum(-k, 0) << mantissa_bits)
    shifted = jax.lax.bitcast_convert_type(bits + (k << mantissa_bits), x.dtype)
    return jnp.where(k == 0, x, jnp.where(normal, shifted, jnp.zeros_like(x)))


def scale(u: jax.Array, shift: jax.typing.ArrayLike, factor: jax.typing.ArrayLike) -> jax.Array:
    """``u * 2^shift * factor`` in ``u``'s dtype promoted with float32, for a ``(shift,
    factor)`` pair from :func:`divide` of ``u``'s own norm (or a norm at least as large).

    Half-precision entries are widened to float32 first (their products are float32, as
    ``u * factor`` would be); complex entries shift their real and imaginary parts.
    """
    u = jnp.asarray(u)
    wide = jnp.promote_types(u.dtype, jnp.float32)
    u = u.astype(wide)
    if jnp.issubdtype(wide, jnp.complexfloating):
        shifted = jax.lax.complex(_shift_entries(u.real, shift), _shift_entries(u.imag, shift))
    else:
        shifted = _shift_entries(u, shift)
    return shifted * factor
