"""Eager validation of hyperparameters.

Checks run only on values we can see at construction time (Python and NumPy
scalars). Arrays and tracers, as :func:`optax.inject_hyperparams` passes them,
go through unchecked: Python control flow on a traced value would fail.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optclip._numerics import is_number


def _describe(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{lo:g}, {hi:g}{right}"


def check_range(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raises ``ValueError`` naming ``name`` if a concrete ``value`` is outside the range."""
    if not is_number(value):
        return
    v = float(value)
    ok = not math.isnan(v)
    ok = ok and (v > lo if lo_open else v >= lo)
    ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(
            f"`{name}` must be in {_describe(lo, hi, lo_open, hi_open)}, got {value!r}."
        )


def check_decay(name: str, value: Any) -> None:
    check_range(name, value, 0.0, 1.0, hi_open=True)


def check_positive(name: str, value: Any) -> None:
    check_range(name, value, 0.0, math.inf, lo_open=True, hi_open=True)


def check_nonnegative(name: str, value: Any) -> None:
    check_range(name, value, 0.0, math.inf, hi_open=True)


def check_threshold_leaves(name: str, threshold: Any) -> None:
    """Thresholds: every concrete leaf finite and >= 0 (a schedule is not checked)."""
    if callable(threshold):
        return
    import jax

    for leaf in jax.tree.leaves(threshold):
        if is_number(leaf) or isinstance(leaf, np.ndarray):
            arr = np.asarray(leaf, dtype=np.float64)
            if not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
                raise ValueError(
                    f"`{name}` must be finite and >= 0 (valid range [0, inf)), got {leaf!r}."
                )
