"""Independent NumPy transcriptions of the papers' update rules.

Written from the equations in the papers (float64, direct formulas such as
``|g|**alpha``), sharing no code with the package. Each function maps a
hyperparameter dict to ``init(params) -> state`` and
``step(grads, state, params) -> (params_delta, state)`` over dicts of arrays.
"""

from __future__ import annotations

import numpy as np


def _gnorm(tree):
    return np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values()))


def _zeros(params):
    return {k: np.zeros(np.shape(v)) for k, v in params.items()}


def _lr_wd(delta, params, lr, wd):
    return {k: -lr * (delta[k] + wd * params[k]) for k in delta}


def acclip(
    lr,
    b1=0.9,
    b2=0.99,
    alpha=1.0,
    eps=1e-5,
    initial_threshold=0.0,
    weight_decay=0.0,
    rms_scale=False,
):
    # Zhang et al. 2020, eq. (ACClip), with Algorithm 1's momentum.
    def init(params):
        t0 = 0.0 if initial_threshold is None else initial_threshold
        tau = {k: np.full(np.shape(v), t0) for k, v in params.items()}
        return dict(m=_zeros(params), tau=tau, v=_zeros(params), k=0)

    def step(g, s, params):
        m, tau, v = {}, {}, {}
        delta = {}
        for key, gk in g.items():
            gk = np.asarray(gk, np.float64)
            m[key] = b1 * s["m"][key] + (1 - b1) * gk
            prev = np.abs(gk) if (initial_threshold is None and s["k"] == 0) else s["tau"][key]
            tau[key] = (b2 * prev**alpha + (1 - b2) * np.abs(gk) ** alpha) ** (1 / alpha)
            d = np.minimum(tau[key] / (np.abs(m[key]) + eps), 1.0) * m[key]
            if rms_scale:
                v[key] = b2 * s["v"][key] + (1 - b2) * gk**2
                d = d / (np.sqrt(v[key]) + eps)
            delta[key] = d
        return _lr_wd(delta, params, lr, weight_decay), dict(m=m, tau=tau, v=v, k=s["k"] + 1)

    return init, step


def gclip(lr, threshold, b1=0.0, weight_decay=0.0):
    # Zhang et al. 2020, Algorithm 1 with (GClip).
    def init(params):
        return dict(m=_zeros(params))

    def step(g, s, params):
        m = {k: b1 * s["m"][k] + (1 - b1) * np.asarray(v, np.float64) for k, v in g.items()}
        n = _gnorm(m)
        f = min(threshold / n, 1.0) if n > 0 else 1.0
        return _lr_wd({k: f * v for k, v in m.items()}, params, lr, weight_decay), dict(m=m)

    return init, step


def cclip(lr, threshold, b1=0.0, weight_decay=0.0):
    # Zhang et al. 2020, (CClip): min(tau/|m|, 1) m == clip(m, -tau, tau).
    def init(params):
        return dict(m=_zeros(params))

    def step(g, s, params):
        m = {k: b1 * s["m"][k] + (1 - b1) * np.asarray(v, np.float64) for k, v in g.items()}
        d = {k: np.clip(v, -threshold, threshold) for k, v in m.items()}
        return _lr_wd(d, params, lr, weight_decay), dict(m=m)

    return init, step


def clipped_gd(lr, gamma):
    # Zhang et al. 2020b, §3.1: h = min(eta, gamma eta / ||g||).
    def step(g, s, params):
        n = _gnorm(g)
        h = min(lr, gamma * lr / n) if n > 0 else lr
        return {k: -h * np.asarray(v, np.float64) for k, v in g.items()}, s

    return (lambda p: {}), step


def normalized_gd(lr, beta):
    # Zhang et al. 2020b, §3.1: h = eta / (||g|| + beta).
    def step(g, s, params):
        h = lr / (_gnorm(g) + beta)
        return {k: -h * np.asarray(v, np.float64) for k, v in g.items()}, s

    return (lambda p: {}), step


def normalized_momentum_sgd(lr, b1=0.9):
    def init(params):
        return dict(m=_zeros(params))

    def step(g, s, params):
        m = {k: b1 * s["m"][k] + (1 - b1) * np.asarray(v, np.float64) for k, v in g.items()}
        n = _gnorm(m)
        return {k: (-lr * v / n if n > 0 else 0 * v) for k, v in m.items()}, dict(m=m)

    return init, step


def clip_momentum_sgd(lr, gamma, b1=0.9, nu=1.0):
    # Zhang, Jin, Fang, Wang 2020, Algorithm 1 (hard min).
    def init(params):
        return dict(m=_zeros(params))

    def step(g, s, params):
        g = {k: np.asarray(v, np.float64) for k, v in g.items()}
        m = {k: b1 * s["m"][k] + (1 - b1) * g[k] for k in g}
        nm, ng = _gnorm(m), _gnorm(g)
        hm = min(lr, gamma / nm) if nm > 0 else lr
        hg = min(lr, gamma / ng) if ng > 0 else lr
        return {k: -(nu * hm * m[k] + (1 - nu) * hg * g[k]) for k in g}, dict(m=m)

    return init, step


def generalized_signsgd(lr, b1=0.9, b2=0.99, eps=0.0):
    # Crawshaw et al. 2022, Algorithm 1; 0/0 := 0.
    def init(params):
        return dict(m=_zeros(params), v=_zeros(params))

    def step(g, s, params):
        m, v, d = {}, {}, {}
        for k, gk in g.items():
            m[k] = b1 * s["m"][k] + (1 - b1) * np.asarray(gk, np.float64)
            v[k] = b2 * s["v"][k] + (1 - b2) * m[k] ** 2
            den = np.sqrt(v[k]) + eps
            d[k] = -lr * np.divide(m[k], den, out=np.zeros_like(den), where=den > 0)
        return d, dict(m=m, v=v)

    return init, step


REFERENCES = {
    "acclip": acclip,
    "gclip": gclip,
    "cclip": cclip,
    "clipped_gd": clipped_gd,
    "normalized_gd": normalized_gd,
    "normalized_momentum_sgd": normalized_momentum_sgd,
    "clip_momentum_sgd": clip_momentum_sgd,
    "generalized_signsgd": generalized_signsgd,
}
