"""Sums of squares over many leaves in few reductions (the reads behind every norm).

A model tree has one or two hundred leaves, most of them small (biases, norm scales). One
reduction per leaf is one kernel per leaf, which on many-leaf trees costs more than the
arithmetic. So small leaves are packed: for the sum over the whole tree, all of them go into
one vector and one reduction; for per-leaf sums, leaves of similar size are stacked, zero-padded
to a power of two, into one matrix reduced along its rows. Large leaves keep a reduction each.
Zeros add nothing to any of the sums (every scaling maps 0 to 0), so packing changes only the
order of the additions, not what is summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Leaves (real or imaginary parts) of at most this many entries are packed.
PACK_SIZE = 1 << 14

Scaling = Callable[[jax.Array], jax.Array] | None


def magnitudes(x: jax.Array) -> list[jax.Array]:
    """The float32 parts whose squares sum to ``|x|^2``: ``x`` itself, or a complex leaf's real
    and imaginary parts (cast after the split, so the imaginary part survives)."""
    if jnp.iscomplexobj(x):
        x = x.astype(jnp.promote_types(x.dtype, jnp.complex64))
        return [x.real.astype(jnp.float32), x.imag.astype(jnp.float32)]
    return [x.astype(jnp.float32)]


def _reduce(part: jax.Array, scalings: Sequence[Scaling], axes: tuple[int, ...]) -> list:
    """``sum |s(part)|^2`` over ``axes`` for each scaling, in one (variadic) reduction: the
    part is read once whatever the backend (summed one by one, XLA:CPU wrote each rescaled
    copy to memory first)."""
    squares = tuple(jnp.square(part if s is None else s(part)) for s in scalings)
    if len(squares) == 1:
        return [jnp.sum(squares[0], axis=axes)]
    return list(
        jax.lax.reduce(
            squares,
            tuple(jnp.zeros((), jnp.float32) for _ in squares),
            lambda a, b: tuple(p + q for p, q in zip(a, b, strict=True)),
            axes,
        )
    )


def sums_of_squares(leaves: Sequence[jax.Array], scalings: Sequence[Scaling]) -> list:
    """``sum |s(x)|^2`` over every entry of every leaf, for each ``s`` in ``scalings`` (None:
    ``x`` itself), as float32 scalars: one reduction per large leaf and one for all small ones."""
    parts = [p for x in leaves for p in magnitudes(x)]
    small = [p.ravel() for p in parts if p.size <= PACK_SIZE]
    groups = [p for p in parts if p.size > PACK_SIZE]
    if small:
        groups.append(jnp.concatenate(small) if len(small) > 1 else small[0])
    totals = [jnp.zeros((), jnp.float32) for _ in scalings]
    for part in groups:
        sums = _reduce(part, scalings, tuple(range(part.ndim)))
        totals = [t + u for t, u in zip(totals, sums, strict=True)]
    return totals


def _bucket(size: int) -> int:
    return 1 << max(0, (size - 1).bit_length())


def leaf_sums(leaves: Sequence[jax.Array], scalings: Sequence[Scaling]) -> list:
    """Per leaf, :func:`sums_of_squares` of that leaf alone: one float32 vector per scaling, in
    the leaves' order. Small parts are stacked by size bucket (a power of two, zero-padded), one
    reduction a bucket."""
    owners: list[int] = []  # the leaf of each part, in the order of the sums gathered below
    pieces: list[list] = [[] for _ in scalings]
    buckets: dict[int, list[tuple[int, jax.Array]]] = {}
    for i, x in enumerate(leaves):
        for part in magnitudes(x):
            if part.size > PACK_SIZE:
                sums = _reduce(part, scalings, tuple(range(part.ndim)))
                for piece, s in zip(pieces, sums, strict=True):
                    piece.append(s[None])
                owners.append(i)
            else:
                buckets.setdefault(_bucket(part.size), []).append((i, part.ravel()))
    for width, members in buckets.items():
        rows = [jnp.pad(p, (0, width - p.size)) for _, p in members]
        matrix = jnp.stack(rows) if len(rows) > 1 else rows[0][None]
        for piece, s in zip(pieces, _reduce(matrix, scalings, (1,)), strict=True):
            piece.append(s)
        owners.extend(i for i, _ in members)
    # Back to leaf order; a complex leaf's two parts are added (0 for a real leaf's second).
    order = np.asarray(owners)
    first = np.array([np.flatnonzero(order == i)[0] for i in range(len(leaves))])
    second = np.array([np.flatnonzero(order == i)[-1] for i in range(len(leaves))])
    out = []
    for piece in pieces:
        flat = jnp.concatenate(piece)
        pair = jnp.where(jnp.asarray(second != first), flat[second], 0.0)
        out.append(flat[first] + pair)
    return out
