"""A wrapper that records each leaf's norm going into and out of any transformation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optclip._numerics import leaf_norms, safe_divide


class RecordNormsState(NamedTuple):
    """State of :func:`record_norms`: the wrapped state and the last step's per-leaf norms.

    Each norm field is a tree of float32 scalars in the structure of the
    updates (one per leaf, none per coordinate); all are 0 before the first
    step. :func:`optclip.statistics` reads them with one key per leaf.

    Attributes:
      grad_norm: each leaf's norm going into the wrapped transformation.
      update_norm: each leaf's norm coming out of it.
      removed: the fraction of each leaf's norm the wrapped transformation
        removed, ``1 - update_norm / grad_norm`` (0 for a zero incoming leaf;
        negative where it enlarged the leaf).
      inner_state: the wrapped transformation's state.
    """

    grad_norm: optax.Updates
    update_norm: optax.Updates
    removed: optax.Updates
    inner_state: optax.OptState


def record_norms(
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Records each leaf's norm in and out of ``inner``; the updates pass unchanged.

    For every leaf :math:`i` of the update tree, at each step:

    .. math::

        \text{grad\_norm}_i = \|g_i\|, \qquad
        \text{update\_norm}_i = \|\text{inner}(g)_i\|, \qquad
        \text{removed}_i = 1 - \frac{\text{update\_norm}_i}{\text{grad\_norm}_i}

    with :math:`0/0` giving ``removed = 0``. Wrap the part of the chain to
    watch: ``optax.chain(record_norms(optax.adaptive_grad_clip(0.01)),
    optax.adam(lr))`` records, per tensor, the raw gradient's norm (which
    tensor spiked) and the fraction of it the stateless clip removed (which
    tensor was clipped, and how hard); ``record_norms(tx)`` around a whole
    optimizer gives the gradient's and the step's norms. ``record_norms()``
    alone is an identity link that records the norms at its place.

    The returned updates are ``inner``'s, bit for bit (under ``jax.jit``,
    wrapping a link inside a chain may change how XLA fuses it with the next,
    a float rounding's difference); the state adds three float32 scalars per
    leaf, nothing parameter-sized. A NaN or inf in a
    gradient leaf shows as a NaN or inf norm of that leaf. Inside
    ``optax.apply_if_finite`` or :func:`optclip.skip_step` a skipped step's
    norms are dropped with the rest of the inner state, so wrap those from
    outside to see the step they skip. Decisions: ``docs/design.md``,
    "Per-leaf norms: record_norms". (Global norms and a wrapped clip's
    fraction: :func:`optclip.diagnostics.track_statistics`.)

    Args:
      inner: the transformation to wrap; ``None`` for an identity link.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with state
      :class:`RecordNormsState`, forwarding extra arguments to ``inner``.

    Raises:
      TypeError: if ``inner`` is neither a transformation nor ``None``.

    Examples:
      >>> import jax.numpy as jnp, optax, optclip
      >>> tx = optax.chain(optclip.record_norms(optax.clip(1.0)), optax.sgd(0.1))
      >>> params = {"b": jnp.zeros(2), "w": jnp.zeros(2)}
      >>> grads = {"b": jnp.array([0.5, 0.0]), "w": jnp.array([3.0, 4.0])}
      >>> _, state = tx.update(grads, tx.init(params), params)
      >>> for key, value in optclip.statistics(state).items():
      ...     print(key, round(float(value), 4))
      record_norms/grad_norm/b 0.5
      record_norms/grad_norm/w 5.0
      record_norms/update_norm/b 0.5
      record_norms/update_norm/w 1.4142
      record_norms/removed/b 0.0
      record_norms/removed/w 0.7172
    """
    if inner is not None and not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            "`inner` must be an optax.GradientTransformation (such as `optax.adam(1e-3)`, "
            f"called) or None, got {type(inner).__name__}: {inner!r:.80}."
        )
    inner = optax.with_extra_args_support(inner if inner is not None else optax.identity())

    def init_fn(params):
        # Three trees of their own: one shared would be one buffer donated three times.
        g, u, r = (jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params) for _ in range(3))
        return RecordNormsState(g, u, r, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        out, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        grad_norm, update_norm = leaf_norms(updates), leaf_norms(out)
        removed = jax.tree.map(lambda g, u: safe_divide(g - u, g), grad_norm, update_norm)
        return out, RecordNormsState(grad_norm, update_norm, removed, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
