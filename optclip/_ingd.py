"""Deterministic INGD (Zhang's thesis, Algorithm 2): a (delta, epsilon)-stationary point
of a Lipschitz function, with a certificate.

One ``jax.lax.while_loop`` over :class:`_Carry`; each iteration takes one of
three steps from the anchor ``x`` with direction ``m``: accept the trial point
``x - delta m/||m||`` as the new anchor (sufficient descent), mix the gradient
at a random point of the segment into ``m`` (search), or restart the search
from the anchor's gradient after ``K`` failed searches.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optclip import _checks
from optclip._keys import key_data, wrap
from optclip._numerics import global_norm, safe_divide
from optclip._types import KeyLike


class IngdStatus(enum.IntEnum):
    """Why :func:`ingd` stopped."""

    CERTIFIED = 0  # ||m|| <= epsilon: the anchor is (delta, epsilon)-stationary
    BUDGET_EXHAUSTED = 1  # max_oracle_calls reached without a certificate


class IngdResult(NamedTuple):
    """What :func:`ingd` returns.

    Attributes:
      x: the anchor ``x_t``.
      m: the direction ``m``: a convex combination of gradients taken inside
        ``x + delta B``.
      m_norm: ``||m||``.
      stationary: ``||m|| <= epsilon``, the certificate that ``x`` is
        (delta, epsilon)-stationary.
      value: ``f(x)``.
      num_value_calls: function evaluations.
      num_grad_calls: gradient evaluations.
      num_anchors: accepted descent steps (anchors after the first).
      num_searches: inner-loop steps that failed the descent test.
      status: an :class:`IngdStatus` value.
    """

    x: chex.ArrayTree
    m: chex.ArrayTree
    m_norm: jax.Array
    stationary: jax.Array
    value: jax.Array
    num_value_calls: jax.Array
    num_grad_calls: jax.Array
    num_anchors: jax.Array
    num_searches: jax.Array
    status: jax.Array


def ingd_oracle_bound(
    delta: float, epsilon: float, lipschitz: float, gap: float, failure_probability: float = 0.1
) -> float:
    r"""Theorem 5.4.1's bound on the oracle calls of :func:`ingd`.

    ``192 Delta L^2 / (eps^3 delta) log(4 Delta / (gamma delta eps))`` with ``Delta``
    the gap ``f(x0) - inf f`` and ``gamma`` the failure probability.

    Args:
      delta: ``> 0``, the radius of stationarity.
      epsilon: ``> 0``, the tolerance on the direction's norm.
      lipschitz: ``L > 0``.
      gap: ``Delta > 0``, ``f(x0) - inf f``.
      failure_probability: ``gamma`` in ``(0, 1)``.

    Returns:
      The bound, a float.

    Examples:
      >>> import optclip
      >>> round(optclip.ingd_oracle_bound(0.1, 0.1, 1.0, 1.0)) > 0
      True
    """
    for name, v in (("delta", delta), ("epsilon", epsilon), ("lipschitz", lipschitz), ("gap", gap)):
        _checks.check_positive(name, v)
    _checks.check_range(
        "failure_probability", failure_probability, 0.0, 1.0, lo_open=True, hi_open=True
    )
    inner = 4 * gap / (failure_probability * delta * epsilon)
    return 192 * gap * lipschitz**2 / (epsilon**3 * delta) * max(math.log(inner), 1.0)


class _Carry(NamedTuple):
    x: chex.ArrayTree  # the anchor
    fx: jax.Array  # f(anchor)
    m: chex.ArrayTree  # the direction
    k: jax.Array  # searches since the last restart
    calls_f: jax.Array
    calls_g: jax.Array
    anchors: jax.Array
    searches: jax.Array
    done: jax.Array
    draws: jax.Array  # random numbers drawn so far


class _Problem(NamedTuple):
    f: Callable[[chex.ArrayTree], jax.Array]
    grad: Callable[[chex.ArrayTree], chex.ArrayTree]
    delta: float
    epsilon: float
    four_l2: float
    k_max: int
    key: jax.Array


def _validate(f, x0, delta, epsilon, lipschitz, max_oracle_calls, inner_steps) -> int:
    """Checks the arguments; returns ``K``, the searches before a restart."""
    _checks.check_positive("delta", delta)
    _checks.check_positive("epsilon", epsilon)
    _checks.check_positive("lipschitz", lipschitz)
    if not isinstance(max_oracle_calls, int | np.integer) or max_oracle_calls < 1:
        raise ValueError(f"`max_oracle_calls` must be an integer >= 1, got {max_oracle_calls!r}.")
    f0 = jax.eval_shape(f, x0)
    if getattr(f0, "shape", None) != ():
        raise ValueError(f"`f` must return a scalar; f(x0) has shape {getattr(f0, 'shape', '?')}.")
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(x0)):
        v0 = f(x0)
        if not isinstance(v0, jax.core.Tracer) and not bool(jnp.isfinite(v0)):
            raise ValueError(f"`f(x0)` must be finite, got {float(v0)}.")
    k_max = inner_steps if inner_steps is not None else math.ceil(48 * lipschitz**2 / epsilon**2)
    if k_max < 1:
        raise ValueError(f"`inner_steps` must be >= 1, got {k_max}.")
    return k_max


def _accept(pb: _Problem, c: _Carry, xk: chex.ArrayTree, fk: jax.Array) -> _Carry:
    """Sufficient descent: the trial point is the new anchor; restart from its gradient."""
    return c._replace(
        x=xk,
        fx=fk,
        m=pb.grad(xk),
        k=jnp.int32(0),
        calls_f=c.calls_f + 1,
        calls_g=c.calls_g + 1,
        anchors=c.anchors + 1,
    )


def _search(pb: _Problem, c: _Carry, xk: chex.ArrayTree, m_norm: jax.Array) -> _Carry:
    """No descent: mix the gradient at a uniform point of the segment [x, xk] into m."""
    u = jax.random.uniform(jax.random.fold_in(pb.key, c.draws))
    y = jax.tree.map(lambda a, b: a + u * (b - a), c.x, xk)
    beta = jnp.clip((pb.four_l2 - m_norm**2) / (pb.four_l2 + 2 * m_norm**2), 0.0, 1.0)
    m = jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, c.m, pb.grad(y))
    return c._replace(
        m=m,
        k=c.k + 1,
        calls_f=c.calls_f + 1,
        calls_g=c.calls_g + 1,
        searches=c.searches + 1,
        draws=c.draws + 1,
    )


def _restart(pb: _Problem, c: _Carry) -> _Carry:
    """K searches without descent: a new local search from the anchor's gradient."""
    return c._replace(
        m=pb.grad(c.x),
        k=jnp.int32(0),
        calls_f=c.calls_f + 1,
        calls_g=c.calls_g + 1,
        searches=c.searches + 1,
    )


def _iteration(pb: _Problem, c: _Carry) -> _Carry:
    m_norm = global_norm(c.m)
    step = safe_divide(jnp.float32(pb.delta), m_norm)
    xk = jax.tree.map(lambda a, b: a - step * b, c.x, c.m)
    fk = pb.f(xk)
    descent = fk - c.fx < -pb.delta * m_norm / 4
    branch = jnp.where(descent, 0, jnp.where(c.k + 1 >= pb.k_max, 2, 1))
    nxt = jax.lax.switch(
        branch,
        [
            lambda: _accept(pb, c, xk, fk),
            lambda: _search(pb, c, xk, m_norm),
            lambda: _restart(pb, c),
        ],
    )
    return nxt._replace(done=global_norm(nxt.m) <= pb.epsilon)


def ingd(
    f: Callable[[chex.ArrayTree], jax.Array],
    x0: chex.ArrayTree,
    *,
    delta: float,
    epsilon: float,
    lipschitz: float,
    max_oracle_calls: int = 100_000,
    key: KeyLike = 0,
    inner_steps: int | None = None,
) -> IngdResult:
    r"""Deterministic INGD (thesis, Algorithm 2): a (delta, epsilon)-stationary point of ``f``.

    From the anchor ``x_t`` with direction ``m`` (first the gradient at
    ``x_t``), the trial point is ``x_t - delta m/||m||``. If ``||m|| <= epsilon``
    the anchor is returned with its certificate. If the trial point decreases
    ``f`` by more than ``delta ||m|| / 4`` it becomes the next anchor.
    Otherwise a point ``y`` is drawn uniformly on the segment to the trial
    point and ``m <- beta m + (1 - beta) grad f(y)`` with
    ``beta = (4L^2 - ||m||^2) / (4L^2 + 2||m||^2)``; after ``K = 48 L^2/eps^2``
    such steps the search restarts from the gradient at ``x_t``. Every
    gradient the direction mixes is taken within ``delta`` of the anchor, so
    ``||m|| <= epsilon`` certifies stationarity (Theorem 5.4.1).

    Runs as one ``jax.lax.while_loop``: ``jax.jit(lambda x: ingd(f, x, ...))``
    works. Gradients come from :func:`jax.grad` (at kinks, the one autodiff
    picks, an element of the Clarke subdifferential for the usual primitives).

    Args:
      f: pytree -> scalar, Lipschitz with constant ``lipschitz``.
      x0: the starting pytree.
      delta: ``> 0``, the radius of stationarity.
      epsilon: ``> 0``, the tolerance on the direction's norm.
      lipschitz: ``L > 0``, an upper bound on ``||grad f||``; ``beta`` is
        clipped to ``[0, 1)`` if a gradient exceeds ``2L``.
      max_oracle_calls: budget of function plus gradient evaluations.
      key: int seed, typed key or raw key for the interpolation points.
      inner_steps: ``K``; ``ceil(48 L^2 / epsilon^2)`` by default.

    Returns:
      An :class:`IngdResult`.

    Raises:
      ValueError: for non-positive ``delta``, ``epsilon`` or ``lipschitz``, a
        budget below 1, or an ``f(x0)`` that is not a finite scalar.

    References:
      Zhang, Lin, Jegelka, Sra, Jadbabaie, 2020, https://arxiv.org/abs/2002.04130.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> res = optclip.ingd(lambda x: jnp.sum(jnp.abs(x)), jnp.array([1.0, -1.0]),
      ...                    delta=0.5, epsilon=0.5, lipschitz=2.0)
      >>> bool(res.stationary)
      True
    """
    k_max = _validate(f, x0, delta, epsilon, lipschitz, max_oracle_calls, inner_steps)
    data, impl = key_data(key)
    pb = _Problem(f, jax.grad(f), delta, epsilon, 4.0 * lipschitz**2, k_max, wrap(data, impl))
    x0 = jax.tree.map(lambda v: jnp.asarray(v, jnp.result_type(v, jnp.float32)), x0)
    m0 = pb.grad(x0)
    zero = jnp.int32(0)
    start = _Carry(
        x0,
        f(x0),
        m0,
        zero,
        jnp.int32(1),
        jnp.int32(1),
        zero,
        zero,
        global_norm(m0) <= epsilon,
        zero,
    )
    end = jax.lax.while_loop(
        lambda c: (~c.done) & (c.calls_f + c.calls_g < max_oracle_calls),
        lambda c: _iteration(pb, c),
        start,
    )
    m_norm = global_norm(end.m)
    stationary = m_norm <= epsilon
    status = jnp.where(stationary, IngdStatus.CERTIFIED, IngdStatus.BUDGET_EXHAUSTED)
    return IngdResult(
        x=end.x,
        m=end.m,
        m_norm=m_norm,
        stationary=stationary,
        value=end.fx,
        num_value_calls=end.calls_f,
        num_grad_calls=end.calls_g,
        num_anchors=end.anchors,
        num_searches=end.searches,
        status=status.astype(jnp.int32),
    )
