"""Tail indices of samples: the alpha-stable block estimator and Hill's estimator."""

from __future__ import annotations

import math

import jax
import numpy as np


def as_samples(samples: jax.typing.ArrayLike, name: str = "samples") -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"`{name}` must have shape (N,) or (N, d), got {x.shape}.")
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 samples, got {x.shape[0]}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values; remove them before estimating.")
    return x


def tail_index(samples: jax.typing.ArrayLike, block_size: int, *, clamp: bool = True) -> float:
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

    An alpha-stable index lies in ``(0, 2]``, but the estimate of ``1/alpha``
    scatters around its value: for light-tailed data with few blocks it can
    fall below ``1/2`` or below 0, where ``1/x`` would read as an index of 11
    or -3. By default such an estimate is reported as 2 (Gaussian-like); pass
    ``clamp=False`` for the raw ``1/x``, e.g. to flag clamped estimates
    (``tail_index(x, k, clamp=False) != tail_index(x, k)``).

    Args:
      samples: shape ``(N,)`` or ``(N, d)``, finite.
      block_size: ``K1 >= 2``, dividing ``N``.
      clamp: report an estimate of ``1/alpha`` below ``1/2`` as 2.

    Raises:
      ValueError: fewer than 2 samples, non-finite samples, or a
        ``block_size`` that is < 2 or does not divide the sample count.
    """
    x = as_samples(samples)
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
    return float(1.0 / max(inv, 0.5) if clamp else 1.0 / inv)


def hill_tail_index(norms: jax.typing.ArrayLike, k: int) -> float:
    r"""Hill's estimator of the tail index of positive data from its ``k`` largest values.

    .. math:: \hat\alpha = k \Big/ \sum_{i=1}^{k} \log\frac{x_{(i)}}{x_{(k+1)}}

    with ``x_(1) >= x_(2) >= ...``: for ``P(X > x) ~ x^{-alpha}`` (Pareto-like
    one-sided tails, such as gradient-noise norms). Choose ``k`` small
    against the sample count (the tail) but large enough to average (e.g. 5%).

    Args:
      norms: positive samples, shape ``(N,)``.
      k: the number of largest values used, in ``[1, N - 1]``.

    Raises:
      ValueError: fewer than 2 samples, non-finite or non-positive values, or
        ``k`` outside ``[1, N - 1]``.
    """
    x = as_samples(norms, "norms")
    if x.ndim != 1:
        raise ValueError(f"`norms` must have shape (N,), got {x.shape}.")
    if np.any(x <= 0):
        raise ValueError("`norms` must be positive for Hill's estimator.")
    if not isinstance(k, int | np.integer) or not 1 <= k <= x.shape[0] - 1:
        raise ValueError(f"`k` must be an integer in [1, {x.shape[0] - 1}], got {k!r}.")
    top = np.sort(x)[::-1][: k + 1]
    return float(k / np.sum(np.log(top[:k] / top[k])))
