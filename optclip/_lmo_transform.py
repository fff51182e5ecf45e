"""The LMO step of every layer (:func:`scale_by_lmo`) and the momentum it reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._lmo import NORMS, SPECTRAL_SCALES, lmo_parts
from optclip._lmo_assign import DimsSpec, LayerValue, NormSpec, resolve, resolve_values
from optclip._numerics import momentum_zeros
from optclip._types import Scalar

#: A momentum decay: a scalar, or a schedule of the step count ``k = 0, 1, ...``.
Decay = Scalar | Callable[[jax.Array], jax.Array]


class LmoMomentumState(NamedTuple):
    """State of :func:`lmo_momentum`: the step count and the average ``mu``."""

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: optax.Updates


def lmo_momentum(
    beta: Decay = 0.95,
    *,
    nesterov: bool = False,
    debias: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""The momentum the LMO optimizers read: an EMA, optionally Nesterov and debiased.

    .. math::

        m_k = \beta_k m_{k-1} + (1 - \beta_k) g_k, \qquad m_{-1} = 0

    The output is ``m_k`` or, with ``nesterov``, ``beta_k m_k + (1 - beta_k) g_k`` (Keller
    Jordan's Muon). ``debias`` divides ``m_k`` by ``1 - beta^(k+1)`` (the gradient term of the
    Nesterov form by ``1 - beta^(k+1)`` and the momentum term by ``1 - beta^(k+2)``), as
    ``optax.contrib.muon`` does. A schedule ``beta(k)`` gives Gluon's ``1 - (k+1)^(-1/2)``,
    whose first step is ``m_0 = g_0``.

    Args:
      beta: the decay in ``[0, 1)``, or a schedule of the step count ``k`` (from 0).
      nesterov: keyword-only; output the Nesterov look-ahead.
      debias: keyword-only; optax's bias correction.
      mu_dtype: keyword-only; the stored average's dtype, float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`LmoMomentumState`; the
      output has each incoming leaf's dtype.
    """
    if not callable(beta):
        _checks.check_decay("beta", beta)
    _checks.check_flag("nesterov", nesterov)
    _checks.check_flag("debias", debias)
    dtype = _checks.state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return LmoMomentumState(count=jnp.zeros([], jnp.int32), mu=momentum_zeros(params, dtype))

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_like(updates, state.mu, "the momentum")
        b = beta(state.count) if callable(beta) else beta
        t = (state.count + 1).astype(jnp.float32)

        def one(g, m):
            g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
            mu = b * m.astype(g32.dtype) + (1.0 - b) * g32
            if nesterov:
                m_scale = 1.0 / (1.0 - b ** (t + 1.0)) if debias else 1.0
                g_scale = 1.0 / (1.0 - b**t) if debias else 1.0
                out = b * (mu * m_scale) + (1.0 - b) * (g32 * g_scale)
            else:
                out = mu / (1.0 - b**t) if debias else mu
            return out.astype(g.dtype), mu.astype(m.dtype)

        flat, treedef = jax.tree.flatten(updates)
        pairs = [one(g, m) for g, m in zip(flat, jax.tree.leaves(state.mu), strict=True)]
        out = jax.tree.unflatten(treedef, [p[0] for p in pairs])
        mu = jax.tree.unflatten(treedef, [p[1] for p in pairs])
        return out, LmoMomentumState(count=optax.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByLmoState(NamedTuple):
    """State of :func:`scale_by_lmo`: per layer (one float32 scalar per leaf of the params)
    the last step's statistics.

    Attributes:
      dual_norm: ``||M_i||_*``, the dual norm of the incoming update (the momentum).
      step_length: ``t_i``, the length of the step in the layer's norm (before the
        learning rate): the radius, or Gluon's ``||M||_* / (L0 + L1 ||M||_*)``.
      ns_residual: ``||O O^T - I||_F / sqrt(p)`` of the Newton-Schulz output ``O`` on its
        smaller side ``p`` (root-mean-square over stacked slices); 0 for other norms.
    """

    dual_norm: chex.ArrayTree
    step_length: chex.ArrayTree
    ns_residual: chex.ArrayTree


def _scalars(params: chex.ArrayTree) -> chex.ArrayTree:
    return jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)


def gluon_step(dual: jax.Array, l0: Scalar, l1: Scalar) -> jax.Array:
    """``D / (L0 + L1 D)`` written as ``1 / (L0/D + L1)``: 0 for ``D = 0`` (a zero momentum
    takes no step), ``1/L1`` for an overflowed ``D``, NaN for a NaN ``D``."""
    positive = dual > 0
    safe = jnp.where(positive, dual, 1.0)
    t = jnp.where(positive, 1.0 / (l0 / safe + l1), 0.0)
    return jnp.where(jnp.isnan(dual), jnp.nan, t).astype(jnp.float32)


def _by_norm(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(k in NORMS for k in value)


def _check_layer_values(params, norm_list, radius, l0, l1, gluon):
    if _by_norm(radius):
        for v in radius.values():
            _checks.check_nonnegative("radius", v)
        radii = [radius.get(n, 1.0) for n in norm_list]
    else:
        radii = resolve_values(params, radius, "radius")
    if not gluon:
        return radii, None, None
    l0s = resolve_values(params, 0.0 if l0 is None else l0, "l0")
    l1s = resolve_values(params, 0.0 if l1 is None else l1, "l1")
    for a, b in zip(l0s, l1s, strict=True):
        if _checks.is_static_zero(a) and _checks.is_static_zero(b):
            raise ValueError("`l0` and `l1` must not both be 0 for a layer, got l0=0 and l1=0.")
    return radii, l0s, l1s


def _steps(leaves, norm_list, dims_list, radii, l0s, l1s, options):
    """Per leaf: the step ``t * (-lmo)`` in the leaf's dtype, and the three statistics."""
    outs, duals, steps, residuals = [], [], [], []
    last = None  # the dual norm of the last spectral leaf
    for i, u in enumerate(leaves):
        spectral = norm_list[i] == "spectral"
        if spectral and last is not None:
            # The dual norm reads M after Newton-Schulz, so M outlives NS; left to itself XLA
            # runs the leaves' NS side by side and keeps their M and workspaces alive at once
            # (parameter-sized temporaries). Each NS after the previous one's dual keeps one.
            u, _ = jax.lax.optimization_barrier((u, last))
        direction, dual, res = lmo_parts(u, norm_list[i], dims_list[i], residual=True, **options)
        last = dual if spectral else last
        t = jnp.asarray(radii[i], jnp.float32)
        if l0s is not None:
            t = t * gluon_step(dual, l0s[i], l1s[i])
        outs.append((t * direction).astype(u.dtype))
        duals.append(dual)
        steps.append(t.astype(jnp.float32))
        residuals.append(res)
    return outs, duals, steps, residuals


def scale_by_lmo(
    norms: NormSpec = None,
    dims: DimsSpec = None,
    *,
    radius: LayerValue = 1.0,
    l0: LayerValue | None = None,
    l1: LayerValue | None = None,
    spectral_scale: str = "scion",
    ns_steps: int = 5,
    eps: Scalar | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Each layer's update ``M_i`` mapped to ``-t_i lmo_i(M_i)``, a step of length ``t_i``.

    .. math::

        u_i = -t_i\, \mathrm{lmo}_i(M_i), \qquad
        t_i = \rho_i \quad\text{or}\quad
        t_i = \rho_i \frac{\|M_i\|_*}{L_{0,i} + L_{1,i} \|M_i\|_*}\ \text{(Gluon)}

    The output has the sign of ``optax.scale_by_adam``'s: chain
    :func:`optax.scale_by_learning_rate` after it for descent. Chained after
    :func:`lmo_momentum`, ``M_i`` is the momentum. Each leaf is a layer with its own norm
    (:func:`optclip.lmo`); the defaults come from :func:`optclip.default_lmo_norms`.

    Args:
      norms: the norm of each leaf: one name, a tree of names, or a callable
        ``(path, leaf) -> name | None``; ``None`` entries take the default assignment.
      dims: the axes of each leaf: a tree of :class:`optclip.LmoDims` or a callable; ``None``
        entries take the default.
      radius: keyword-only; ``rho_i >= 0``: a scalar, a tree of scalars, a callable
        ``(path, leaf) -> scalar``, or a dict from norm names to radii (e.g.
        ``{"spectral": 50.0, "sign": 3000.0}``; a norm left out gets 1).
      l0: keyword-only; Gluon's ``L0_i >= 0`` (scalar, tree or callable). Giving ``l0`` or
        ``l1`` turns on the Gluon step; a missing one is 0.
      l1: keyword-only; Gluon's ``L1_i >= 0``.
      spectral_scale: keyword-only; ``"scion"``, ``"muon"`` or ``"unit"`` (:func:`optclip.lmo`).
      ns_steps: keyword-only; Newton-Schulz steps, an integer ``>= 1``.
      eps: keyword-only; the guard in each denominator, ``None`` for the authors'.
      ns_dtype: keyword-only; the dtype Newton-Schulz runs in, ``None`` for float32.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByLmoState`; the
      output has each incoming leaf's dtype.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optclip.scale_by_lmo(norms="sign")
      >>> u, state = tx.update({"w": jnp.array([2.0, -3.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> u["w"], float(state.dual_norm["w"])
      (Array([ 1., -1.], dtype=float32), 5.0)
    """
    _checks.check_choice("spectral_scale", spectral_scale, SPECTRAL_SCALES)
    _checks.check_count("ns_steps", ns_steps, lo=1)
    if eps is not None:
        _checks.check_nonnegative("eps", eps)
    if ns_dtype is not None:
        _checks.state_dtype("ns_dtype", ns_dtype)
    gluon = l0 is not None or l1 is not None
    for name, value in (("radius", radius), ("l0", l0), ("l1", l1)):
        if value is not None and _checks.static_value(value) is not None:
            _checks.check_nonnegative(name, value)

    options = dict(spectral_scale=spectral_scale, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype)

    def init_fn(params):
        norm_list, _, _ = resolve(params, norms, dims)
        _check_layer_values(params, norm_list, radius, l0, l1, gluon)
        # Three trees of their own: one shared would be one buffer donated three times.
        return ScaleByLmoState(*(_scalars(params) for _ in range(3)))

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        same: bool = jax.tree.structure(updates) == jax.tree.structure(state.dual_norm)  # type: ignore[operator]
        if not same:
            raise ValueError(
                "The gradients' tree differs from the one `init` saw: "
                f"{jax.tree.structure(updates)} against {jax.tree.structure(state.dual_norm)}."
            )
        norm_list, dims_list, treedef = resolve(updates, norms, dims)
        radii, l0s, l1s = _check_layer_values(updates, norm_list, radius, l0, l1, gluon)
        outs, duals, steps, residuals = _steps(
            jax.tree.leaves(updates), norm_list, dims_list, radii, l0s, l1s, options
        )
        unflat = lambda xs: jax.tree.unflatten(treedef, xs)
        return unflat(outs), ScaleByLmoState(unflat(duals), unflat(steps), unflat(residuals))

    return optax.GradientTransformation(init_fn, update_fn)
