"""NumPy transcriptions of the authors' Muon and Scion updates, in their torch layout.

Every matrix here is stored ``(d_out, d_in)`` (torch's ``nn.Linear.weight``), the transpose of a
Flax dense kernel; embeddings are ``(vocab, dim)`` as in torch and Flax alike. Written from the
math of KellerJordan/Muon ``muon.py`` and LIONS-EPFL/scion ``scion.py`` (both MIT), sharing no
code with the package. Newton-Schulz runs in float32 (the authors run it in bfloat16 on GPUs);
everything else runs in the dtype it is given.

The Scion oracles return the authors' *ascent* direction ``s`` (the update subtracts
``lr * radius * s``); the package's ``lmo`` is the minimizer ``-s``.
"""

from __future__ import annotations

import math

import numpy as np

#: The quintic Newton-Schulz coefficients (steepest slope at zero, not convergent to 1).
NS_ABC = (3.4445, -4.7750, 2.0315)


def _swap(x):
    return np.swapaxes(x, -1, -2)


def newton_schulz(g, steps=5):
    """Approximate ``U V^T`` of ``g`` (batched over leading axes) in float32."""
    a, b, c = (np.float32(v) for v in NS_ABC)
    x = np.asarray(g, np.float32)
    tall = x.shape[-2] > x.shape[-1]
    # Iterate on the short side's Gram matrix, the smaller of the two.
    if tall:
        x = _swap(x)
    fro = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True, dtype=np.float32))
    # The Frobenius norm bounds the spectral one, so the iteration starts inside its basin.
    x = x / (fro + np.float32(1e-7))
    for _ in range(steps):
        gram = x @ _swap(x)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return _swap(x) if tall else x


def muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    """One Muon direction; returns ``(direction, new_momentum)``. The caller subtracts ``lr * d``.

    The momentum moves a fraction ``1 - beta`` toward the gradient (no bias correction); the
    Nesterov look-ahead moves the gradient a fraction ``beta`` toward the new momentum. The shape
    factor ``sqrt(max(1, rows / cols))`` is read off the gradient's last two axes *before* a conv
    kernel is flattened, as the authors do (so a square ``k x k`` kernel gets factor 1).
    """
    grad = np.asarray(grad, np.float32)
    mom = momentum + np.float32(1 - beta) * (grad - momentum)
    direction = grad + np.float32(beta) * (mom - grad) if nesterov else mom
    if direction.ndim == 4:
        direction = direction.reshape(direction.shape[0], -1)
    ortho = newton_schulz(direction, ns_steps)
    factor = np.float32(math.sqrt(max(1.0, grad.shape[-2] / grad.shape[-1])))
    return (ortho * factor).reshape(grad.shape), mom


def muon_step(params, grads, moms, lr, beta=0.95, weight_decay=0.0, nesterov=True):
    """``SingleDeviceMuon.step`` over dicts of torch-layout matrices; returns new params, moms."""
    new_p, new_m = {}, {}
    for k, p in params.items():
        d, new_m[k] = muon_update(grads[k], moms[k], beta=beta, nesterov=nesterov)
        shrunk = np.asarray(p, np.float32) * np.float32(1 - lr * weight_decay)
        new_p[k] = shrunk - np.float32(lr) * d
    return new_p, new_m


def aux_adam_step(p, g, state, lr, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.0):
    """``MuonWithAuxAdam``'s AdamW for one non-Muon leaf; ``state = (m, v, step)``.

    Both moments move toward the gradient (and its square) by ``1 - b``; each is divided by its
    own ``1 - b^t`` before the ratio, eps outside the root; decay multiplies ``1 - lr * wd``.
    """
    m, v, t = state
    g = np.asarray(g, np.float32)
    t = t + 1
    m = m + np.float32(1 - b1) * (g - m)
    v = v + np.float32(1 - b2) * (g * g - v)
    ratio = (m / np.float32(1 - b1**t)) / (np.sqrt(v / np.float32(1 - b2**t)) + np.float32(eps))
    new_p = p * np.float32(1 - lr * weight_decay) - np.float32(lr) * ratio
    return new_p, (m, v, t)


_EPS = 1e-8


def spectral(g, max=False, normalized=True, steps=5):
    """Scion ``Spectral``: ``NS(g) sqrt(d_out/d_in)`` (or ``sqrt(d_out)``; ``max(1, .)``)."""
    d_out, d_in = g.shape
    s = math.sqrt(d_out / d_in) if normalized else math.sqrt(d_out)
    if max and s < 1.0:
        s = 1.0
    return newton_schulz(g, steps) * np.float32(s)


def spectral_conv(g, steps=5):
    """Scion ``SpectralConv``: NS of the ``(d_out, d_in*k..)`` view, ``sqrt(d_out/d_in)/k^(nd-2)``.

    ``d_in`` is the input channel count (not ``d_in*k*k``); the kernel is square.
    """
    d_out, d_in, k = g.shape[0], g.shape[1], g.shape[2]
    ortho = newton_schulz(g.reshape(d_out, -1), steps).reshape(g.shape)
    return ortho * np.float32(math.sqrt(d_out / d_in) / k ** (g.ndim - 2))


def col_norm(g, normalized=False, transpose=False):
    """Scion ``ColNorm``: every column (a fixed input index, over ``d_out``) to RMS one.

    ``normalized`` further divides by ``d_in``; ``transpose`` treats the rows of a
    ``(vocab, dim)`` embedding as the columns (each token's vector to RMS one over ``dim``).
    """
    x = g.T if transpose else g
    n_out, n_in = x.shape
    rms = np.sqrt(np.sum(x * x, axis=0, keepdims=True)) / math.sqrt(n_out)
    if normalized:
        rms = rms * n_in
    x = x / (rms + _EPS)
    return x.T if transpose else x


def row_norm(g, normalized=True, transpose=False):
    """Scion ``RowNorm``: each row (over ``d_in``) to l2 1, or ``1/sqrt(d_in)`` if normalized."""
    x = g.T if transpose else g
    l2 = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    if normalized:
        l2 = l2 * math.sqrt(x.shape[-1])
    x = x / (l2 + _EPS)
    return x.T if transpose else x


def sign(g, normalized=True):
    """Scion ``Sign``: ``sign(g) / d_in`` (normalized, their default) or ``sign(g)``."""
    return np.sign(g) / g.shape[1] if normalized else np.sign(g)


def bias_rms(g):
    """Scion ``BiasRMS``: ``g / RMS(g)`` over the first axis."""
    rms = np.sqrt(np.mean(g * g, axis=0, keepdims=True))
    return g / (rms + _EPS)


def auto(g):
    """Scion ``Auto``: conv kernels SpectralConv, matrices Spectral, vectors BiasRMS."""
    if g.ndim in (3, 4):
        return spectral_conv(g)
    if g.ndim == 2:
        return spectral(g)
    return bias_rms(g)


ORACLES = {
    "Spectral": spectral,
    "SpectralConv": spectral_conv,
    "ColNorm": col_norm,
    "RowNorm": row_norm,
    "Sign": sign,
    "BiasRMS": bias_rms,
    "Auto": auto,
}


def scion_init(params):
    """Zero momentum buffers (the authors start the average at zero, not at the first gradient)."""
    return {k: np.zeros_like(np.asarray(v)) for k, v in params.items()}


def scion_step(params, grads, bufs, groups, lr, momentum=1.0, unconstrained=False):
    """``Scion.step`` over dicts; ``groups[name] = (norm, norm_kwargs, radius)``.

    ``momentum`` is the authors' averaging weight ``alpha`` (1 means no averaging):
    ``d = (1 - alpha) d + alpha g``. The constrained variant shrinks the weight by ``1 - lr``
    before the step ``- lr * radius * s``. Returns ``(new_params, new_bufs)``.
    """
    new_p, new_b = {}, {}
    for k, p in params.items():
        g = np.asarray(grads[k])
        if momentum != 1:
            new_b[k] = bufs[k] * (1 - momentum) + momentum * g
            d = new_b[k]
        else:
            new_b[k] = bufs[k]
            d = g
        norm, kwargs, radius = groups[k]
        update = radius * ORACLES[norm](d, **kwargs)
        base = p if unconstrained else p * (1 - lr)
        new_p[k] = base - lr * update
    return new_p, new_b


def gluon_step(params, grads, moms, groups, k, lr=1.0, beta=0.9, stochastic=False):
    """One Gluon step (Riabinin et al.) on the Scion oracles; ``groups[name] = (norm, kw, L0, L1)``.

    Per layer the step length is ``t = ||M||_* / (L0 + L1 ||M||_*)`` with the dual norm read off
    the oracle, ``||M||_* = <M, s(M)>``. ``stochastic``: ``beta_k = 1 - (k+1)^(-1/2)`` and the
    step times ``(k+1)^(-3/4)``. Returns ``(new_params, new_moms)``.
    """
    if stochastic:
        beta = 1.0 - (k + 1.0) ** -0.5
        lr = lr * (k + 1.0) ** -0.75
    new_p, new_m = {}, {}
    for key, p in params.items():
        m = beta * moms[key] + (1 - beta) * np.asarray(grads[key])
        norm, kwargs, l0, l1 = groups[key]
        s = ORACLES[norm](m, **kwargs)
        dual = float(np.sum(m * s))
        t = dual / (l0 + l1 * dual) if dual > 0 else 0.0
        new_p[key] = p - lr * t * s
        new_m[key] = m
    return new_p, new_m
