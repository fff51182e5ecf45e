"""Stochastic INGD (Zhang's thesis, Algorithm 3): normalized momentum steps whose
gradients are taken at random points between consecutive iterates.

Finds (delta, epsilon)-stationary points of nonsmooth nonconvex objectives in
Goldstein's sense: points ``x`` for which some convex combination of
(generalized) gradients taken inside the ball ``x + delta B`` has norm at most
``epsilon``. The params the loss sees are the interpolation points ``y``;
:func:`ingd_iterate` recovers the iterate ``x``. The deterministic solver
with a certificate is :func:`optclip.ingd`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._keys import key_data, wrap
from optclip._numerics import global_norm, momentum_zeros, safe_divide
from optclip._states import find_state
from optclip._types import KeyLike, Mask, Scalar
from optclip._weight_decay import decoupled_weight_decay


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

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    momentum: optax.Updates
    offset_scale: jax.Array
    key: jax.Array
    momentum_norm: jax.Array


def _output(state, m, updates, b, first, step, in_place):
    """``c_t m_{t-1} - u_t eta_t m_t`` (``step = u_t eta_t``), in the updates' dtypes."""
    c = state.offset_scale
    if not in_place:
        return jax.tree.map(
            lambda mu_old, mu, g: (c * mu_old - step * mu).astype(g.dtype),
            state.momentum,
            m,
            updates,
        )
    # m_{t-1} = (m_t - (1 - b) g_t) / b, so the output needs only m_t and g_t: the step writes
    # m_t over m_{t-1} without keeping a copy (docs/design.md). The first step has c_1 = 0 and
    # b = 0: its output is -step m_1, which the wheres keep exact.
    safe_b = jnp.where(first, 1.0, b)
    a = jnp.where(first, 0.0, c / safe_b) - step
    g_scale = jnp.where(first, 0.0, -c * (1.0 - b) / safe_b)
    return jax.tree.map(
        lambda mu, g: (a * mu + g_scale * g.astype(mu.dtype)).astype(g.dtype), m, updates
    )


# The smallest beta whose step reconstructs the old momentum instead of keeping it.
IN_PLACE_MIN_BETA = 0.5


def scale_by_stochastic_ingd(
    p: Scalar = 1.0, q: Scalar = 10.0, beta: Scalar = 0.9, *, key: KeyLike = 0
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

    Memory: the output ``c_t m_{t-1} - u_t eta_t m_t`` needs the old momentum
    after the new one exists, which made XLA:CPU copy ``m_{t-1}`` aside every
    step (a parameter-sized temporary). For a known ``beta >= 1/2`` the step
    instead writes ``m_t`` in place and forms the output from ``m_t`` and
    ``g_t``, since ``m_{t-1} = (m_t - (1 - beta) g_t) / beta``: no temporary,
    Adam's 24 bytes of traffic per parameter, the same iterates to float32
    rounding. A smaller, zero or traced ``beta`` keeps the direct form
    (``docs/performance.md``).

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
    data, impl = key_data(key)
    # The in-place form divides by beta, which loses about log2(1/beta) bits: it serves a known
    # beta of at least 1/2; a smaller, zero or traced beta takes the form that keeps m_{t-1}.
    known = _checks.static_value(beta)
    in_place = known is not None and known >= IN_PLACE_MIN_BETA

    def init_fn(params):
        zeros = momentum_zeros(params, jnp.float32)
        return StochasticIngdState(
            count=jnp.zeros([], jnp.int32),
            momentum=zeros,
            offset_scale=jnp.zeros([], jnp.float32),
            key=data,
            momentum_norm=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.momentum, "the momentum")
        first = state.count == 0
        # m_1 = g(x_1): the first step takes the gradient itself.
        b = jnp.where(first, 0.0, beta)
        m = jax.tree.map(
            lambda g, mu: b * mu + (1.0 - b) * g.astype(mu.dtype), updates, state.momentum
        )
        norm = global_norm(m)
        inv = safe_divide(jnp.float32(1.0), p * norm + q)
        step_key = jax.random.fold_in(wrap(state.key, impl), state.count)
        u = jax.random.uniform(step_key, (), jnp.float32)
        # x_{t+1} - x_t = -inv m_t; y_{t+1} - y_t = (x_t - y_t) + u (x_{t+1} - x_t), where
        # x_t - y_t = c_t m_{t-1}; and x_{t+1} - y_{t+1} = -(1 - u) inv m_t.
        out = _output(state, m, updates, b, first, u * inv, in_place)
        return out, StochasticIngdState(
            count=optax.safe_increment(state.count),
            momentum=optax.tree.cast_like(m, state.momentum),
            offset_scale=(-(1.0 - u) * inv).astype(jnp.float32),
            key=state.key,
            momentum_norm=norm,
        )

    return optax.GradientTransformation(init_fn, update_fn)


def stochastic_ingd(
    p: Scalar = 1.0,
    q: Scalar = 10.0,
    beta: Scalar = 0.9,
    *,
    key: KeyLike = 0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask = None,
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

    Args:
      p: ``> 0``; ``1/p`` bounds the distance between iterates.
      q: ``>= 0``; damps the step when the momentum is small.
      beta: momentum in ``[0, 1)``.
      key: keyword-only; an int seed, a typed key or a raw key.
      weight_decay: keyword-only; the L2 coefficient ``>= 0`` (float or schedule).
      mask: keyword-only; which params get the L2 term (as
        :func:`optax.add_decayed_weights`).

    Returns:
      An :class:`optax.GradientTransformation`: ``optax.chain(decay,
      scale_by_stochastic_ingd(...))``, the decay a stateless identity at 0.

    References:
      Zhang, Lin, Jegelka, Sra, Jadbabaie, 2020, https://arxiv.org/abs/2002.04130.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optclip.stochastic_ingd(key=jax.random.key(0))
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(jnp.abs(p["w"])))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> y = optax.apply_updates(params, updates)          # where the next gradient is taken
      >>> x = optclip.ingd_iterate(y, state)                 # the iterate, for evaluation
    """
    return optax.chain(
        decoupled_weight_decay(weight_decay, mask), scale_by_stochastic_ingd(p, q, beta, key=key)
    )


def ingd_iterate(params: optax.Params, state: optax.OptState) -> optax.Params:
    """The Stochastic INGD iterate ``x_t`` from the params the loss sees (``y_t``) and the state.

    Like :func:`optax.contrib.schedule_free_eval_params`: evaluate and
    checkpoint-for-inference with ``x_t``, keep training from ``params``.

    Args:
      params: the params the loss sees, ``y_t``.
      state: the optimizer state, however chained or wrapped (inject_hyperparams,
        MultiSteps).

    Returns:
      ``x_t``, in ``params``' dtypes.

    Raises:
      ValueError: if ``state`` holds no Stochastic INGD state.
    """
    s = find_state(state, StochasticIngdState)
    if s is None:
        raise ValueError("`state` holds no Stochastic INGD state.")
    c = s.offset_scale
    return jax.tree.map(
        lambda p, m: (p.astype(m.dtype) + c * m).astype(p.dtype), params, s.momentum
    )


def ingd_output_index(key: KeyLike, num_steps: int, lag: int) -> jax.Array:
    """The theory's output rule: ``max(i - K, 1)`` for ``i`` uniform in ``{1, ..., T}``.

    Theorem 5.5.1 certifies a uniformly random earlier iterate, lagging ``K =
    p delta`` steps behind, not the last one. For users who record the
    trajectory ``x_1, ..., x_T`` (1-based, as in the thesis): pick ``x`` at the
    returned index.

    Args:
      key: an int seed, a typed key or a raw key.
      num_steps: ``T >= 1``, the number of recorded iterates.
      lag: ``K >= 0``.

    Returns:
      An int32 scalar in ``[1, T]``.
    """
    if num_steps < 1 or lag < 0:
        raise ValueError(
            f"`num_steps` must be >= 1 and `lag` >= 0, got num_steps={num_steps}, lag={lag}."
        )
    data, impl = key_data(key)
    i = jax.random.randint(wrap(data, impl), (), 1, num_steps + 1)
    return jnp.maximum(i - lag, 1)
