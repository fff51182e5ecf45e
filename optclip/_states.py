"""Finding one transform's state inside a chained or wrapped optimizer state."""

from __future__ import annotations

from typing import TypeVar

import optax
from jax import tree

S = TypeVar("S")


def find_state(opt_state: optax.OptState, kinds: type[S] | tuple[type[S], ...]) -> S | None:
    """The first state of type ``kinds`` in ``opt_state``, in chain order, or ``None``.

    Looks through any nesting: ``optax.chain`` tuples, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ``optax.masked`` and optclip's own wrappers.
    """
    for leaf in tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds)):
        if isinstance(leaf, kinds):
            return leaf
    return None
