"""Muon, Scion and Gluon: a momentum, the per-layer LMO step, decay and a learning rate.

Each is an :func:`optax.chain` of :func:`lmo_momentum`, :func:`scale_by_lmo`, a decay link and
:func:`optax.scale_by_learning_rate`; Muon partitions the params first, the spectral leaves to
that chain and the rest to AdamW with its second moment kept on its root
(``optclip._adam_rms``, finite for any finite gradient; ``docs/normalized.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import numpy as np
import optax

from optclip import _checks
from optclip._adam_rms import scale_by_adam_rms
from optclip._lmo import LmoDims
from optclip._lmo_assign import (
    DimsSpec,
    LayerValue,
    NormSpec,
    is_embedding,
    path_names,
    resolve,
)
from optclip._lmo_transform import lmo_momentum, scale_by_lmo
from optclip._types import Mask, Scalar
from optclip._weight_decay import decoupled_weight_decay

#: Scion's nanoGPT radii (``rho``): the head's sign norm 3000, every other layer 50.
SCION_RADII = {"spectral": 50.0, "column": 50.0, "row": 50.0, "rms": 50.0, "sign": 3000.0}


def _momentum(beta, **kwargs) -> optax.GradientTransformation:
    """The momentum link, or a stateless identity for a Python or NumPy ``beta = 0``."""
    link = lmo_momentum(beta, **kwargs)
    return optax.identity() if _checks.drops_state(beta) else link


def _labels(norms: NormSpec, dims: DimsSpec) -> Callable[[chex.ArrayTree], chex.ArrayTree]:
    def labels(params):
        norm_list, _, treedef = resolve(params, norms, dims)
        return jax.tree.unflatten(
            treedef, ["lmo" if n == "spectral" else "adam" for n in norm_list]
        )

    return labels


def _dims_by_path(dims: DimsSpec) -> DimsSpec:
    """A dims tree as a lookup by path: inside ``optax.partition`` the Muon link sees a tree
    with the AdamW leaves masked out, which a tree like the params no longer fits."""
    if dims is None or callable(dims):
        return dims
    is_leaf = lambda x: x is None or isinstance(x, LmoDims)
    flat, _ = jax.tree_util.tree_flatten_with_path(dims, is_leaf=is_leaf)
    table = {path_names(path): d for path, d in flat}
    return lambda path, leaf: table.get(path)


def _adamw(lr, b1, b2, eps, weight_decay, nesterov, mu_dtype) -> optax.GradientTransformation:
    """Muon's AdamW link, its arguments checked under the names ``muon`` gives them."""
    _checks.check_nonnegative("adam_learning_rate", lr, schedule=True)
    _checks.check_decay("adam_b1", b1)
    _checks.check_decay("adam_b2", b2)
    _checks.check_nonnegative("adam_eps", eps)
    _checks.check_nonnegative("adam_weight_decay", weight_decay, schedule=True)
    _checks.check_flag("adam_nesterov", nesterov)
    # optax.adamw's chain with its second moment on its root, so a finite gradient of any size
    # leaves a finite state (the numerics rule; optax's `v` overflows above about 1.8e19).
    return optax.chain(
        scale_by_adam_rms(b1, b2, eps, nesterov=nesterov, mu_dtype=mu_dtype),
        decoupled_weight_decay(weight_decay),
        optax.scale_by_learning_rate(lr),
    )


def muon(
    learning_rate: optax.ScalarOrSchedule,
    beta: Scalar = 0.95,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    norms: NormSpec = None,
    dims: DimsSpec = None,
    nesterov: bool = True,
    debias: bool = False,
    ns_steps: int = 5,
    eps: Scalar = 1e-7,
    ns_dtype: jax.typing.DTypeLike | None = None,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adam_b1: Scalar = 0.9,
    adam_b2: Scalar = 0.95,
    adam_eps: Scalar = 1e-10,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    adam_nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Muon: momentum orthogonalized by Newton-Schulz on hidden matrices, AdamW elsewhere.

    .. math::

        m_k &= \beta m_{k-1} + (1 - \beta) g_k, \qquad
        u_k = \beta m_k + (1 - \beta) g_k \ \text{(Nesterov)} \\
        X_{k+1} &= (1 - \eta\lambda) X_k - \eta \sqrt{\max(1, d_{out}/d_{in})}\, \mathrm{NS}(u_k)

    on every leaf whose norm is ``"spectral"`` (by default the hidden matrices of
    :func:`optclip.default_lmo_norms`: dense, attention, convolution and stacked kernels),
    Keller Jordan's rules; every other leaf (embedding, head, biases, norm scales) gets
    AdamW with Keller Jordan's auxiliary settings (its second moment kept on its root, so a
    finite gradient of any size leaves a finite state). Newton-Schulz runs in float32.

    Two settings reproduce other implementations (``tests/test_lmo_alias.py`` checks them):

    * Keller Jordan's ``muon_update`` in float32: the defaults.
    * ``optax.contrib.muon(lr, weight_decay=wd)`` on a tree whose 2-D leaves are all hidden
      matrices: ``muon(lr, weight_decay=wd, debias=True, eps=1e-8, adam_learning_rate=lr,
      adam_b2=0.999, adam_eps=1e-8, adam_nesterov=True, norms=lambda p, x: "spectral" if
      x.ndim == 2 else "rms")``.

    State: the momentum (4 bytes per hidden-matrix parameter), AdamW's two moments (8 per
    other parameter), and per leaf three float32 statistics (:class:`ScaleByLmoState`).

    Args:
      learning_rate: ``eta`` of the Muon leaves, a float or a schedule (Keller: 0.02).
      beta: momentum decay in ``[0, 1)``.
      weight_decay: decoupled decay ``lambda >= 0`` of the Muon leaves (float or schedule).
      norms: keyword-only; which leaves are Muon's: those whose norm is ``"spectral"``
        (as :func:`optclip.default_lmo_norms`' override: a name, tree or callable).
      dims: keyword-only; the fan-in/fan-out axes of each leaf (tree or callable).
      nesterov: keyword-only; the Nesterov look-ahead (the authors' default).
      debias: keyword-only; optax's bias-corrected momentum.
      ns_steps: keyword-only; Newton-Schulz steps.
      eps: keyword-only; added to the Frobenius norm before Newton-Schulz (Keller: 1e-7,
        optax: 1e-8); the Muon leaves' only (AdamW's is ``adam_eps``).
      ns_dtype: keyword-only; Newton-Schulz's dtype (``jnp.bfloat16`` as the authors).
      mask: keyword-only; which Muon leaves get weight decay, best a callable of the params
        (inside the partition the tree it sees has the AdamW leaves masked out).
      mu_dtype: keyword-only; the momentum's dtype, float32 if ``None``.
      adam_learning_rate: keyword-only; AdamW's learning rate (Keller: 3e-4).
      adam_b1: keyword-only; AdamW's first-moment decay.
      adam_b2: keyword-only; AdamW's second-moment decay.
      adam_eps: keyword-only; AdamW's eps.
      adam_weight_decay: keyword-only; AdamW's decoupled decay.
      adam_nesterov: keyword-only; Nesterov AdamW (optax's muon uses it).

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/ (KellerJordan/Muon).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"dense": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)}}
      >>> tx = optclip.muon(0.02)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["dense"]["kernel"].shape
      (4, 8)
    """
    _checks.check_nonnegative("learning_rate", learning_rate, schedule=True)
    options = dict(spectral_scale="muon", ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype)
    lmo_chain = optax.chain(
        _momentum(beta, nesterov=nesterov, debias=debias, mu_dtype=mu_dtype),
        scale_by_lmo("spectral", _dims_by_path(dims), **options),  # type: ignore[arg-type]
        decoupled_weight_decay(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    adam = _adamw(
        adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay, adam_nesterov, mu_dtype
    )
    return optax.partition({"lmo": lmo_chain, "adam": adam}, _labels(norms, dims))


def scion(
    learning_rate: optax.ScalarOrSchedule = 2.0**-12,
    alpha: Scalar = 0.1,
    *,
    norms: NormSpec = None,
    dims: DimsSpec = None,
    radius: LayerValue | None = None,
    unconstrained: bool = False,
    ns_steps: int = 5,
    eps: Scalar | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scion: a step of radius ``rho_i`` along each layer's LMO of the averaged gradient.

    .. math::

        d_k &= (1 - \alpha) d_{k-1} + \alpha g_k \\
        W_{k+1} &= (1 - \eta) W_k + \eta \rho_i\, \mathrm{lmo}_i(d_k) \quad\text{(constrained,
        the default)}, \qquad W_{k+1} = W_k + \eta \rho_i\, \mathrm{lmo}_i(d_k)

    The norms are :func:`optclip.default_lmo_norms`' (spectral hidden matrices scaled
    ``sqrt(d_out/d_in)``, column-normalized embedding, sign head scaled ``1/d_in``, RMS
    vectors), the defaults Scion's nanoGPT run: ``lr = 2^-12``, ``alpha = 0.1``, radius 50
    and 3000 for the sign-norm head. The constrained form keeps ``||W_i|| <= rho_i``.

    State: the averaged gradient (4 bytes per parameter; none for a Python ``alpha = 1``) and
    per leaf three float32 statistics (:class:`ScaleByLmoState`).

    Args:
      learning_rate: ``eta`` in ``[0, 1]`` for the constrained form (a float or schedule).
      alpha: the averaging weight in ``(0, 1]`` (Scion's ``momentum``; 1: no averaging).
      norms: keyword-only; each leaf's norm (name, tree or callable; ``None`` entries default).
      dims: keyword-only; each leaf's axes (tree or callable).
      radius: keyword-only; ``rho_i >= 0``: a scalar, a tree, a callable ``(path, leaf)``,
        a dict from norm names to radii, or ``None`` for ``SCION_RADII`` (3000 on sign-norm
        leaves, 50 elsewhere).
      unconstrained: keyword-only; drop the ``(1 - eta) W`` contraction.
      ns_steps: keyword-only; Newton-Schulz steps.
      eps: keyword-only; denominators' guard, ``None`` for the authors' per norm.
      ns_dtype: keyword-only; Newton-Schulz's dtype (float32 if ``None``).
      mu_dtype: keyword-only; the average's dtype, float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher 2025, "Training Deep
      Learning Models with Norm-Constrained LMOs", https://arxiv.org/abs/2502.07529
      (LIONS-EPFL/scion).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optclip
      >>> params = {"w": jnp.ones((4, 8))}
      >>> tx = optclip.scion(0.1, alpha=1.0, norms="sign", radius=1.0, unconstrained=True)
      >>> updates, _ = tx.update({"w": jnp.ones((4, 8))}, tx.init(params), params)
      >>> round(float(updates["w"][0, 0]), 6)  # -lr * rho * sign(g) / d_in
      -0.025
    """
    _checks.check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    _checks.check_flag("unconstrained", unconstrained)
    if not unconstrained:
        _checks.check_range("learning_rate", learning_rate, 0.0, 1.0, schedule=True)
    else:
        _checks.check_nonnegative("learning_rate", learning_rate, schedule=True)
    if radius is None:
        radius = SCION_RADII
    decay = optax.identity() if unconstrained else optax.add_decayed_weights(1.0)
    return optax.chain(
        _momentum(1.0 - alpha, mu_dtype=mu_dtype),
        scale_by_lmo(norms, dims, radius=radius, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype),
        decay,
        optax.scale_by_learning_rate(learning_rate),
    )


def _gluon_default(path: tuple[str, ...], leaf: jax.Array) -> str | None:
    # The paper's GPT puts the embeddings (token and position) on the sign norm, like the head.
    del leaf
    return "sign" if is_embedding(path) else None


def _gluon_assignment(norms: NormSpec, dims: DimsSpec) -> tuple[NormSpec, DimsSpec]:
    """Gluon's default norms and axes: an embedding table ``(vocab, dim)`` on the sign norm
    with ``dim`` as its fan-in, so its step is ``sign/dim`` as the authors' ``Sign`` gives on a
    torch ``nn.Embedding`` weight (stored ``(vocab, dim)`` too). Given ``norms``, both stay
    the user's: the transposed axes belong to the sign norm only."""
    if norms is not None:
        return norms, dims
    given = _dims_by_path(dims)

    def gluon_dims(path: tuple[str, ...], leaf: jax.Array) -> LmoDims | None:
        d = None if given is None else given(path, leaf)
        ndim = np.ndim(leaf)
        if d is None and ndim >= 2 and is_embedding(path):
            return LmoDims((ndim - 1,), (ndim - 2,))
        return d

    return _gluon_default, gluon_dims


def _stochastic_beta(count: jax.Array) -> jax.Array:
    return 1.0 - (count + 1.0) ** -0.5


def _stochastic_step(count: jax.Array) -> jax.Array:
    return (count + 1.0) ** -0.75


def gluon(
    l0: LayerValue,
    l1: LayerValue,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    beta: Scalar = 0.9,
    *,
    stochastic: bool = False,
    norms: NormSpec = None,
    dims: DimsSpec = None,
    ns_steps: int = 5,
    eps: Scalar | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Gluon: each layer steps ``||M_i||_* / (L0_i + L1_i ||M_i||_*)`` along its LMO.

    .. math::

        M_k &= \beta_k M_{k-1} + (1 - \beta_k) g_k \\
        X_{k+1, i} &= X_{k, i} + \eta_k\, t_i\, \mathrm{lmo}_i(M_{k, i}), \qquad
        t_i = \frac{\|M_{k,i}\|_{(i)*}}{L_{0,i} + L_{1,i} \|M_{k,i}\|_{(i)*}}

    the clipped step of layer-wise ``(L0, L1)``-smoothness: ``L0 = 0`` is unconstrained
    :func:`optclip.scion` with radius ``1/L1`` (the same iterates), ``L1 = 0`` the
    unnormalized step ``||M||_*/L0``. A zero momentum takes no step. The default momentum is
    constant (practice, ``beta = 0.9``); ``stochastic=True`` follows the stochastic theorem:
    ``beta_k = 1 - (k+1)^(-1/2)`` (so ``M_0 = g_0``) and ``eta_k = eta (k+1)^(-3/4)``.
    The norms are :func:`optclip.default_lmo_norms`' except the embeddings (token and
    position tables), which get the sign norm as the head does (the paper's GPT), scaled
    ``1/dim``: a ``(vocab, dim)`` table's fan-in is ``dim`` (``LmoDims((1,), (0,))``), as the
    authors' ``Sign`` divides a torch ``nn.Embedding`` weight ``(vocab, dim)`` by ``dim``.

    State: the momentum (4 bytes per parameter) and per leaf three float32 statistics
    (:class:`ScaleByLmoState`, whose ``step_length`` is ``t_i``).

    Args:
      l0: ``L0_i >= 0``: a scalar, a tree like the params or a callable ``(path, leaf)``.
      l1: ``L1_i >= 0`` (same forms); ``l0`` and ``l1`` must not both be 0.
      learning_rate: ``eta``, a multiplier of every ``t_i`` (1: the paper's step), a float
        or a schedule.
      beta: the momentum decay in ``[0, 1)`` (ignored with ``stochastic``).
      stochastic: keyword-only; the stochastic theorem's ``beta_k`` and ``(k+1)^(-3/4)``.
      norms: keyword-only; each leaf's norm (name, tree or callable; ``None`` entries default).
      dims: keyword-only; each leaf's axes (tree or callable).
      ns_steps: keyword-only; Newton-Schulz steps.
      eps: keyword-only; denominators' guard, ``None`` for the authors' per norm.
      ns_dtype: keyword-only; Newton-Schulz's dtype (float32 if ``None``).
      mu_dtype: keyword-only; the momentum's dtype, float32 if ``None``.

    Returns:
      An :class:`optax.GradientTransformation`.

    References:
      Riabinin, Shulgin, Gruntkowska, Richtarik 2025, https://arxiv.org/abs/2505.13416.

    Examples:
      >>> import jax.numpy as jnp, optclip
      >>> params = {"w": jnp.ones(4)}
      >>> tx = optclip.gluon(l0=1.0, l1=1.0, beta=0.0)
      >>> updates, state = tx.update({"w": jnp.full(4, 0.5)}, tx.init(params), params)
      >>> s = state[1]  # scale_by_lmo's state: D = sqrt(4) * ||M||_2, t = D / (1 + D)
      >>> float(s.dual_norm["w"]), round(float(s.step_length["w"]), 4)
      (2.0, 0.6667)
    """
    _checks.check_flag("stochastic", stochastic)
    _checks.check_nonnegative("learning_rate", learning_rate, schedule=True)
    norms, dims = _gluon_assignment(norms, dims)
    momentum = _momentum(_stochastic_beta if stochastic else beta, mu_dtype=mu_dtype)
    decay = optax.scale_by_schedule(_stochastic_step) if stochastic else optax.identity()
    return optax.chain(
        momentum,
        scale_by_lmo(norms, dims, l0=l0, l1=l1, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype),
        decay,
        optax.scale_by_learning_rate(learning_rate),
    )
