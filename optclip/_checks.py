"""Validation of hyperparameters, and what counts as a statically known value.

A check runs wherever the value is concrete: Python and NumPy numbers, and
0-d jax arrays that are not traced. That covers the factory call, and
``init``/``update`` under :func:`optax.inject_hyperparams` outside ``jit``
(it rebuilds the transform from its hyperparameters there). A traced value
passes unchecked: Python control flow on it would fail under ``jit``.
"""

from __future__ import annotations

import math
import numbers
import warnings

import jax
import numpy as np
import numpy.typing as npt


def static_value(x: object) -> float | None:
    """The value of a concrete real scalar, or ``None`` if it is not one.

    Python and NumPy real numbers (not ``bool``) and 0-d real arrays that are
    not traced count; anything else (a tracer, a schedule, a pytree, a string)
    gives ``None``.
    """
    if isinstance(x, bool | np.bool_):
        return None
    if isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, np.generic | np.ndarray | jax.Array) and np.ndim(x) == 0:
        if _is_real_dtype(x.dtype):
            return float(np.asarray(x))
    return None


def is_static_zero(x: object) -> bool:
    """True when ``x`` is a concrete zero in any numeric form (Python, NumPy, 0-d jax)."""
    return static_value(x) == 0.0


def drops_state(x: object) -> bool:
    """``x`` is a Python or NumPy zero, so the state for it can be left out.

    :func:`optax.inject_hyperparams` turns every numeric hyperparameter into a
    jax array that is concrete in ``init`` but traced in a jitted ``update``,
    so a decision that adds or drops a state leaf may rest only on values that
    no wrapper can turn into arrays.
    """
    return not isinstance(x, jax.Array) and is_static_zero(x)


def _describe(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{lo:g}, {hi:g}{right}"


def _is_real_dtype(dtype: npt.DTypeLike) -> bool:
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def _number(value: object) -> str:
    """A concrete scalar as the user would write it (``1.5``, not ``Array(1.5, ...)``)."""
    if isinstance(value, np.ndarray | jax.Array):
        return repr(value.item())
    return repr(value)


def _shown(value: object) -> str:
    return f"{value!r} (a {type(value).__name__})"


def check_type(name: str, value: object, *, schedule: bool = False) -> None:
    """Raises ``TypeError`` naming ``name`` unless ``value`` can be a scalar hyperparameter.

    Valid: a real Python or NumPy number (not ``bool``), a 0-d real array,
    traced or not, and, with ``schedule=True``, a callable of the step count.
    """
    if schedule and callable(value):
        return
    if static_value(value) is not None:
        return
    if isinstance(value, jax.core.Tracer) and np.ndim(value) == 0 and _is_real_dtype(value.dtype):
        return
    what = "a real number or a 0-d real array"
    if schedule:
        what += ", or a schedule (a callable of the step count)"
    raise TypeError(f"`{name}` must be {what}, got {_shown(value)}.")


def check_range(
    name: str,
    value: object,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    schedule: bool = False,
) -> None:
    """Checks the type (:func:`check_type`), then the range of a concrete ``value``.

    Raises:
      TypeError: ``value`` is not a real scalar (or schedule, where allowed).
      ValueError: a concrete ``value`` is outside the range; names ``name``,
        the range and the value.
    """
    check_type(name, value, schedule=schedule)
    v = static_value(value)
    if v is None:
        return
    ok = not math.isnan(v)
    ok = ok and (v > lo if lo_open else v >= lo)
    ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(
            f"`{name}` must be in {_describe(lo, hi, lo_open, hi_open)}, got {_number(value)}."
        )


def check_decay(name: str, value: object) -> None:
    check_range(name, value, 0.0, 1.0, hi_open=True)


def check_positive(name: str, value: object, *, schedule: bool = False) -> None:
    check_range(name, value, 0.0, math.inf, lo_open=True, hi_open=True, schedule=schedule)


def check_nonnegative(name: str, value: object, *, schedule: bool = False) -> None:
    check_range(name, value, 0.0, math.inf, hi_open=True, schedule=schedule)


def check_flag(name: str, value: object) -> None:
    """Raises ``TypeError`` naming ``name`` unless ``value`` is a Python ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {_shown(value)}.")


def check_threshold_leaves(name: str, threshold: object) -> None:
    """Thresholds: every concrete leaf finite and >= 0 (a schedule is checked when called).

    Raises:
      TypeError: a leaf is not a real number or real array, or there is none.
      ValueError: a concrete leaf has a negative, infinite or NaN entry.
    """
    if callable(threshold):
        return
    leaves = jax.tree.leaves(threshold)
    if not leaves:
        raise TypeError(
            f"`{name}` must be a number, a pytree of real arrays or a schedule, "
            f"got {_shown(threshold)}."
        )
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            continue
        is_array = isinstance(leaf, np.generic | np.ndarray | jax.Array)
        if isinstance(leaf, bool | np.bool_) or not (
            isinstance(leaf, numbers.Real) or (is_array and _is_real_dtype(leaf.dtype))
        ):
            raise TypeError(
                f"`{name}` must be a number, a pytree of real arrays or a schedule, "
                f"got {_shown(leaf)}."
            )
        arr = np.asarray(leaf, dtype=np.float64)
        if not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
            raise ValueError(
                f"`{name}` must be finite and >= 0 (valid range [0, inf)), "
                f"got {_number(leaf) if np.ndim(leaf) == 0 else repr(leaf)}."
            )


def state_dtype(name: str, dtype: jax.typing.DTypeLike | None) -> np.dtype:
    """The dtype to store a statistic in: float32 for ``None``, else a checked floating dtype."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        resolved = jax.numpy.dtype(dtype)
    except TypeError as e:
        raise TypeError(
            f"`{name}` must be a floating dtype (e.g. jnp.bfloat16, 'float32') or None, "
            f"got {dtype!r}."
        ) from e
    if not jax.numpy.issubdtype(resolved, jax.numpy.inexact):
        raise TypeError(
            f"`{name}` must be a floating dtype (e.g. jnp.bfloat16, 'float32') or None, "
            f"got {dtype!r}."
        )
    return resolved


def check_count(name: str, value: object, lo: int = 0, hi: object = None, why: str = "") -> None:
    """Raises unless ``value`` is a whole number of steps ``>= lo`` (and ``<= hi``).

    Valid: a Python or NumPy integer (not ``bool``) or a 0-d integer array,
    traced or not (:func:`optax.inject_hyperparams` passes ints as arrays).
    ``hi`` may be another argument (a window, an interval less one): checked
    where both are concrete, ``why`` following the range in the message.

    Raises:
      TypeError: ``value`` is not an integer; names ``name``.
      ValueError: a concrete ``value`` below ``lo`` or above ``hi``; names ``name``, the
        range and the value.
    """
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    is_int_array = (
        isinstance(value, np.ndarray | jax.Array)
        and np.ndim(value) == 0
        and np.issubdtype(value.dtype, np.integer)
    )
    if not (is_int or is_int_array):
        raise TypeError(f"`{name}` must be an integer (a number of steps), got {_shown(value)}.")
    v = static_value(value)
    if v is not None and v < lo:
        raise ValueError(f"`{name}` must be in [{lo}, inf), got {_number(value)}.")
    top = None if hi is None else static_value(hi)
    if v is not None and top is not None and v > top:
        raise ValueError(f"`{name}` must be in [{lo}, {int(top)}]{why}, got {_number(value)}.")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raises ``ValueError`` naming ``name`` and the choices unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}, got {value!r}."
        )


# The printed rule moves a coordinate by at most lr * tau (SGD's scale); below this rate, a
# user has almost always taken Adam's rate (docs/acclip.md measured 0.1-1 as its range).
_PRINTED_RULE_MIN_RATE = 1e-2


def warn_if_adam_sized(learning_rate: object, rms_scale: bool) -> None:
    """Warns when the printed ACClip rule gets a concrete rate its steps are too small at."""
    rate = static_value(learning_rate)
    if rms_scale is True or rate is None or not 0 < rate < _PRINTED_RULE_MIN_RATE:
        return
    warnings.warn(
        f"optclip.acclip: `learning_rate`={rate:g} with the printed rule (`rms_scale=False`), "
        "whose steps are SGD-sized: it takes SGD's rates (0.1-1), and at an Adam-sized rate "
        "its steps are hundreds of times smaller than Adam's. Pass `rms_scale=True` for "
        "Adam's rates (docs/acclip.md).",
        UserWarning,
        stacklevel=3,
    )
