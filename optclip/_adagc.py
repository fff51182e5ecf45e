"""AdaGC: each tensor clipped against an EMA of its own clipped norms."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip import _checks, _gradient_checks
from optclip._numerics import clip_factor, combined_norm, leaf_norm_parts
from optclip._scaled import ScaledNorm, divide, exponent_shift, norm_value, scale
from optclip._types import Scalar


class AdaGCState(NamedTuple):
    """State of :func:`adagc`.

    Attributes:
      count: number of updates seen (the first ``warmup_steps`` are the warm-up).
      gamma: the EMA ``gamma_i`` of each leaf's clipped norm, a float32 vector in
        the tree's leaf order (``jax.tree.leaves``); ``+inf`` until warm-up sets it.
        A vector, not a tree shaped like the params, so that tools which map the
        state onto the params (``optclip.state_shardings``) replicate it.
      norms: each leaf's norm at the last step, before clipping, in the same order.
      clipped: fraction of the coordinates whose leaf was scaled down at the last
        step (float32; ``optclip.clip_fraction`` reads it).
    """

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    gamma: optax.Updates
    norms: optax.Updates
    clipped: jax.Array


def _factors(parts, gamma, warming, lambda_abs, lambda_rel, beta):
    """Per leaf (vectors in leaf order): the scaling ``h_i`` as an exponent shift and a factor
    (``divide``), whether it clips, the next ``gamma`` and the norms.

    One vector computation for every leaf, not a scalar one per leaf: a model tree's 150-200
    leaves would otherwise cost as many small kernels.
    """
    norms = norm_value(parts)
    # The global norm from the leaves' norms: no second read of the update.
    global_parts = combined_norm(parts)
    global_norm = norm_value(global_parts)
    global_clipped = clip_factor(global_norm, lambda_abs) < 1.0
    threshold = lambda_rel * gamma
    clipped = jnp.where(warming, global_clipped, norms > threshold)
    numerator = jnp.where(warming, lambda_abs, threshold)
    denominator = ScaledNorm(
        *(jnp.where(warming, g, x) for g, x in zip(global_parts, parts, strict=True))
    )
    shift, factor = divide(numerator, denominator, clipped)
    # h_i ||g_i||, the clipped norm, through the same shift: finite where ||g_i|| is not.
    kept = exponent_shift(parts.mantissa, parts.exponent + shift) * factor
    kept = jnp.where(shift == 0, factor * norms, kept)  # the plain product, as before
    # A leaf first reached after the warm-up (gamma still +inf) takes its first clipped norm,
    # as in the warm-up: an EMA with +inf would leave it unclipped for ever.
    unset = jnp.isposinf(gamma)
    new_gamma = jnp.where(
        warming | unset, jnp.minimum(gamma, kept), beta * gamma + (1.0 - beta) * kept
    )
    # A NaN norm leaves its gamma, and compares false, so the NaN in the leaf survives. A zero
    # norm leaves it too: a leaf with no gradient this step (frozen, not yet reached) says
    # nothing of its scale, and taken in, it would set gamma to 0 in the warm-up's minimum, or
    # decay it after, and so clip the leaf to nothing once its gradient comes.
    observed = jnp.isfinite(parts.mantissa) & (parts.mantissa != 0)
    gamma = jnp.where(observed, new_gamma, gamma).astype(jnp.float32)
    return (shift, factor), clipped, gamma, norms


def _scaled_leaves(leaves, clipped, shift, factor):
    """A clipped leaf scaled by its ``(shift, factor)``; an unclipped one as it is."""
    return [
        jnp.where(clipped[i], scale(g, shift[i], factor[i]), g).astype(g.dtype)
        for i, g in enumerate(leaves)
    ]


def adagc(
    lambda_abs: Scalar = 1.0,
    lambda_rel: Scalar = 1.05,
    beta: Scalar = 0.98,
    warmup_steps: int = 100,
) -> optax.GradientTransformation:
    r"""AdaGC: per-tensor clipping at a multiple of an EMA of the tensor's own clipped norm.

    A tensor is a leaf of the update tree. Warm-up, steps ``1..warmup_steps``:
    a global clip at ``lambda_abs``, :math:`h = \min(1, \lambda_{abs} / \|g_k\|)`
    for every leaf, and :math:`\gamma_i \leftarrow \min(\gamma_i, h\|g_{k,i}\|)`
    from :math:`\gamma_i = +\infty`. After it:

    .. math::

        h_i &= \min\left(1, \frac{\lambda_{rel}\, \gamma_i}{\|g_{k,i}\|}\right), \qquad
        \gamma_i \leftarrow \beta \gamma_i + (1 - \beta)\, h_i \|g_{k,i}\|, \qquad
        \hat g_{k,i} = h_i g_{k,i}

    ``gamma_i`` absorbs the *clipped* norm, so a spike raises it by at most
    ``(1 - beta)(lambda_rel - 1)`` of itself per step.

    Decisions (``docs/design.md``, "Spike-robust clipping"): warm-up covers
    the first ``warmup_steps`` iterations, as the paper writes
    (pytorch-optimizer's ``AdaGC`` warms up one step fewer); no ``eps`` floors
    (the 0/0 rule covers zero norms); a zero leaf norm leaves that leaf's
    ``gamma`` (the paper's rule sets it to 0 in the warm-up, or decays it, and
    clips the leaf to nothing from then on), so a leaf keeps ``gamma = +inf``
    until its first nonzero finite norm, which sets it (also after warm-up).
    A non-finite leaf norm leaves ``gamma`` too; its NaN reaches the update.
    Chain it in front of an optimizer; ``docs/spikes.md`` measured it in front of
    Adam: ``optax.chain(optclip.adagc(), optax.adam(lr))`` at Adam's learning rate.

    Beside :func:`group_small_leaves`: put ``adagc`` *outside* it (first in the
    chain, on the user's tree) so each tensor keeps its own threshold; inside
    it, the packed small leaves share one norm and one ``gamma``.

    Args:
      lambda_abs: warm-up global threshold ``> 0`` (the paper: 1.0).
      lambda_rel: relative threshold ``> 1`` (the paper: 1.05); at 1, ``gamma``
        could only fall.
      beta: EMA decay of ``gamma`` in ``[0, 1)`` (the paper: 0.98).
      warmup_steps: steps of global clipping, an integer ``>= 1`` (the paper: 100).

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`AdaGCState`.

    References:
      Wang et al., 2026, "AdaGC", ICML, https://arxiv.org/abs/2502.11034.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> tx = optclip.adagc(warmup_steps=1)
      >>> state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
      >>> _, state = tx.update({"a": jnp.array([0.6, 0.0]), "b": jnp.array([0.0, 0.8])}, state)
      >>> u, state = tx.update({"a": jnp.array([60.0, 0.0]), "b": jnp.array([0.0, 0.8])}, state)
      >>> round(float(u["a"][0]), 4), round(float(u["b"][1]), 4)  # a: 1.05 * 0.6
      (0.63, 0.8)
    """
    _checks.check_positive("lambda_abs", lambda_abs)
    _checks.check_range("lambda_rel", lambda_rel, 1.0, float("inf"), lo_open=True, hi_open=True)
    _checks.check_decay("beta", beta)
    _checks.check_count("warmup_steps", warmup_steps, lo=1)

    def init_fn(params):
        n = len(jax.tree.leaves(params))
        return AdaGCState(
            count=jnp.zeros([], jnp.int32),
            gamma=jnp.full([n], jnp.inf, jnp.float32),
            norms=jnp.zeros([n], jnp.float32),
            clipped=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        _gradient_checks.check_dtypes(updates)
        flat_g, treedef = jax.tree.flatten(updates)
        if len(flat_g) != state.gamma.shape[0]:
            raise ValueError(
                f"The gradients have {len(flat_g)} leaves, but the optimizer state holds "
                f"thresholds for {state.gamma.shape[0]}: the state was built by `init` for "
                "other params."
            )
        if not flat_g:
            return updates, state._replace(count=optax.safe_increment(state.count))
        warming = state.count < warmup_steps
        parts = leaf_norm_parts(flat_g)
        (shift, h), clipped, gamma, norms = _factors(
            parts, state.gamma, warming, lambda_abs, lambda_rel, beta
        )
        out = _scaled_leaves(flat_g, clipped, shift, h)
        sizes = jnp.asarray([g.size for g in flat_g], jnp.float32)
        return jax.tree.unflatten(treedef, out), AdaGCState(
            count=optax.safe_increment(state.count),
            gamma=gamma,
            norms=norms,
            clipped=jnp.sum(jnp.where(clipped, sizes, 0.0)) / jnp.maximum(jnp.sum(sizes), 1.0),
        )

    return optax.GradientTransformation(init_fn, update_fn)
