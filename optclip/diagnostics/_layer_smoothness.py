"""Layer-wise (L0, L1)-smoothness along a probe run, in each layer's LMO norm pair (Gluon).

For a layer ``i`` with norm ``||.||_(i)`` (the norm whose unit ball :func:`optclip.lmo` minimises
over) and its dual ``||.||_(i)*``, the probe records along a short run of any optimizer

    L_i[k] = ||g_i[k+1] - g_i[k]||_(i)* / ||X_i[k+1] - X_i[k]||_(i),    ||g_i[k+1]||_(i)*

and :func:`fit_layer_l0_l1` fits ``L_i ~ L0_i + L1_i ||g_i||_*`` per layer with the Gluon
paper's asymmetric least squares (:func:`fit_l0_l1_asymmetric`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip import _checks
from optclip._lmo import SPECTRAL_SCALES, LmoDims, _to_blocks, _view, spectral_scale_of
from optclip._lmo_alias import _gluon_assignment, gluon
from optclip._lmo_assign import (
    HEAD_NAMES,
    VECTOR_NAMES,
    DimsSpec,
    NormSpec,
    _flat,
    is_embedding,
    resolve,
)
from optclip.diagnostics._asymmetric_fit import fit_l0_l1_asymmetric
from optclip.diagnostics._batches import Batches, LossFn, stack

KINDS = ("hidden", "embedding", "head", "vector")


class LayerSmoothness(NamedTuple):
    """What :func:`layer_smoothness` measured, per layer (leaf) and probe step ``k``.

    Attributes:
      smoothness: a tree like the params of float32 arrays ``(K,)``: ``L_i[k]`` (NaN where the
        layer did not move, ``||X_i[k+1] - X_i[k]|| = 0``).
      grad_norm: ``||g_i[k+1]||_(i)*``, the same layout.
      step_norm: ``||X_i[k+1] - X_i[k]||_(i)``, the same layout.
      loss: float32 ``(K,)``, the loss at ``X[k]`` on step ``k``'s batch.
      norms: a tree of the norm names used; ``dims`` a tree of :class:`optclip.LmoDims`.
      dims: the axes used.
      kinds: a tree of layer kinds: ``"hidden"``, ``"embedding"``, ``"head"``, ``"vector"``.
    """

    smoothness: chex.ArrayTree
    grad_norm: chex.ArrayTree
    step_norm: chex.ArrayTree
    loss: jax.Array
    norms: chex.ArrayTree
    dims: chex.ArrayTree
    kinds: chex.ArrayTree


def norm_pair(
    x: jax.Array, norm: str, dims: LmoDims | None = None, *, spectral_scale: str = "scion"
) -> tuple[jax.Array, jax.Array]:
    r"""``(||X||, ||X||_*)``: a layer's LMO norm and its dual, computed exactly by definition.

    In the layer's view ``(batch, d_in, d_out)`` (``n = d_in d_out``, ``s`` the spectral scale,
    Scion's ``sqrt(d_out/d_in)`` by default):

    ========  =====================================  ==========================
    norm      ``||X||`` (primal: the LMO's ball)     ``||X||_*`` (dual)
    ========  =====================================  ==========================
    spectral  ``max_b sigma_max(X_b) / s``           ``s sum_b sum(sigma(X_b))``
    column    ``max ||v|| / sqrt(d_out)``            ``sqrt(d_out) sum ||v||``
    row       ``sqrt(d_in) max ||r||``               ``sum ||r|| / sqrt(d_in)``
    sign      ``d_in max |X|``                       ``sum |X| / d_in``
    rms       ``max_b ||X_b||_2 / sqrt(n)``          ``sqrt(n) sum_b ||X_b||_2``
    ========  =====================================  ==========================

    (``v``: each fan-in index's vector over the fan-out; ``r``: each fan-out index's vector over
    the fan-in; a stack of layers is one block, the largest slice's norm, the dual a sum.)
    ``lmo(M)`` has primal norm 1 and ``<M, lmo(M)> = -||M||_*``; the spectral values use singular
    values (SVD), not Newton-Schulz.

    Args:
      x: the layer's array, real.
      norm: ``"spectral"``, ``"column"``, ``"row"``, ``"sign"`` or ``"rms"``.
      dims: the fan-in and fan-out axes (``None``: a dense ``(d_in, d_out)`` kernel or a vector).
      spectral_scale: keyword-only; ``"scion"``, ``"muon"`` or ``"unit"``.

    Returns:
      Two float32 scalars.
    """
    _checks.check_choice("spectral_scale", spectral_scale, SPECTRAL_SCALES)
    view = _view(jnp.shape(x), dims)
    x3 = _to_blocks(jnp.asarray(x, jnp.float32), view)
    _, fan_in, fan_out = view.shape3
    if norm == "spectral":
        s = spectral_scale_of(view, spectral_scale)
        sv = jnp.linalg.svd(x3, compute_uv=False)
        return jnp.max(sv[:, 0]) / s, s * jnp.sum(sv)
    if norm == "column":
        v = jnp.sqrt(jnp.sum(x3 * x3, axis=2))
        return jnp.max(v) / math.sqrt(fan_out), math.sqrt(fan_out) * jnp.sum(v)
    if norm == "row":
        r = jnp.sqrt(jnp.sum(x3 * x3, axis=1))
        return math.sqrt(fan_in) * jnp.max(r), jnp.sum(r) / math.sqrt(fan_in)
    if norm == "sign":
        return fan_in * jnp.max(jnp.abs(x3)), jnp.sum(jnp.abs(x3)) / fan_in
    if norm == "rms":
        n = fan_in * fan_out
        b = jnp.sqrt(jnp.sum(x3 * x3, axis=(1, 2)))
        return jnp.max(b) / math.sqrt(n), math.sqrt(n) * jnp.sum(b)
    raise ValueError(
        f"`norm` must be one of 'spectral', 'column', 'row', 'sign', 'rms', got {norm!r}."
    )


def layer_kinds(params: chex.ArrayTree) -> chex.ArrayTree:
    """Each leaf's kind by its path and rank, as :func:`optclip.default_lmo_norms` reads them.

    ``"vector"``: rank <= 1 or named ``bias``/``scale``; ``"embedding"``: a token or position
    table (named ``embedding``, ``pos``, ``wpe``, ...);
    ``"head"``: under a module named ``head``, ``lm_head``, ``output`` or ``logits``;
    ``"hidden"``: every other matrix.

    Args:
      params: the params (or any tree shaped like them).
    """
    flat, treedef = _flat(params)
    out = []
    for path, leaf in flat:
        name = path[-1] if path else ""
        if np.ndim(leaf) <= 1 or name in VECTOR_NAMES:
            out.append("vector")
        elif is_embedding(path):
            out.append("embedding")
        elif any(p.lower() in HEAD_NAMES for p in path[:-1]):
            out.append("head")
        else:
            out.append("hidden")
    return jax.tree.unflatten(treedef, out)


def _measure(g0, g1, x0, x1, norms, dims):
    # Scion's spectral scale, the one optclip.gluon steps in.
    def one(a0, a1, b0, b1, norm, d):
        step, _ = norm_pair(b1 - b0, norm, d)
        _, diff = norm_pair(a1 - a0, norm, d)
        _, gnorm = norm_pair(a1, norm, d)
        smooth = jnp.where(step > 0, diff / jnp.where(step > 0, step, 1.0), jnp.nan)
        return smooth, gnorm, step

    rows = zip(*(jax.tree.leaves(t) for t in (g0, g1, x0, x1)), norms, dims, strict=True)
    return [one(a0, a1, b0, b1, n, d) for a0, a1, b0, b1, n, d in rows]


def layer_smoothness(
    loss_fn: LossFn,
    params: optax.Params,
    batches: Batches,
    optimizer: optax.GradientTransformation,
    *,
    opt_state: optax.OptState | None = None,
    norms: NormSpec = None,
    dims: DimsSpec = None,
    same_batch: bool = True,
) -> LayerSmoothness:
    r"""Per-layer smoothness along a probe run of ``optimizer`` (the Gluon paper's estimate).

    Runs one step of ``optimizer`` per batch from ``params`` (one ``jax.lax.scan``) and records
    per layer ``i`` and step ``k``

    .. math::

        L_i[k] = \frac{\|g_i[k+1] - g_i[k]\|_{(i)*}}{\|X_i[k+1] - X_i[k]\|_{(i)}},
        \qquad \|g_i[k+1]\|_{(i)*}

    in each layer's norm pair (:func:`norm_pair`; by default :func:`optclip.gluon`'s norms:
    :func:`optclip.default_lmo_norms`' with the embedding on the sign norm). With
    ``same_batch`` (the default) ``g[k+1]`` is the gradient at ``X[k+1]`` on step ``k``'s
    batch, so the difference is the curvature of one loss and no sampling noise (one extra
    gradient per step); with ``same_batch=False`` it is
    the next step's training gradient on the next batch, as a training log would give it.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: the start of the probe (e.g. a few hundred steps into training).
      batches: a list of batches or stacked batches, one per probe step (``K`` steps with
        ``same_batch``, ``K - 1`` without).
      optimizer: the optimizer that moves the iterate (any optax transformation).
      opt_state: keyword-only; its state at ``params`` (``optimizer.init(params)`` if None).
      norms: keyword-only; each leaf's norm (name, tree or callable, as
        :func:`optclip.default_lmo_norms` takes them); ``None``: :func:`optclip.gluon`'s.
      dims: keyword-only; each leaf's axes.
      same_batch: keyword-only; see above.

    Returns:
      A :class:`LayerSmoothness`.
    """
    _checks.check_flag("same_batch", same_batch)
    norm_list, dims_list, treedef = resolve(params, *_gluon_assignment(norms, dims))
    batches, n = stack(batches)
    if not same_batch and n < 2:
        raise ValueError(f"`batches` needs at least 2 batches with same_batch=False, got {n}.")
    state = optimizer.init(params) if opt_state is None else opt_state
    value_grad = jax.value_and_grad(loss_fn)

    def advance(x, s, g):
        updates, s = optimizer.update(g, s, x)
        return optax.apply_updates(x, updates), s

    def record(loss, g0, g1, x0, x1):
        parts = _measure(g0, g1, x0, x1, norm_list, dims_list)
        return loss, tuple(zip(*parts, strict=True))

    if same_batch:

        def body(carry, b):
            x, s = carry
            loss, g = value_grad(x, b)
            x1, s = advance(x, s, g)
            return (x1, s), record(loss, g, jax.grad(loss_fn)(x1, b), x, x1)

        run = jax.jit(lambda c, bs: jax.lax.scan(body, c, bs))
        _, (loss, cols) = run((params, state), batches)
    else:

        def body(carry, b):
            x, s, loss, g = carry
            x1, s = advance(x, s, g)
            loss1, g1 = value_grad(x1, b)
            return (x1, s, loss1, g1), record(loss, g, g1, x, x1)

        first = jax.tree.map(lambda a: a[0], batches)
        rest = jax.tree.map(lambda a: a[1:], batches)
        run = jax.jit(lambda c, bs: jax.lax.scan(body, c, bs))
        loss0, g0 = value_grad(params, first)
        _, (loss, cols) = run((params, state, loss0, g0), rest)
    unflat = lambda xs: jax.tree.unflatten(treedef, list(xs))
    return LayerSmoothness(
        smoothness=unflat(cols[0]),
        grad_norm=unflat(cols[1]),
        step_norm=unflat(cols[2]),
        loss=jnp.asarray(loss, jnp.float32),
        norms=unflat(norm_list),
        dims=unflat(dims_list),
        kinds=layer_kinds(params),
    )


class LayerFit(NamedTuple):
    """Per-layer fits of :func:`fit_layer_l0_l1`.

    Attributes:
      l0: a tree like the params of Python floats ``L0_i >= 0``.
      l1: the same for ``L1_i``.
      inverse_l1_by_kind: the mean of ``1/L1_i`` over each layer kind present (the paper's
        comparison with Scion's radii; ``inf`` where some ``L1_i = 0``).
    """

    l0: chex.ArrayTree
    l1: chex.ArrayTree
    inverse_l1_by_kind: dict[str, float]


def fit_layer_l0_l1(estimates: LayerSmoothness, *, penalty: float = 1.0, skip: int = 0) -> LayerFit:
    """Fit ``L_i ~ L0_i + L1_i ||g_i||_*`` per layer (:func:`fit_l0_l1_asymmetric`).

    Steps where a layer did not move (NaN smoothness) are left out of its fit; a layer with
    fewer than two usable steps gets ``L0 = L1 = nan``.

    Args:
      estimates: from :func:`layer_smoothness`.
      penalty: keyword-only; ``lambda >= 0``, the extra weight of under-estimates (paper: 1).
      skip: keyword-only; probe steps to drop from the start (a warm-up), ``>= 0``.
    """
    _checks.check_count("skip", skip)
    _checks.check_nonnegative("penalty", penalty)
    smooth = jax.tree.leaves(estimates.smoothness)
    gnorm = jax.tree.leaves(estimates.grad_norm)
    treedef = jax.tree.structure(estimates.smoothness)
    l0s, l1s = [], []
    for s, g in zip(smooth, gnorm, strict=True):
        s, g = np.asarray(s, np.float64)[skip:], np.asarray(g, np.float64)[skip:]
        ok = np.isfinite(s) & np.isfinite(g)
        if np.count_nonzero(ok) < 2:
            l0, l1 = math.nan, math.nan
        else:
            l0, l1 = fit_l0_l1_asymmetric(g[ok], s[ok], penalty)
        l0s.append(l0)
        l1s.append(l1)
    l1_tree = jax.tree.unflatten(treedef, l1s)
    return LayerFit(
        l0=jax.tree.unflatten(treedef, l0s),
        l1=l1_tree,
        inverse_l1_by_kind=inverse_l1_by_kind(l1_tree, estimates.kinds),
    )


def inverse_l1_by_kind(l1: chex.ArrayTree, kinds: chex.ArrayTree) -> dict[str, float]:
    """The mean of ``1/L1_i`` over the layers of each kind (``"hidden"``, ``"embedding"``,
    ``"head"``, ``"vector"``): the constant radius Gluon tends to as ``L0 -> 0``. NaN
    entries (layers without a fit) are left out; ``L1 = 0`` counts as ``inf``.

    Args:
      l1: a tree of ``L1_i`` (floats).
      kinds: a tree of kind names shaped like ``l1`` (:func:`layer_kinds`).
    """
    values: dict[str, list[float]] = {}
    for v, k in zip(jax.tree.leaves(l1), jax.tree.leaves(kinds), strict=True):
        v = float(v)
        if not math.isnan(v):  # a layer without a fit
            values.setdefault(k, []).append(math.inf if v == 0 else 1.0 / v)
    return {k: float(np.mean(values[k])) for k in KINDS if k in values}


def fit_gluon(
    estimates: LayerSmoothness,
    *,
    penalty: float = 1.0,
    skip: int = 0,
    gluon_kwargs: Mapping[str, object] | None = None,
) -> optax.GradientTransformation:
    """An :func:`optclip.gluon` with each layer's ``(L0_i, L1_i)`` fitted from a probe run.

    No learning-rate grid: the step of layer ``i`` is ``||M_i||_* / (L0_i + L1_i ||M_i||_*)``
    in the probe's norms and axes. A layer without a usable fit (it moved in fewer than two
    probe steps) raises; fit with :func:`fit_layer_l0_l1` and call :func:`optclip.gluon` with
    values of your own for it.

    Args:
      estimates: from :func:`layer_smoothness`.
      penalty: keyword-only; the fit's ``lambda`` (:func:`fit_layer_l0_l1`).
      skip: keyword-only; probe steps left out of the fit.
      gluon_kwargs: keyword-only; further arguments of :func:`optclip.gluon` (momentum, ...).

    Returns:
      The optimizer, an :class:`optax.GradientTransformation`.
    """
    fit = fit_layer_l0_l1(estimates, penalty=penalty, skip=skip)
    flat, _ = _flat(fit.l0)
    missing = ["/".join(path) for path, v in flat if math.isnan(v)]
    if missing:
        raise ValueError(
            f"no (L0, L1) fit for {missing}: they moved in fewer than 2 probe steps; probe "
            "longer, or fit with fit_layer_l0_l1 and give optclip.gluon values for them."
        )
    kwargs: dict[str, Any] = dict(gluon_kwargs or {})
    for key in ("l0", "l1", "norms", "dims"):
        if key in kwargs:
            raise ValueError(f"`gluon_kwargs` must not hold {key!r}: it comes from `estimates`.")
    return gluon(fit.l0, fit.l1, norms=estimates.norms, dims=estimates.dims, **kwargs)
