"""The linear minimization oracle (LMO) of one layer and its dual norm.

For a norm ``||.||`` on a layer, ``lmo(M) = argmin_{||D|| <= 1} <M, D>`` and the dual norm is
``||M||_* = -<M, lmo(M)>``. Every rule is written on the layer's fan-in (the contracted axes of
``y = x W``) and fan-out (its output axes), named by :class:`LmoDims`; every other axis is a batch
axis whose slices are separate layers (attention heads of a fused kernel are not: they are named
output or fan-in axes). The array is viewed as ``(batch, fan_in, fan_out)`` and each norm acts on
that view (``docs/normalized.md`` has the table, ``docs/design.md`` the choices).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optclip import _checks

NORMS = ("spectral", "column", "row", "sign", "rms")
SPECTRAL_SCALES = ("scion", "muon", "unit")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# The authors' guards: Newton-Schulz divides by ||X||_F + 1e-7 (Muon, Scion); Scion's other
# norms divide by (. + 1e-8). ``eps=None`` picks these, per norm.
_DEFAULT_EPS = {"spectral": 1e-7, "column": 1e-8, "row": 1e-8, "sign": 0.0, "rms": 1e-8}


class LmoDims(NamedTuple):
    """Which axes of a layer's array are its fan-in and its fan-out.

    Flax stores a dense kernel ``(d_in, d_out)``: ``LmoDims((0,), (1,))``. Axes in neither
    tuple are batch axes (a leading layer axis of scanned layers): each slice is its own layer.

    Attributes:
      reduction_axes: the fan-in axes, contracted with the layer's input.
      output_axes: the fan-out axes.
      spatial_axes: a convolution's kernel window, e.g. ``(0, 1)`` for Flax's
        ``(h, w, d_in, d_out)``: part of the fan-in for the matrix view, and the
        spectral scale divides by their size as Scion's ``SpectralConv`` does.
    """

    reduction_axes: tuple[int, ...] = (0,)
    output_axes: tuple[int, ...] = (1,)
    spatial_axes: tuple[int, ...] = ()


class _View(NamedTuple):
    order: tuple[int, ...]  # batch + spatial + reduction + output
    shape3: tuple[int, int, int]  # (batch, fan_in, fan_out)
    d_in: int  # fan-in without the spatial window
    window: int  # size of the spatial window (1 for a dense layer)
    named: int = 0  # how many axes are spatial, fan-in or fan-out (the rest lead ``order``)


def default_dims(shape: tuple[int, ...]) -> LmoDims:
    """The dims of a plain leaf: a dense kernel ``(d_in, d_out)``, or a vector/scalar as one
    fan-out (a bias is a layer with one input)."""
    if len(shape) == 2:
        return LmoDims((0,), (1,))
    if len(shape) <= 1:
        return LmoDims((), tuple(range(len(shape))))
    raise ValueError(
        f"`dims` is needed for an array of shape {shape}: name its fan-in and fan-out axes, e.g. "
        "optclip.LmoDims(reduction_axes=(0,), output_axes=(1, 2)) for an attention kernel "
        "(d_in, heads, head_dim), or take them from optclip.default_lmo_norms(params)."
    )


def _view(shape: tuple[int, ...], dims: LmoDims | None) -> _View:
    if dims is None:
        dims = default_dims(shape)
    if not isinstance(dims, LmoDims):
        raise TypeError(f"`dims` must be an optclip.LmoDims or None, got {dims!r}.")
    ndim = len(shape)
    groups = []
    for field in ("spatial_axes", "reduction_axes", "output_axes"):
        axes = getattr(dims, field)
        if not all(isinstance(a, int | np.integer) and -ndim <= a < ndim for a in axes):
            raise ValueError(
                f"`dims.{field}` must hold axes of an array of shape {shape}, got {axes}."
            )
        groups.append(tuple(int(a) % ndim for a in axes) if ndim else ())
    spatial, reduction, output = groups
    named = spatial + reduction + output
    if len(set(named)) != len(named):
        raise ValueError(f"`dims` names an axis twice for shape {shape}: {dims}.")
    batch = tuple(a for a in range(ndim) if a not in named)
    size = lambda axes: math.prod(shape[a] for a in axes)
    return _View(
        order=batch + named,
        shape3=(size(batch), size(spatial + reduction), size(output)),
        d_in=size(reduction),
        window=size(spatial),
        named=len(named),
    )


def _explicit_sharding(m: jax.Array) -> NamedSharding | None:
    """``m``'s sharding when it is split over *Explicit* mesh axes (in its type), else None."""
    typeof = getattr(jax, "typeof", None)  # newer than the oldest jax supported
    sharding = getattr(typeof(m), "sharding", None) if typeof is not None else None
    spec = getattr(sharding, "spec", None)
    if not isinstance(sharding, NamedSharding) or spec is None or all(e is None for e in spec):
        return None
    return sharding


def _reshard_to(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    if hasattr(jax.sharding, "reshard"):
        return jax.sharding.reshard(x, sharding)
    # jax 0.6.0, the oldest supported, keeps it in jax.experimental.shard.
    from jax.experimental.shard import reshard

    return reshard(x, sharding)


def _reshard(m: jax.Array, sharding: NamedSharding, view: _View) -> jax.Array:
    """``m`` with only its one batch axis (if any) left split. With Explicit axes a product
    that contracts a split axis, or whose result would be split twice, does not trace: the
    fan-in and fan-out axes are gathered (each device then runs the whole LMO)."""
    batch = view.order[: len(view.order) - view.named]
    spec = tuple(sharding.spec) + (None,) * (m.ndim - len(sharding.spec))
    keep = [e if (a in batch and len(batch) == 1) else None for a, e in enumerate(spec)]
    return _reshard_to(m, NamedSharding(sharding.mesh, P(*keep)))


def _to_blocks(x: jax.Array, view: _View) -> jax.Array:
    return jnp.transpose(x, view.order).reshape(view.shape3)


def _from_blocks(x3: jax.Array, view: _View, shape: tuple[int, ...]) -> jax.Array:
    transposed = tuple(shape[a] for a in view.order)
    return jnp.transpose(x3.reshape(transposed), tuple(int(i) for i in np.argsort(view.order)))


def spectral_scale_of(view: _View, kind: str) -> float:
    """The factor on ``U V^T``: Scion's ``sqrt(d_out/d_in)`` (over the window for a conv),
    Muon's ``sqrt(max(1, d_out/fan_in))``, or 1."""
    _, fan_in, fan_out = view.shape3
    if kind == "scion":
        return math.sqrt(fan_out / max(view.d_in, 1)) / view.window
    if kind == "muon":
        return math.sqrt(max(1.0, fan_out / max(fan_in, 1)))
    return 1.0


def _scaled(x3: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x / p, p, max|x|)`` over ``axes`` (kept), ``p`` the power of two nearest above
    ``max|x|`` within float32's normal range.

    Norms of the quotient lie near ``[1, sqrt(n)]``, so no square overflows or flushes. ``p``
    and ``1/p`` are both normal: XLA may divide by multiplying with ``1/p``, which for
    ``p = max|x|`` near float32's largest value flushes to zero on CPU. A zero block stays zero;
    NaN and inf reach the quotient (and give NaN downstream).
    """
    amax = jnp.max(jnp.abs(x3), axis=axes, keepdims=True)
    finite = jnp.isfinite(amax) & (amax > 0)
    _, exponent = jnp.frexp(jnp.where(finite, amax, 1.0))
    p = jnp.ldexp(jnp.ones_like(amax), jnp.clip(exponent, -126, 126))
    return x3 / p, p, amax


def _guard(eps: jax.typing.ArrayLike, p: jax.Array, amax: jax.Array) -> jax.Array:
    # eps added to ||M|| is eps / p on the scaled block; a zero block gets 1 (0/1 = 0).
    return jnp.where(amax > 0, eps / p, 1.0)


def newton_schulz(x: jax.Array, steps: jax.typing.ArrayLike) -> jax.Array:
    """Five-step quintic Newton-Schulz on each ``(p, q)`` block of ``x`` with ``p <= q``.

    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``; the input must already have spectral
    norm at most 1 (divide by the Frobenius norm first).
    """
    a, b, c = NS_COEFFICIENTS

    def step(_, x):
        gram = x @ jnp.swapaxes(x, -1, -2)
        return a * x + (b * gram + c * gram @ gram) @ x

    count = _checks.static_value(steps)
    if count is not None:
        for i in range(int(count)):
            x = step(i, x)
        return x
    return jax.lax.fori_loop(0, steps, step, x)


def _spectral(x3, eps, steps, ns_dtype, scale, residual):
    xs, p, amax = _scaled(x3, (1, 2))
    fro = jnp.sqrt(jnp.sum(jnp.square(xs), axis=(1, 2), keepdims=True))
    x = xs / (fro + _guard(eps, p, amax))
    wide = x3.shape[1] <= x3.shape[2]  # A = X X^T over the smaller side
    x = x if wide else jnp.swapaxes(x, 1, 2)
    o = newton_schulz(x.astype(ns_dtype), steps).astype(x3.dtype)
    res = jnp.zeros((), jnp.float32)
    if residual:
        side = o.shape[1]
        gram = o @ jnp.swapaxes(o, 1, 2) - jnp.eye(side, dtype=o.dtype)
        res = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(gram), axis=(1, 2)) / side))
    o = o if wide else jnp.swapaxes(o, 1, 2)
    direction = scale * o
    dual = jnp.sum(p[:, 0, 0] * jnp.sum(xs * direction, axis=(1, 2)))
    return direction, dual, res


def _by_vectors(x3, axis, eps, times):
    """Each vector along ``axis`` divided by ``times * ||v||_2 + eps`` (column, row, RMS)."""
    xs, p, amax = _scaled(x3, axis)
    norms = jnp.sqrt(jnp.sum(jnp.square(xs), axis=axis, keepdims=True))
    denominator = times * norms + _guard(eps, p, amax)
    direction = xs / denominator
    # <M, direction> per vector is p ||v||^2 / denominator: no second pass over M (which would
    # keep M / p and the direction alive as parameter-sized temporaries).
    dual = jnp.sum(p * jnp.square(norms) / denominator)
    return direction, dual


def lmo_parts(
    m: jax.Array,
    norm: str,
    dims: LmoDims | None = None,
    *,
    spectral_scale: str = "scion",
    ns_steps: jax.typing.ArrayLike = 5,
    eps: jax.typing.ArrayLike | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
    residual: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(-lmo(m), ||m||_*, residual)``: the direction in the compute dtype (float32 or wider)
    and two float32 scalars; the residual is 0 unless ``norm`` is spectral and asked for."""
    _checks.check_choice("norm", norm, NORMS)
    _checks.check_choice("spectral_scale", spectral_scale, SPECTRAL_SCALES)
    m = jnp.asarray(m)
    if jnp.iscomplexobj(m):
        raise TypeError(
            f"`m` must be real: the LMO norms are defined for real layers, got {m.dtype}."
        )
    view = _view(m.shape, dims)
    compute = jnp.promote_types(m.dtype, jnp.float32)
    if m.size == 0:  # nothing to move: a zero direction and norms (a max over it would raise)
        zero = jnp.zeros((), jnp.float32)
        return jnp.zeros(m.shape, compute), zero, zero
    sharding = _explicit_sharding(m)
    if sharding is not None:
        m = _reshard(m, sharding, view)
    x3 = _to_blocks(m.astype(compute), view)
    e = _DEFAULT_EPS[norm] if eps is None else eps
    _, fan_in, fan_out = view.shape3
    res = jnp.zeros((), jnp.float32)
    if norm == "spectral":
        dtype = compute if ns_dtype is None else _checks.state_dtype("ns_dtype", ns_dtype)
        scale = spectral_scale_of(view, spectral_scale)
        d3, dual, res = _spectral(x3, e, ns_steps, dtype, scale, residual)
    elif norm == "column":  # each fan-in index's weights over the fan-out, to RMS 1
        d3, dual = _by_vectors(x3, (2,), e, 1.0 / math.sqrt(fan_out))
    elif norm == "row":  # each fan-out index's weights over the fan-in, to l2 1/sqrt(d_in)
        d3, dual = _by_vectors(x3, (1,), e, math.sqrt(fan_in))
    elif norm == "rms":
        d3, dual = _by_vectors(x3, (1, 2), e, 1.0 / math.sqrt(max(fan_in * fan_out, 1)))
    else:  # sign; 0 * x turns an infinite entry into NaN (the numerics rule)
        xs, p, _ = _scaled(x3, (1, 2))
        d3 = (jnp.sign(x3) + 0.0 * x3) / fan_in
        dual = jnp.sum(p[:, 0, 0] * jnp.sum(jnp.abs(xs), axis=(1, 2))) / fan_in
    direction = _from_blocks(d3, view, m.shape)
    if sharding is not None:
        direction = _reshard_to(direction, sharding)
    return direction, dual.astype(jnp.float32), res.astype(jnp.float32)


def lmo(
    m: jax.Array,
    norm: str,
    dims: LmoDims | None = None,
    *,
    spectral_scale: str = "scion",
    ns_steps: jax.typing.ArrayLike = 5,
    eps: jax.typing.ArrayLike | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    r"""The linear minimization oracle ``argmin_{||D|| <= 1} <M, D>`` of one layer.

    In the layer's view ``(batch, d_in, d_out)`` (see :class:`LmoDims`), with Scion's scales
    (``v`` each fan-in index's vector over the fan-out, ``r`` each fan-out index's vector over
    the fan-in, ``S`` the singular values):

    * spectral: ``-lmo(M) = sqrt(d_out/d_in) NS(M)``, ``NS(M) ~ U V^T``; dual
      ``sqrt(d_out/d_in) sum(S)``.
    * column: ``v / RMS(v)``; dual ``sum_v sqrt(d_out) ||v||``.
    * row: ``r / (sqrt(d_in) ||r||)``; dual ``sum_r ||r|| / sqrt(d_in)``.
    * sign: ``sign(M) / d_in``; dual ``sum |M| / d_in``.
    * rms: ``M / RMS(M)``; dual ``sqrt(n) ||M||_2``.

    Each norm's denominator gets ``+ eps``. The result is in the compute dtype (float32, or
    float64 for a float64 ``m``) and is the negative of the descent direction: a step
    ``X += t lmo(M)`` has length ``t`` in the layer's norm. A zero ``M`` gives 0, a NaN or inf
    entry gives NaN, and a huge finite ``M`` a finite result (norms are taken of ``M/max|M|``).
    An ``M`` split over *Explicit* mesh axes is gathered on its fan-in and fan-out axes (a lone
    batch axis stays split) and the result is sharded like ``M`` (``docs/design.md``).

    Args:
      m: the layer's array (a momentum or a gradient), real, any float dtype.
      norm: one of ``"spectral"``, ``"column"``, ``"row"``, ``"sign"``, ``"rms"``.
      dims: the fan-in and fan-out axes; ``None`` for a dense kernel ``(d_in, d_out)`` or a
        vector (one fan-out, ``d_in = 1``).
      spectral_scale: the factor on ``NS(M)``: ``"scion"`` (``sqrt(d_out/d_in)``, divided by
        the window size of a convolution), ``"muon"`` (``sqrt(max(1, d_out/fan_in))``, the
        window in the fan-in) or ``"unit"`` (1).
      ns_steps: Newton-Schulz steps (5).
      eps: the guard added to each denominator; ``None``: the authors' (``1e-7`` for
        spectral, ``1e-8`` for column, row and RMS, none for sign).
      ns_dtype: the dtype Newton-Schulz runs in; ``None``: the compute dtype (float32).

    Returns:
      ``lmo(M)``, shaped like ``m``.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> optclip.lmo(jnp.array([[3.0, -4.0]]), "sign")
      Array([[-1.,  1.]], dtype=float32)
    """
    direction, _, _ = lmo_parts(
        m, norm, dims, spectral_scale=spectral_scale, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype
    )
    return -direction


def dual_norm(
    m: jax.Array,
    norm: str,
    dims: LmoDims | None = None,
    *,
    spectral_scale: str = "scion",
    ns_steps: jax.typing.ArrayLike = 5,
    eps: jax.typing.ArrayLike | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """The dual norm ``||M||_* = -<M, lmo(M)>`` of one layer, a float32 scalar.

    Over batch axes it is the sum of the slices' dual norms: a stack of layers is one block
    whose norm is the largest of its slices' norms, whose dual is the sum. For the spectral
    norm it is ``<M, NS(M)>`` times the scale, the nuclear norm to Newton-Schulz accuracy.

    Args:
      m: the layer's array, real, any float dtype.
      norm: one of ``"spectral"``, ``"column"``, ``"row"``, ``"sign"``, ``"rms"``.
      dims: the fan-in and fan-out axes (as :func:`lmo`).
      spectral_scale: as :func:`lmo`.
      ns_steps: as :func:`lmo`.
      eps: as :func:`lmo`.
      ns_dtype: as :func:`lmo`.

    Returns:
      A float32 scalar ``>= 0`` (NaN if ``m`` holds NaN or inf).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> float(optclip.dual_norm(jnp.array([[3.0, -4.0]]), "sign"))
      7.0
    """
    _, dual, _ = lmo_parts(
        m, norm, dims, spectral_scale=spectral_scale, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype
    )
    return dual
