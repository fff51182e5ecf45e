"""Interpolated normalized gradient descent (INGD) for nonsmooth nonconvex problems.

Two algorithms of Zhang's thesis, chapter 5, that find (delta, epsilon)-stationary
points in Goldstein's sense: points ``x`` for which some convex combination of
(generalized) gradients taken inside the ball ``x + delta B`` has norm at most
``epsilon``.

* :func:`stochastic_ingd` (Algorithm 3): an optax transformation that needs
  gradients only. The gradient is evaluated at a random point ``y`` on the
  segment between consecutive iterates, so the params the loss sees are the
  interpolation points; :func:`ingd_iterate` recovers the iterate ``x``.
* :func:`ingd` (Algorithm 2): a jittable solver for ``f: pytree -> scalar``
  that also uses function values and returns a certificate of stationarity.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip import _checks
from optclip._numerics import global_norm, safe_divide

# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _is_typed(key: Any) -> bool:
    return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _key_data(key: Any) -> tuple[jax.Array, Any]:
    """Accepts an int seed, a typed key or a raw uint32 key; returns (raw data, impl or None)."""
    if _is_typed(key):
        return jax.random.key_data(key), jax.random.key_impl(key)
    arr = jnp.asarray(key)
    if arr.ndim == 0 and jnp.issubdtype(arr.dtype, jnp.integer):
        return jax.random.key_data(jax.random.key(arr)), None
    return arr.astype(jnp.uint32), None


def _wrap(data: jax.Array, impl: Any) -> jax.Array:
    if impl is None:
        return jax.random.wrap_key_data(data)
    return jax.random.wrap_key_data(data, impl=impl)


# ---------------------------------------------------------------------------
# Stochastic INGD
# ---------------------------------------------------------------------------


class StochasticIngdState(NamedTuple):
    """State of :func:`scale_by_stochastic_ingd`.

    Attributes:
      count: number of updates seen (``t - 1``).
      momentum: ``m_t`` (float32).
      offset_scale: ``c_t`` with ``x_t - y_t = c_t m_{t-1}``: the iterate
        minus the params the loss last saw is a multiple of the previous
        momentum (``y`` lies on the last step's segment), so a scalar stores it;
        :func:`ingd_iterate` adds ``c_t m`` to the params.
      key: raw key data; step ``t`` draws its interpolation point from
        ``fold_in(key, t)``, so no key is consumed and a restored state
        continues the same random sequence.
      momentum_norm: ``||m_t||`` at the last step.
    """

    count: jax.Array
    momentum: optax.Updates
    offset_scale: jax.Array
    key: jax.Array
    momentum_norm: jax.Array


def scale_by_stochastic_ingd(
    p: Any = 1.0, q: Any = 10.0, beta: Any = 0.9, *, key: Any = 0
) -> optax.GradientTransformation:
    r"""Stochastic INGD as an update rule (no learning rate: the step size is built in).

    .. math::

        x_{t+1} &= x_t - \frac{m_t}{p \|m_t\| + q} \\
        y_{t+1} &= x_t + u_t (x_{t+1} - x_t), \quad u_t \sim U[0, 1] \\
        m_{t+1} &= \beta m_t + (1 - \beta) g(y_{t+1}), \qquad m_1 = g(x_1)

    The incoming update is the gradient at the params the loss saw, ``y_t``
    (``x_1`` at the first step); the outgoing update moves the params to
    ``y_{t+1}``. Every step moves the iterate by at most ``1/p``. One scalar
    ``u_t`` serves the whole pytree: the interpolation point lies on the segment
    in parameter space.

    Args:
      p: ``> 0``; ``1/p`` bounds the distance between iterates.
      q: ``>= 0``; damps the step when ``||m||`` is small (with ``q = 0`` a zero
        momentum gives a zero step, the package's 0/0 rule).
      beta: momentum in ``[0, 1)``.
      key: an int seed, a typed key (``jax.random.key``) or a raw
        ``jax.random.PRNGKey``. Keyword-only.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`StochasticIngdState`.

    References:
      Zhang, Lin, Jegelka, Sra, Jadbabaie, 2020, "Complexity of Finding
      Stationary Points of Nonconvex Nonsmooth Functions",
      https://arxiv.org/abs/2002.04130 (Algorithm 3 there and in the thesis).
    """
    _checks.check_positive("p", p)
    _checks.check_nonnegative("q", q)
    _checks.check_decay("beta", beta)
    data, impl = _key_data(key)

    def init_fn(params):
        zeros = optax.tree.zeros_like(params, dtype=jnp.float32)
        return StochasticIngdState(
            count=jnp.zeros([], jnp.int32),
            momentum=zeros,
            offset_scale=jnp.zeros([], jnp.float32),
            key=data,
            momentum_norm=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        # m_1 = g(x_1): the first step takes the gradient itself.
        b = jnp.where(first, 0.0, beta)
        m = jax.tree.map(
            lambda g, mu: b * mu + (1.0 - b) * g.astype(jnp.float32), updates, state.momentum
        )
        norm = global_norm(m)
        inv = safe_divide(jnp.float32(1.0), p * norm + q)
        u = jax.random.uniform(jax.random.fold_in(_wrap(state.key, impl), state.count))
        # x_{t+1} - x_t = -inv m_t; y_{t+1} - y_t = (x_t - y_t) + u (x_{t+1} - x_t), where
        # x_t - y_t = c_t m_{t-1}; and x_{t+1} - y_{t+1} = -(1 - u) inv m_t.
        out = jax.tree.map(
            lambda mu_old, mu, g: (state.offset_scale * mu_old - u * inv * mu).astype(g.dtype),
            state.momentum,
            m,
            updates,
        )
        return out, StochasticIngdState(
            count=optax.safe_increment(state.count),
            momentum=m,
            offset_scale=-(1.0 - u) * inv,
            key=state.key,
            momentum_norm=norm,
        )

    return optax.GradientTransformation(init_fn, update_fn)


def stochastic_ingd(
    p: Any = 1.0,
    q: Any = 10.0,
    beta: Any = 0.9,
    *,
    key: Any = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Stochastic INGD (Zhang's thesis, Algorithm 3) as an optimizer.

    The params the loss sees are the interpolation points ``y_t``; evaluate and
    checkpoint the iterate ``x_t`` with :func:`ingd_iterate`. Weight decay is
    the L2 term ``weight_decay * y`` added to the gradient before the
    momentum (the objective becomes ``f + weight_decay/2 ||x||^2``, as in the
    thesis' ResNet experiments); ``mask`` selects the params it applies to.

    The theory's output is a random earlier iterate ``x_{max(i-K, 1)}``
    (:func:`ingd_output_index`); the running iterate is the practical default.

    Defaults are the thesis' experiment settings: ``beta = 0.9, p = 1, q = 10``.
    State: 4 bytes per parameter (the float32 momentum; scalars aside).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optclip.stochastic_ingd(key=jax.random.key(0))
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(jnp.abs(p["w"])))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> y = optax.apply_updates(params, updates)          # where the next gradient is taken
      >>> x = optclip.ingd_iterate(y, state)                 # the iterate, for evaluation
    """
    _checks.check_nonnegative("weight_decay", weight_decay)
    core = scale_by_stochastic_ingd(p, q, beta, key=key)
    if isinstance(weight_decay, int | float) and weight_decay == 0:
        return core
    return optax.chain(optax.add_decayed_weights(weight_decay, mask), core)


def _find_ingd_state(state: Any) -> StochasticIngdState:
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, StochasticIngdState))
        if isinstance(s, StochasticIngdState)
    ]
    if not found:
        raise ValueError("`state` holds no Stochastic INGD state.")
    return found[0]


def ingd_iterate(params: optax.Params, state: Any) -> optax.Params:
    """The Stochastic INGD iterate ``x_t`` from the params the loss sees (``y_t``) and the state.

    Like :func:`optax.contrib.schedule_free_eval_params`: evaluate and
    checkpoint-for-inference with ``x_t``, keep training from ``params``.
    ``state`` may be the full optimizer state (chained, injected, MultiSteps).
    """
    s = _find_ingd_state(state)
    c = s.offset_scale
    return jax.tree.map(
        lambda p, m: (p.astype(jnp.float32) + c * m).astype(p.dtype), params, s.momentum
    )


def ingd_output_index(key: Any, num_steps: int, lag: int) -> jax.Array:
    """The theory's output rule: ``max(i - K, 1)`` for ``i`` uniform in ``{1, ..., T}``.

    Theorem 5.5.1 certifies a uniformly random earlier iterate, lagging ``K =
    p delta`` steps behind, not the last one. For users who record the
    trajectory ``x_1, ..., x_T`` (1-based, as in the thesis): pick ``x`` at the
    returned index.
    """
    if num_steps < 1 or lag < 0:
        raise ValueError(
            f"`num_steps` must be >= 1 and `lag` >= 0, got num_steps={num_steps}, lag={lag}."
        )
    data, impl = _key_data(key)
    i = jax.random.randint(_wrap(data, impl), (), 1, num_steps + 1)
    return jnp.maximum(i - lag, 1)


# ---------------------------------------------------------------------------
# Deterministic INGD
# ---------------------------------------------------------------------------


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

    x: Any
    m: Any
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
    """
    for name, v in (("delta", delta), ("epsilon", epsilon), ("lipschitz", lipschitz), ("gap", gap)):
        _checks.check_positive(name, v)
    _checks.check_range(
        "failure_probability", failure_probability, 0.0, 1.0, lo_open=True, hi_open=True
    )
    inner = 4 * gap / (failure_probability * delta * epsilon)
    return 192 * gap * lipschitz**2 / (epsilon**3 * delta) * max(math.log(inner), 1.0)


def ingd(
    f: Callable[[Any], jax.Array],
    x0: Any,
    *,
    delta: float,
    epsilon: float,
    lipschitz: float,
    max_oracle_calls: int = 100_000,
    key: Any = 0,
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
    """
    _checks.check_positive("delta", delta)
    _checks.check_positive("epsilon", epsilon)
    _checks.check_positive("lipschitz", lipschitz)
    if not isinstance(max_oracle_calls, int | np.integer) or max_oracle_calls < 1:
        raise ValueError(f"`max_oracle_calls` must be an integer >= 1, got {max_oracle_calls!r}.")
    f0 = jax.eval_shape(f, x0)
    if getattr(f0, "shape", None) != ():
        raise ValueError(f"`f` must return a scalar; f(x0) has shape {getattr(f0, 'shape', '?')}.")
    if not isinstance(x0, jax.core.Tracer) and not any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(x0)
    ):
        v0 = f(x0)
        if not isinstance(v0, jax.core.Tracer) and not bool(jnp.isfinite(v0)):
            raise ValueError(f"`f(x0)` must be finite, got {float(v0)}.")
    k_max = inner_steps if inner_steps is not None else math.ceil(48 * lipschitz**2 / epsilon**2)
    if k_max < 1:
        raise ValueError(f"`inner_steps` must be >= 1, got {k_max}.")
    data, impl = _key_data(key)
    grad = jax.grad(f)
    four_l2 = 4.0 * lipschitz**2
    x0 = jax.tree.map(lambda v: jnp.asarray(v, jnp.result_type(v, jnp.float32)), x0)

    def trial(x, m, m_norm):
        step = safe_divide(jnp.float32(delta), m_norm)
        return jax.tree.map(lambda a, b: a - step * b, x, m)

    class Carry(NamedTuple):
        x: Any
        fx: jax.Array
        m: Any
        k: jax.Array
        calls_f: jax.Array
        calls_g: jax.Array
        anchors: jax.Array
        searches: jax.Array
        done: jax.Array
        draws: jax.Array

    def body(c: Carry) -> Carry:
        m_norm = global_norm(c.m)
        xk = trial(c.x, c.m, m_norm)
        fk = f(xk)
        descent = fk - c.fx < -delta * m_norm / 4
        u = jax.random.uniform(jax.random.fold_in(_wrap(data, impl), c.draws))
        restart = c.k + 1 >= k_max

        def accept(_):
            return Carry(
                xk,
                fk,
                grad(xk),
                jnp.int32(0),
                c.calls_f + 1,
                c.calls_g + 1,
                c.anchors + 1,
                c.searches,
                jnp.bool_(False),
                c.draws,
            )

        def search(_):
            y = jax.tree.map(lambda a, b: a + u * (b - a), c.x, xk)
            g = grad(y)
            beta = jnp.clip((four_l2 - m_norm**2) / (four_l2 + 2 * m_norm**2), 0.0, 1.0)
            m = jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, c.m, g)
            return Carry(
                c.x,
                c.fx,
                m,
                c.k + 1,
                c.calls_f + 1,
                c.calls_g + 1,
                c.anchors,
                c.searches + 1,
                jnp.bool_(False),
                c.draws + 1,
            )

        def restart_search(_):
            # K steps without descent: a new local search at the same anchor.
            return Carry(
                c.x,
                c.fx,
                grad(c.x),
                jnp.int32(0),
                c.calls_f + 1,
                c.calls_g + 1,
                c.anchors,
                c.searches + 1,
                jnp.bool_(False),
                c.draws,
            )

        branch = jnp.where(descent, 0, jnp.where(restart, 2, 1))
        nxt = jax.lax.switch(branch, [accept, search, restart_search], None)
        certified = global_norm(nxt.m) <= epsilon
        return nxt._replace(done=certified)

    def cond(c: Carry):
        return (~c.done) & (c.calls_f + c.calls_g < max_oracle_calls)

    m0 = grad(x0)
    start = Carry(
        x0,
        f(x0),
        m0,
        jnp.int32(0),
        jnp.int32(1),
        jnp.int32(1),
        jnp.int32(0),
        jnp.int32(0),
        global_norm(m0) <= epsilon,
        jnp.int32(0),
    )
    end = jax.lax.while_loop(cond, body, start)
    m_norm = global_norm(end.m)
    stationary = m_norm <= epsilon
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
        status=jnp.where(stationary, IngdStatus.CERTIFIED, IngdStatus.BUDGET_EXHAUSTED).astype(
            jnp.int32
        ),
    )
