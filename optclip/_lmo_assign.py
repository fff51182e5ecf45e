"""Which norm, which axes and which per-layer number each leaf of a Flax params tree gets.

The default assignment reads a leaf's path and shape only (``docs/normalized.md``):

* a leaf named ``bias`` or ``scale``, and every leaf of rank <= 1: ``"rms"``;
* an embedding table: a leaf named ``embedding`` (Flax ``Embed``, stored ``(vocab, dim)`` =
  ``(d_in, d_out)``), or a token or position table named ``pos``, ``pos_embed*``,
  ``position*``, ``wpe``, ``wte`` or ``*embedding*`` (the leaf, or its module for a leaf not
  named ``kernel``): ``"column"``, Scion's ``ColNorm`` of an embedding (each row to RMS 1);
* a leaf under a module named ``head``, ``lm_head``, ``output`` or ``logits``: ``"sign"``;
* every other leaf: ``"spectral"``, with axes by kind: ``query``/``key``/``value`` kernels
  ``(d_in, heads, head_dim)``, the ``out`` kernel ``(heads, head_dim, d_out)`` of a module that
  also has a ``query``, a leaf whose path mentions ``conv`` as ``(*window, d_in, d_out)``, else
  ``(*layers, d_in, d_out)`` with leading stacked-layer axes as batch axes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import chex
import jax
import numpy as np

from optclip import _checks
from optclip._lmo import NORMS, LmoDims

Path: TypeAlias = tuple[str, ...]
#: Norms: one name for every leaf, a tree of names, or ``(path, leaf) -> name | None``.
NormSpec: TypeAlias = str | chex.ArrayTree | Callable[[Path, jax.Array], str | None] | None
#: Dims: a tree of :class:`LmoDims`, or ``(path, leaf) -> LmoDims | None``.
DimsSpec: TypeAlias = chex.ArrayTree | Callable[[Path, jax.Array], LmoDims | None] | None
#: A per-layer number: a scalar, a tree of scalars, or ``(path, leaf) -> scalar | None``.
LayerValue: TypeAlias = (
    jax.typing.ArrayLike | chex.ArrayTree | Callable[[Path, jax.Array], jax.typing.ArrayLike]
)

HEAD_NAMES = ("head", "lm_head", "output", "logits")
ATTENTION_IN = ("query", "key", "value")
VECTOR_NAMES = ("bias", "scale")
# Token and position tables by name: a learned position table ``(context, d_model)`` is an
# embedding (a lookup, one row per position), not a hidden matrix (the authors' GPTs).
EMBEDDING_NAMES = ("pos", "wpe", "wte")
EMBEDDING_PREFIXES = ("pos_embed", "position")


def _embedding_name(name: str) -> bool:
    name = name.lower()
    return name in EMBEDDING_NAMES or name.startswith(EMBEDDING_PREFIXES) or "embedding" in name


def is_embedding(path: Path) -> bool:
    """Whether a leaf at ``path`` is a token or position table: its name, or its module's for
    a leaf other than a ``kernel`` (a ``patch_embedding`` convolution stays a hidden layer)."""
    if not path:
        return False
    if _embedding_name(path[-1]):
        return True
    return len(path) >= 2 and path[-1] != "kernel" and _embedding_name(path[-2])


def path_names(path: tuple) -> Path:
    """A jax key path as strings; Flax NNX's trailing ``.value`` attribute is dropped."""
    names = []
    for i, k in enumerate(path):
        if isinstance(k, jax.tree_util.DictKey):
            names.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            names.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if not (k.name == "value" and i == len(path) - 1):
                names.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            names.append(str(k.key))
        else:
            names.append(str(k))
    return tuple(names)


def _dense(ndim: int) -> LmoDims:
    return LmoDims((ndim - 2,), (ndim - 1,))


def default_norm_and_dims(path: Path, shape: tuple[int, ...], attention: set[Path]) -> tuple:
    """The default ``(norm, dims)`` of one leaf; ``attention`` holds the paths of modules
    that have a ``query`` child."""
    ndim = len(shape)
    name = path[-1] if path else ""
    lowered = [p.lower() for p in path]
    if ndim <= 1 or name in VECTOR_NAMES:
        return "rms", LmoDims((), tuple(range(ndim)))
    if is_embedding(path):
        return "column", _dense(ndim)
    if any(p in HEAD_NAMES for p in lowered[:-1]):
        return "sign", _dense(ndim)
    if ndim >= 3 and len(path) >= 2 and path[-2] in ATTENTION_IN:
        k = ndim - 3
        return "spectral", LmoDims((k,), (k + 1, k + 2))
    if ndim >= 3 and len(path) >= 2 and path[-2] == "out" and path[:-2] in attention:
        k = ndim - 3
        return "spectral", LmoDims((k, k + 1), (k + 2,))
    if ndim >= 3 and any("conv" in p for p in lowered):
        return "spectral", LmoDims((ndim - 2,), (ndim - 1,), tuple(range(ndim - 2)))
    return "spectral", _dense(ndim)


def _flat(tree: chex.ArrayTree) -> tuple[list[tuple[Path, jax.Array]], object]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_names(p), leaf) for p, leaf in flat], treedef


def _attention_modules(paths: list[Path]) -> set[Path]:
    return {p[:i] for p in paths for i, name in enumerate(p) if name == "query"}


def _is_scalar(x: object) -> bool:
    return not isinstance(x, dict | list | tuple) and np.ndim(x) == 0


def _per_leaf(spec: object, flat: list, treedef: object, what: str, is_leaf=None) -> list:
    """``spec`` (a callable of (path, leaf), a tree like the params, or one value) as a list
    in leaf order; ``None`` entries mean "the default"."""
    if callable(spec):
        return [spec(path, leaf) for path, leaf in flat]
    if isinstance(spec, LmoDims):
        raise TypeError(
            f"`{what}` must be a tree of optclip.LmoDims like the params or a callable "
            "(path, leaf) -> LmoDims; one LmoDims cannot fit every leaf."
        )
    if spec is None or isinstance(spec, str) or _is_scalar(spec):
        return [spec] * len(flat)
    leaves, spec_def = jax.tree.flatten(spec, is_leaf=is_leaf)
    if spec_def != treedef or len(leaves) != len(flat):
        raise ValueError(
            f"`{what}` must have the params' tree structure, got {spec_def}, params {treedef}."
        )
    return leaves


def resolve(
    tree: chex.ArrayTree, norms: NormSpec = None, dims: DimsSpec = None
) -> tuple[list[str], list[LmoDims], object]:
    """Per leaf of ``tree``, in leaf order: the norm and the dims (defaults filled in)."""
    flat, treedef = _flat(tree)
    attention = _attention_modules([p for p, _ in flat])
    norm_list = _per_leaf(norms, flat, treedef, "norms", is_leaf=lambda x: x is None)
    dims_list = _per_leaf(
        dims, flat, treedef, "dims", is_leaf=lambda x: x is None or isinstance(x, LmoDims)
    )
    out_norms, out_dims = [], []
    for (path, leaf), n, d in zip(flat, norm_list, dims_list, strict=True):
        default_norm, default_d = default_norm_and_dims(path, np.shape(leaf), attention)
        n = default_norm if n is None else n
        _checks.check_choice("norms", n, NORMS)
        d = default_d if d is None else d
        if not isinstance(d, LmoDims):
            raise TypeError(f"`dims` at {'/'.join(path)} must be an optclip.LmoDims, got {d!r}.")
        out_norms.append(n)
        out_dims.append(d)
    return out_norms, out_dims, treedef


def resolve_values(tree: chex.ArrayTree, value: LayerValue, what: str) -> list:
    """A per-layer number (scalar, tree or callable) as a list in leaf order, each checked."""
    flat, treedef = _flat(tree)
    values = _per_leaf(value, flat, treedef, what, is_leaf=lambda x: x is None)
    for v in values:
        _checks.check_nonnegative(what, v)
    return values


def default_lmo_norms(
    params: chex.ArrayTree, norms: NormSpec = None, dims: DimsSpec = None
) -> tuple[chex.ArrayTree, chex.ArrayTree]:
    """The norm and the axes each leaf of a Flax params tree gets by default.

    Hidden matrices (dense, attention, convolution and stacked kernels) get ``"spectral"``,
    an ``Embed``'s ``embedding`` and a token or position table (a leaf or module named ``pos``,
    ``pos_embed*``, ``position*``, ``wpe``, ``wte`` or ``*embedding*``) get ``"column"``, a
    kernel under ``head``, ``lm_head``, ``output`` or ``logits`` gets ``"sign"`` (Scion's GPT),
    and biases, norm scales and vectors get ``"rms"``. :func:`optclip.muon` sends every
    non-spectral leaf to AdamW. A Flax NNX ``State`` works as it is (its ``.value``
    attribute is left out of the paths).

    Args:
      params: the params (or any tree shaped like them).
      norms: overrides: one norm name for every leaf, a tree of names (``None`` entries keep
        the default), or a callable ``(path, leaf) -> name | None`` with ``path`` a tuple of
        strings such as ``("layers", "0", "mlp", "kernel")``.
      dims: overrides of the axes: a tree of :class:`LmoDims` like the params, or a callable
        ``(path, leaf) -> LmoDims | None``.

    Returns:
      ``(norms, dims)``: a tree of norm names and a tree of :class:`LmoDims`, both shaped like
      ``params`` (an ``LmoDims`` is a tuple to jax: map over ``dims`` with
      ``is_leaf=lambda x: isinstance(x, optclip.LmoDims)``).

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> params = {"embed": {"embedding": jnp.zeros((10, 4))},
      ...           "mlp": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
      ...           "head": {"kernel": jnp.zeros((8, 10))}}
      >>> norms, dims = optclip.default_lmo_norms(params)
      >>> norms["embed"], norms["head"], norms["mlp"]
      ({'embedding': 'column'}, {'kernel': 'sign'}, {'bias': 'rms', 'kernel': 'spectral'})
    """
    norm_list, dims_list, treedef = resolve(params, norms, dims)
    return jax.tree.unflatten(treedef, norm_list), jax.tree.unflatten(treedef, dims_list)
