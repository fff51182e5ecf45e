"""Measure what the papers measured: gradient-noise tails, local smoothness, sharpness.

For any ``loss_fn(params, batch) -> scalar`` and any pytree of params. Batches
are given as a Python ``list`` of batches or as one pytree (tuples included)
whose leaves have a leading batch-index axis (stacked batches). Gradients are computed in chunks of
``chunk_size`` batches with :func:`jax.lax.map`, so memory stays at a few
gradients whatever the number of batches.

References: [000] Zhang et al. 2020 (§2, App. H); [003] Crawshaw et al. 2022
(§5.2); [004] Zhang et al. 2020b (App. H.3); thesis ch. 6 (eq. 6.2, §6.4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optclip._clipping import ClipByGlobalNormState, clip_fraction
from optclip._numerics import global_norm

__all__ = [
    "MonitorState",
    "TrainingStats",
    "coordinate_smoothness",
    "fit_l0_l1",
    "hill_tail_index",
    "local_smoothness",
    "monitor",
    "noise_norms",
    "plot_noise_histogram",
    "plot_smoothness",
    "sharpness",
    "symmetric_alpha_stable",
    "tail_index",
    "training_stats",
    "variance_by_sample_size",
    "window_average",
]

LossFn = Callable[[Any, Any], jax.Array]


# ---------------------------------------------------------------------------
# Batches and per-batch gradients
# ---------------------------------------------------------------------------


def _stack(batches: Any) -> tuple[Any, int]:
    # A list is a sequence of batches; any other pytree (tuples included, the
    # usual (x, y) batch) is stacked batches with a leading batch-index axis.
    if isinstance(batches, list):
        if len(batches) == 0:
            raise ValueError("`batches` is empty: give at least one batch.")
        batches = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("`batches` is empty: give at least one batch.")
    n = int(jnp.shape(leaves[0])[0])
    if n == 0:
        raise ValueError("`batches` is empty: give at least one batch.")
    return batches, n


def _grads_map(loss_fn: LossFn, params: Any, batches: Any, fn, chunk_size: int):
    """``lax.map`` of ``fn(grad(loss)(params, batch))`` over stacked batches, in chunks."""
    grad = jax.grad(loss_fn)
    return jax.lax.map(lambda b: fn(grad(params, b)), batches, batch_size=chunk_size)


def _mean_grad(loss_fn, params, batches, n):
    def body(acc, b):
        return jax.tree.map(jnp.add, acc, jax.grad(loss_fn)(params, b)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p, jnp.float32)), params)
    total, _ = jax.lax.scan(body, zeros, batches)
    return jax.tree.map(lambda t: t / n, total)


def noise_norms(
    loss_fn: LossFn, params: Any, batches: Any, full_grad: Any = None, chunk_size: int = 8
) -> jax.Array:
    r"""Per-minibatch gradient-noise norms ``||g_b - grad f||`` ([000] §2, Fig. 2).

    ``grad f`` is the mean of the minibatch gradients unless ``full_grad`` is
    given. Histogram the result (:func:`plot_noise_histogram`) and estimate its
    tail (:func:`hill_tail_index`).

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: a pytree.
      batches: a sequence of batches or stacked batches (leading axis).
      full_grad: the full gradient, if known.
      chunk_size: batches whose gradients are computed together (vectorised).

    Returns:
      float32 array of shape ``(num_batches,)``.
    """
    batches, n = _stack(batches)
    if full_grad is None:
        full_grad = _mean_grad(loss_fn, params, batches, n)
    return _grads_map(
        loss_fn, params, batches, lambda g: global_norm(optax.tree.sub(g, full_grad)), chunk_size
    )


def variance_by_sample_size(loss_fn: LossFn, params: Any, batches: Any) -> jax.Array:
    r"""Empirical gradient variance ``mean_i ||g_i - mean_n g||^2`` after ``n = 1..N`` samples.

    The curve of [000] Fig. 2(c, f): it settles for concentrated noise and keeps
    jumping when the noise is heavy-tailed (infinite variance). Computed in one
    pass with Welford's update; entry ``n - 1`` is the variance of the first
    ``n`` minibatch gradients (0 for ``n = 1``).
    """
    batches, _ = _stack(batches)
    grad = jax.grad(loss_fn)
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)

    def body(carry, b):
        k, mean, m2 = carry
        g = jax.tree.map(lambda x: x.astype(jnp.float32), grad(params, b))
        k = k + 1.0
        delta = optax.tree.sub(g, mean)
        mean = jax.tree.map(lambda m, d: m + d / k, mean, delta)
        m2 = m2 + optax.tree.vdot(delta, optax.tree.sub(g, mean))
        return (k, mean, m2), m2 / k

    _, out = jax.lax.scan(body, (jnp.float32(0.0), zeros, jnp.float32(0.0)), batches)
    return out


# ---------------------------------------------------------------------------
# Tail indices
# ---------------------------------------------------------------------------


def _as_samples(samples: Any, name: str = "samples") -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"`{name}` must have shape (N,) or (N, d), got {x.shape}.")
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 samples, got {x.shape[0]}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values; remove them before estimating.")
    return x


def tail_index(samples: Any, block_size: int) -> float:
    r"""Tail index ``alpha`` of symmetric alpha-stable data (Mohammadi et al. 2015).

    Split the ``N = K1 K2`` samples into ``K2`` blocks of ``K1 = block_size``,
    sum each block to ``Y_i``, and

    .. math:: \frac{1}{\hat\alpha} = \frac{1}{\log K_1}\left(\frac{1}{K_2}\sum_i \log|Y_i|
              - \frac{1}{N}\sum_j \log|X_j|\right)

    Rows of a 2-D input are vectors and ``|.|`` is the Euclidean norm (the
    multivariate form used by Simsekli et al. 2019 and [000] App. H). It
    assumes i.i.d., centred, *symmetric* alpha-stable samples: 2 means
    Gaussian-like, smaller is heavier. Norms of noise vectors are one-sided
    and violate the symmetry; use :func:`hill_tail_index` for them.

    Raises:
      ValueError: fewer than 2 samples, non-finite samples, or a
        ``block_size`` that is < 2 or does not divide the sample count.
    """
    x = _as_samples(samples)
    n = x.shape[0]
    if not isinstance(block_size, int | np.integer) or block_size < 2 or n % block_size:
        raise ValueError(
            f"`block_size` must be an integer >= 2 dividing the sample count {n}, "
            f"got {block_size!r}."
        )
    mag = np.abs(x) if x.ndim == 1 else np.linalg.norm(x, axis=1)
    blocks = x.reshape(n // block_size, block_size, *x.shape[1:]).sum(axis=1)
    bmag = np.abs(blocks) if x.ndim == 1 else np.linalg.norm(blocks, axis=1)
    tiny = np.finfo(np.float64).tiny
    inv = (np.mean(np.log(bmag + tiny)) - np.mean(np.log(mag + tiny))) / math.log(block_size)
    return float(1.0 / inv)


def hill_tail_index(norms: Any, k: int) -> float:
    r"""Hill's estimator of the tail index of positive data from its ``k`` largest values.

    .. math:: \hat\alpha = k \Big/ \sum_{i=1}^{k} \log\frac{x_{(i)}}{x_{(k+1)}}

    with ``x_(1) >= x_(2) >= ...``: for ``P(X > x) ~ x^{-alpha}`` (Pareto-like
    one-sided tails, such as gradient-noise norms). Choose ``k`` small
    against the sample count (the tail) but large enough to average (e.g. 5%).

    Raises:
      ValueError: fewer than 2 samples, non-finite or non-positive values, or
        ``k`` outside ``[1, N - 1]``.
    """
    x = _as_samples(norms, "norms")
    if x.ndim != 1:
        raise ValueError(f"`norms` must have shape (N,), got {x.shape}.")
    if np.any(x <= 0):
        raise ValueError("`norms` must be positive for Hill's estimator.")
    if not isinstance(k, int | np.integer) or not 1 <= k <= x.shape[0] - 1:
        raise ValueError(f"`k` must be an integer in [1, {x.shape[0] - 1}], got {k!r}.")
    top = np.sort(x)[::-1][: k + 1]
    return float(k / np.sum(np.log(top[:k] / top[k])))


def symmetric_alpha_stable(key: Any, alpha: float, shape: Sequence[int]) -> jax.Array:
    r"""Standard symmetric alpha-stable samples by the Chambers-Mallows-Stuck method.

    .. math:: X = \frac{\sin(\alpha V)}{\cos(V)^{1/\alpha}}
              \left(\frac{\cos((1-\alpha)V)}{W}\right)^{(1-\alpha)/\alpha}

    with ``V ~ U(-pi/2, pi/2)`` and ``W ~ Exp(1)``; ``alpha = 2`` is a Gaussian
    with variance 2, ``alpha = 1`` a Cauchy. The reference distribution of
    [000] Fig. 2 and the test data for :func:`tail_index`.
    """
    if not 0 < alpha <= 2:
        raise ValueError(f"`alpha` must be in (0, 2], got {alpha}.")
    kv, kw = jax.random.split(key)
    v = jax.random.uniform(kv, shape, minval=-jnp.pi / 2, maxval=jnp.pi / 2)
    w = jax.random.exponential(kw, shape)
    if alpha == 1.0:
        return jnp.tan(v)
    return (
        jnp.sin(alpha * v)
        / jnp.cos(v) ** (1 / alpha)
        * (jnp.cos((1 - alpha) * v) / w) ** ((1 - alpha) / alpha)
    )


# ---------------------------------------------------------------------------
# Smoothness and sharpness
# ---------------------------------------------------------------------------


def local_smoothness(
    grad_fn: Callable[[Any], Any],
    x: Any,
    x_next: Any,
    gammas: Sequence[float] = tuple(np.arange(1, 11) / 10),
) -> jax.Array:
    r"""Local smoothness along a step ([004] App. H.3, eq. 20).

    .. math::

        \hat L(x) = \max_{\gamma}
            \frac{\|\nabla f(x + \gamma d) - \nabla f(x)\|}{\|\gamma d\|},
        \qquad d = x_{next} - x

    over ``gammas`` (``{delta, 2 delta, ..., 1}`` with ``delta = 0.1`` by
    default; [003] §5.2 uses ``{1/6, ..., 5/6}``). Plot it against
    ``||grad f(x)||`` (:func:`plot_smoothness`) and fit (L0, L1) with
    :func:`fit_l0_l1`. A zero step gives 0.
    """
    d = optax.tree.sub(x_next, x)
    g0 = grad_fn(x)
    dn = global_norm(d)

    def ratio(gamma):
        gx = grad_fn(jax.tree.map(lambda a, b: a + gamma * b, x, d))
        num = global_norm(optax.tree.sub(gx, g0))
        return jnp.where(dn > 0, num / jnp.where(dn > 0, gamma * dn, 1.0), 0.0)

    return jnp.max(jnp.stack([ratio(g) for g in gammas]))


def coordinate_smoothness(
    grad_fn: Callable[[Any], Any], x: Any, x_next: Any
) -> tuple[jax.Array, jax.Array]:
    r"""Coordinate-wise smoothness of [003] §5.2 for every coordinate that moved.

    Returns ``(smoothness, grad_magnitude)``, flat arrays over the coordinates
    with ``x_next_j != x_j``:
    ``|d_j F(x_next) - d_j F(x)| / |x_next_j - x_j|`` and
    ``min(|d_j F(x)|, |d_j F(x_next)|)``; scatter one against the other.
    """
    g0 = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(grad_fn(x))])
    g1 = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(grad_fn(x_next))])
    dx = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(optax.tree.sub(x_next, x))])
    moved = np.asarray(dx != 0)
    smooth = jnp.abs(g1 - g0)[moved] / jnp.abs(dx)[moved]
    mag = jnp.minimum(jnp.abs(g0), jnp.abs(g1))[moved]
    return smooth, mag


def fit_l0_l1(grad_norms: Any, smoothness: Any) -> tuple[float, float, float]:
    r"""The tightest line ``L0 + L1 ||grad||`` (``L0, L1 >= 0``) above all measured points.

    "Tightest" minimises the line's mean height over the measured gradient
    norms, ``L0 + L1 mean(||grad||)``: a linear program in two variables whose
    optimum is an edge of the points' upper convex hull (or a horizontal or
    through-the-origin line), found exactly here.

    Returns:
      ``(L0, L1, fraction)``: the fraction of points on or below the line
      (1 up to rounding; reported so a caller can check).

    Raises:
      ValueError: fewer than 2 points, non-finite values, or mismatched lengths.
    """
    g = _as_samples(grad_norms, "grad_norms")
    s = _as_samples(smoothness, "smoothness")
    if g.shape != s.shape or g.ndim != 1:
        raise ValueError(
            f"`grad_norms` and `smoothness` must be 1-D of equal length, got "
            f"{g.shape} and {s.shape}."
        )
    gbar = float(np.mean(g))
    tol = 1e-9 * max(1.0, float(np.max(np.abs(s))))
    cands = [(float(np.max(s)), 0.0)]
    if np.any(g > 0):
        pos = g > 0
        cands.append((0.0, float(np.max(s[pos] / g[pos])) if np.all(s[~pos] <= tol) else np.inf))
    hull = _upper_hull(g, s)
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if x2 > x1:
            slope = (y2 - y1) / (x2 - x1)
            cands.append((y1 - slope * x1, slope))
    best = None
    for l0, l1 in cands:
        if not (np.isfinite(l0) and np.isfinite(l1)) or l0 < -tol or l1 < -tol:
            continue
        l0, l1 = max(l0, 0.0), max(l1, 0.0)
        if np.all(s <= l0 + l1 * g + tol) and (
            best is None or l0 + l1 * gbar < best[0] + best[1] * gbar
        ):
            best = (l0, l1)
    l0, l1 = best
    frac = float(np.mean(s <= l0 + l1 * g + tol))
    return l0, l1, frac


def _upper_hull(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    pts = sorted(set(zip(x.tolist(), y.tolist(), strict=True)))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def sharpness(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    num_iters: int = 100,
    key: Any = None,
    tol: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    r"""Top Hessian eigenvalue (largest in magnitude) by power iteration on Hessian-vector products.

    ``H v`` is ``jax.jvp`` of ``jax.grad`` (no Hessian is formed). Iterates
    ``v <- H v / ||H v||`` from a random start until the Rayleigh quotient
    ``v^T H v`` changes by less than ``tol`` relative, or ``num_iters``.

    Returns:
      ``(estimate, iterations)``.
    """
    if num_iters < 1:
        raise ValueError(f"`num_iters` must be >= 1, got {num_iters}.")
    key = jax.random.key(0) if key is None else key
    grad = jax.grad(lambda p: loss_fn(p, batch))

    def hvp(v):
        return jax.jvp(grad, (params,), (v,))[1]

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(p), jnp.float32)
            for k, p in zip(keys, leaves, strict=True)
        ],
    )
    v = jax.tree.map(lambda a: a / global_norm(v), v)

    def cond(c):
        i, _, lam, prev = c
        return (i < num_iters) & ((i < 2) | (jnp.abs(lam - prev) > tol * jnp.abs(lam)))

    def body(c):
        i, v, lam, _ = c
        hv = hvp(v)
        new_lam = optax.tree.vdot(v, hv)
        n = global_norm(hv)
        v = jax.tree.map(lambda a: a / jnp.where(n > 0, n, 1.0), hv)
        return i + 1, v, new_lam, lam

    i, _, lam, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), v, jnp.float32(0), jnp.float32(jnp.inf))
    )
    return lam, i


class TrainingStats(NamedTuple):
    """The thesis' eq. 6.2 quantities at one point in training."""

    loss: jax.Array
    grad_norm: jax.Array
    noise: jax.Array
    sharpness: jax.Array


def training_stats(
    loss_fn: LossFn,
    params: Any,
    batches: Any,
    sharpness_iters: int = 50,
    key: Any = None,
    chunk_size: int = 8,
) -> TrainingStats:
    r"""Full loss, full-gradient norm, noise and sharpness in one call (thesis eq. 6.2).

    Over the given batches (the dataset ``S``): ``L_S`` the mean loss,
    ``||grad L_S||``, ``sigma = sqrt(mean_i ||grad L_S - grad l_i||^2)`` with ``l_i``
    the per-batch losses (pass batches of one example for per-example noise),
    and ``||Hess L_S||`` by :func:`sharpness` on the mean loss.
    """
    batches, n = _stack(batches)
    full = _mean_grad(loss_fn, params, batches, n)
    norms = noise_norms(loss_fn, params, batches, full_grad=full, chunk_size=chunk_size)
    loss = jnp.mean(jax.lax.map(lambda b: loss_fn(params, b), batches))

    def mean_loss(p, bs):
        return jnp.mean(jax.lax.map(lambda b: loss_fn(p, b), bs))

    sharp, _ = sharpness(mean_loss, params, batches, num_iters=sharpness_iters, key=key)
    return TrainingStats(
        loss=loss, grad_norm=global_norm(full), noise=jnp.sqrt(jnp.mean(norms**2)), sharpness=sharp
    )


def window_average(values: Any, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values at each step (thesis §6.4).

    The time-averaged loss converges even when the gradient norm does not.
    Entry ``t`` averages ``values[max(0, t - window + 1) : t + 1]``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"`values` must be a non-empty 1-D sequence, got shape {x.shape}.")
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}.")
    c = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(1, x.size + 1)
    lo = np.maximum(0, t - window)
    return (c[t] - c[lo]) / (t - lo)


# ---------------------------------------------------------------------------
# Monitoring inside an optax chain
# ---------------------------------------------------------------------------


class MonitorState(NamedTuple):
    """State of :func:`monitor`: the wrapped state and the last step's statistics.

    Attributes:
      inner: the wrapped transformation's state (``optax.EmptyState()`` if none).
      count: steps seen.
      grad_norm: global norm of the incoming update.
      update_norm: global norm of the outgoing update.
      max_grad_norm: largest ``grad_norm`` so far.
      clip_fraction: the wrapped transform's fraction of clipped coordinates
        (NaN if it has none).
      pre_clip_norm: the wrapped transform's pre-clip global norm (NaN if none).
    """

    inner: Any
    count: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    max_grad_norm: jax.Array
    clip_fraction: jax.Array
    pre_clip_norm: jax.Array


def monitor(inner: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """Records norms (and clipping statistics) in the state; the updates pass unchanged.

    ``monitor()`` alone is an identity link to put anywhere in a chain;
    ``monitor(tx)`` wraps ``tx`` and also reads its clip fraction
    (ACClip, CClip) and pre-clip norm (:func:`optclip.clip_by_global_norm`).
    Log ``opt_state``'s :class:`MonitorState` fields from the training loop
    without splitting the chain. It jits, chains and shards like any transform:
    the statistics are scalars.
    """
    inner = inner if inner is not None else optax.identity()
    kinds = (ClipByGlobalNormState,)

    def _pre_clip(state):
        for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kinds)):
            if isinstance(leaf, ClipByGlobalNormState):
                return leaf.norm
        return jnp.float32(jnp.nan)

    def _fraction(state):
        try:
            return jnp.asarray(clip_fraction(state), jnp.float32)
        except ValueError:
            return jnp.float32(jnp.nan)

    def init_fn(params):
        nan = jnp.float32(jnp.nan)
        return MonitorState(
            inner.init(params), jnp.zeros([], jnp.int32), nan, nan, jnp.float32(0.0), nan, nan
        )

    def update_fn(updates, state, params=None, **extra):
        gnorm = global_norm(updates)
        out, inner_state = optax.with_extra_args_support(inner).update(
            updates, state.inner, params, **extra
        )
        return out, MonitorState(
            inner=inner_state,
            count=optax.safe_increment(state.count),
            grad_norm=gnorm,
            update_norm=global_norm(out),
            max_grad_norm=jnp.maximum(state.max_grad_norm, gnorm),
            clip_fraction=_fraction(inner_state),
            pre_clip_norm=_pre_clip(inner_state),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Plots (matplotlib, optional)
# ---------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'optclip[plot]'") from e
    return plt


def plot_noise_histogram(
    norms: Any,
    dim: int | None = None,
    alpha: float | None = None,
    ax: Any = None,
    bins: int = 60,
    seed: int = 0,
):
    """Histogram of noise norms with a Gaussian-sum and an alpha-stable reference ([000] Fig. 2).

    The references are norms of ``dim``-dimensional Gaussian and symmetric
    alpha-stable vectors (``alpha`` from :func:`tail_index`, 1.5 if not given),
    scaled to the data's median so the shapes, not the scales, compare.
    """
    plt = _pyplot()
    x = np.asarray(norms, dtype=np.float64)
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    dim = dim or 100
    n = max(len(x), 2000)
    key = jax.random.key(seed)
    gauss = np.linalg.norm(np.asarray(jax.random.normal(key, (n, dim))), axis=1)
    stable = np.linalg.norm(np.asarray(symmetric_alpha_stable(key, alpha or 1.5, (n, dim))), axis=1)
    med = np.median(x)
    for ref, label in (
        (gauss, "Gaussian reference"),
        (stable, f"alpha-stable ({alpha or 1.5:.2f})"),
    ):
        ax.hist(ref * med / np.median(ref), bins=bins, density=True, histtype="step", label=label)
    ax.hist(x, bins=bins, density=True, alpha=0.6, label="measured")
    ax.set_xlabel("||g_batch - grad f||")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax


def plot_smoothness(grad_norms: Any, smoothness: Any, ax: Any = None, fit: bool = True):
    """Local smoothness against gradient norm, coloured by iteration ([004] Fig. 1-2)."""
    plt = _pyplot()
    g, s = np.asarray(grad_norms), np.asarray(smoothness)
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    sc = ax.scatter(g, s, c=np.arange(len(g)), cmap="viridis", s=8)
    plt.colorbar(sc, ax=ax, label="iteration")
    if fit and len(g) >= 2:
        l0, l1, _ = fit_l0_l1(g, s)
        xs = np.linspace(0, g.max(), 50)
        ax.plot(xs, l0 + l1 * xs, "r--", label=f"L0 + L1 |grad|: L0={l0:.3g}, L1={l1:.3g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("||grad f||")
    ax.set_ylabel("local smoothness")
    return ax
