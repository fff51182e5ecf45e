"""Checks of the incoming gradients that cost nothing at run time.

Dtypes, tree structures and shapes are static under ``jit``: these checks run
once, while tracing, and compile to nothing. Each error names the leaf by its
path in the user's tree (``['params']['dense']['kernel']``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _by_path(tree: chex.ArrayTree) -> dict[str, object]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def check_dtypes(updates: chex.ArrayTree) -> None:
    """Raises ``TypeError`` for an integer, boolean or float0 gradient leaf, naming its path.

    Those gradients would otherwise give a silent all-zero or truncated update.
    """
    _check_dtypes(_by_path(updates))


def _check_dtypes(grads: dict[str, object]) -> None:
    for path, leaf in grads.items():
        dtype = np.dtype(jnp.result_type(leaf))
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"Gradient leaf `{path}` has dtype {dtype.name}; optclip needs floating or "
                "complex gradients (differentiate with respect to float params, or cast, "
                "e.g. `optax.tree.cast(grads, jnp.float32)`)."
            )


def check_like(updates: chex.ArrayTree, state_tree: chex.ArrayTree, what: str) -> None:
    """Raises ``ValueError`` if ``updates`` differs from ``state_tree`` in structure or shapes.

    Args:
      updates: the incoming gradients.
      state_tree: a parameter-shaped tree from the transform's state.
      what: how the message names ``state_tree`` (e.g. "the momentum").
    """
    grads = _by_path(updates)
    _check_dtypes(grads)
    same: bool = jax.tree.structure(updates) == jax.tree.structure(state_tree)  # type: ignore[operator]
    if same:
        for (path, g), s in zip(grads.items(), jax.tree.leaves(state_tree), strict=True):
            if np.shape(g) != np.shape(s):
                raise ValueError(
                    f"Gradient leaf `{path}` has shape {np.shape(g)}, but {what} in the "
                    f"optimizer state has shape {np.shape(s)} there: the state was built "
                    "by `init` for other params."
                )
        return
    state = _by_path(state_tree)
    missing = sorted(set(state) - set(grads))
    extra = sorted(set(grads) - set(state))
    detail = []
    if missing:
        detail.append(f"missing from the gradients: {', '.join(missing)}")
    if extra:
        detail.append(f"not in the state: {', '.join(extra)}")
    if not detail:
        detail.append(
            f"same leaves in other containers: gradients {jax.tree.structure(updates)}, "
            f"state {jax.tree.structure(state_tree)}"
        )
    raise ValueError(
        f"The gradients' tree differs from {what} in the optimizer state, which `init` "
        f"built from the params ({'; '.join(detail)})."
    )
