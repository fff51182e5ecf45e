"""Tree helpers optax does not have."""

from __future__ import annotations

import chex
import jax


def unzip(tree_of_pairs: chex.ArrayTree, like: chex.ArrayTree) -> tuple[chex.ArrayTree, ...]:
    """A tree of pairs shaped like ``like`` into a pair of trees."""
    return jax.tree.transpose(jax.tree.structure(like), jax.tree.structure((0, 0)), tree_of_pairs)
