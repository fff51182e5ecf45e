"""The LMO rows of the cost benchmarks (``step_time.py``, ``footprint.py``): optclip's Muon,
Scion and Gluon beside ``optax.contrib.muon`` given the same Muon/AdamW split.

The model trees are flat ``{"h_0/attn/c_attn/kernel": array}`` dicts, so the default
assignment, which reads Flax's module names, is computed once on the nested form of every
model tree and looked up by the flat key. ``optax.contrib.muon`` gets, through
``muon_weight_dimension_numbers``, a ``MuonDimensionNumbers`` for exactly the leaves
``optclip.muon`` orthogonalizes (the same fan-in and fan-out axes) and ``None`` (AdamW) for the
rest; its own default would put every 2-D leaf on Muon (the embeddings included) and every conv
and attention kernel on AdamW, a different amount of work.
"""

from __future__ import annotations

import functools

import _model_trees
import jax
import numpy as np
import optax

import optclip
from optclip import diagnostics as D

CONTRIB = "optax.contrib.muon"


def _nested(shapes: dict[str, tuple[int, ...]]) -> dict:
    """``{"a/b": shape}`` as ``{"a": {"b": leaf}}`` with zero-stride leaves (no memory)."""
    out: dict = {}
    for path, shape in shapes.items():
        *mods, name = path.split("/")
        node = out
        for m in mods:
            node = node.setdefault(m, {})
        node[name] = np.broadcast_to(np.float32(0), shape)
    return out


def _flat(tree, is_leaf=None) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {"/".join(str(k.key) for k in path): v for path, v in flat}


@functools.cache
def assignment(gluon: bool = False) -> dict[str, tuple[str, optclip.LmoDims]]:
    """Flat key -> (norm, dims) over every model tree (ranks, not widths, decide them).
    ``gluon``: the embeddings on the sign norm with ``dim`` as the fan-in, as ``optclip.gluon``
    assigns them."""
    table = {}
    for build in _model_trees.MODELS.values():
        nested = _nested(build(0.05))
        norms, dims = optclip.default_lmo_norms(nested)
        is_dims = lambda x: isinstance(x, optclip.LmoDims)
        kinds = _flat(D.layer_kinds(nested))
        flat_dims = _flat(dims, is_leaf=is_dims)
        for key, norm in _flat(norms).items():
            d = flat_dims[key]
            if gluon and kinds[key] == "embedding":
                n = np.ndim(_flat(nested)[key])
                norm, d = "sign", optclip.LmoDims((n - 1,), (n - 2,))
            table[key] = (norm, d)
    return table


def _lookup(index: int, gluon: bool = False):
    return lambda path, leaf: assignment(gluon).get("/".join(path), (None, None))[index]


def norm_and_dims(key: str, leaf) -> tuple[str, optclip.LmoDims]:
    """A flat key's (norm, dims): the model trees' table, else the default for a lone leaf."""
    if key in assignment():
        return assignment()[key]
    norms, dims = optclip.default_lmo_norms({key: leaf})
    return norms[key], dims[key]


def contrib_spec(norm: str, d: optclip.LmoDims) -> optax.contrib.MuonDimensionNumbers | None:
    """``optax.contrib.muon``'s spec for one leaf: optclip's axes where optclip's Muon takes it
    (the spectral norm), else None (AdamW)."""
    if norm != "spectral":
        return None
    return optax.contrib.MuonDimensionNumbers(d.spatial_axes + d.reduction_axes, d.output_axes)


def contrib_dimension_numbers(params: dict) -> dict:
    """``optax.contrib.muon``'s spec for a flat tree: optclip's spectral leaves, else None."""
    return {key: contrib_spec(*norm_and_dims(key, leaf)) for key, leaf in params.items()}


def rows(lr: float) -> dict[str, tuple[optax.GradientTransformation, str | None]]:
    """name -> (transformation, counterpart), the counterpart ``optax.contrib.muon``."""
    norms, dims = _lookup(0), _lookup(1)
    return {
        CONTRIB: (
            optax.contrib.muon(lr, muon_weight_dimension_numbers=contrib_dimension_numbers),
            None,
        ),
        "muon": (optclip.muon(lr, norms=norms, dims=dims), CONTRIB),
        "scion": (optclip.scion(lr, norms=norms, dims=dims), CONTRIB),
        "gluon": (
            optclip.gluon(1.0, 1.0, lr, norms=_lookup(0, True), dims=_lookup(1, True)),
            CONTRIB,
        ),
    }
