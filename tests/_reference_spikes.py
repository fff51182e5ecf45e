"""Independent NumPy references for the spike-robust rules of ALGORITHMS.md section 7.

Transcribed in float64 from the equations and, for ZClip, SPAM and skip-step, from the
authors' code (``bluorion-com/ZClip`` ``zclip/zclip.py``, ``TianjinYellow/SPAM-Optimizer``
``galore_torch/SPAM.py``, ``allenai/OLMo-core`` ``optim/skip_step_optimizer.py``), sharing no
code with the package. Same convention as ``tests/_reference.py``: each function maps
hyperparameters to ``init(params) -> state`` and ``step(grads, state, params) -> (out, state)``
over dicts of arrays (keys = leaf names). ``out`` is the clipped gradient for the transforms
(``zclip``, ``adagc``) and the parameter delta (new - old) for the optimizers (``spam``,
``robust_acclip``, ``skip_step_adam``). Non-finite inputs are only defined for skip-step.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _gnorm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values())))


def _zeros(params):
    return {k: np.zeros(np.shape(v)) for k, v in params.items()}


def zclip(
    alpha=0.97,
    z_thresh=2.5,
    max_grad_norm=1.0,
    eps=1e-6,
    warmup_steps=25,
    mode="zscore",
    clip_option="adaptive_scaling",
    clip_factor=1.0,
    skip_update_on_spike=False,
    optclip_changes=False,
):
    # ZClip (Kumar et al. 2025), following ZClip.step of the authors' zclip.py:
    # - warm-up: the norm is appended to a buffer; when the buffer reaches warmup_steps the
    #   mean and population variance are set from it, and that same step is still clipped by the
    #   warm-up rule (torch clip_grad_norm_: factor min(1, max/(n + 1e-6))) with no EMA update.
    #   warmup_steps <= 1 therefore means "step 1 is warm-up, var = 0".
    # - after: the spike test and threshold use the stored mean/var; max_grad_norm caps the
    #   adaptive threshold *and* a non-spike norm (effective = min(a, max_grad_norm)), but the
    #   EMA absorbs the uncapped a; var uses the mean just updated. clip_factor multiplies the
    #   whole adaptive_scaling threshold only (not "mean", not percentile mode).
    # - optclip_changes=True, optclip's two documented changes: a zero norm is not recorded
    #   (neither in the warm-up nor the EMA; the update is 0 anyway), and with var = 0 (a warm-up
    #   of equal norms, or of one step) no norm is a spike. The authors' rule clips every
    #   larger norm to the mean then, which the EMA absorbs, so var stays 0 for ever.
    mode = mode.lower()
    if mode not in ("zscore", "percentile"):
        raise ValueError("mode must be 'zscore' or 'percentile'")
    if mode == "zscore" and clip_option not in ("mean", "adaptive_scaling"):
        raise ValueError("clip_option must be 'mean' or 'adaptive_scaling'")

    def init(params):
        return dict(step=0, mean=None, var=None, buffer=())

    def step(g, s, params):
        g = _f64(g)
        n = _gnorm(g)
        if optclip_changes and n == 0:
            return g, s
        if s["mean"] is None:  # warm-up
            buf, mean, var = (*s["buffer"], n), None, None
            if len(buf) >= warmup_steps:
                mean = sum(buf) / len(buf)
                var = sum((x - mean) ** 2 for x in buf) / len(buf)
                buf = ()
            f = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (n + 1e-6))
            return {k: f * v for k, v in g.items()}, dict(
                step=s["step"] + 1, mean=mean, var=var, buffer=buf
            )
        mean, var = s["mean"], s["var"]
        std = var**0.5
        c = None  # the clip value; not None <=> spike
        if optclip_changes and std == 0:
            pass
        elif mode == "percentile":
            if n > mean + z_thresh * std:
                c = mean + z_thresh * std
        else:
            z = (n - mean) / (std + eps)
            if z > z_thresh:
                if clip_option == "adaptive_scaling":
                    c = (mean + z_thresh * std / (z / z_thresh)) * clip_factor
                else:
                    c = mean
        a = n if c is None else c
        e = a if max_grad_norm is None else min(a, max_grad_norm)
        f = e / (n + 1e-6) if n > e else 1.0
        if not (c is not None and skip_update_on_spike):
            mean = alpha * mean + (1 - alpha) * a
            var = alpha * var + (1 - alpha) * (a - mean) ** 2
        return {k: f * v for k, v in g.items()}, dict(
            step=s["step"] + 1, mean=mean, var=var, buffer=()
        )

    return init, step


def adagc(lambda_abs=1.0, lambda_rel=1.05, beta=0.98, warmup_steps=100, zero_keeps_gamma=False):
    # AdaGC (Wang et al.), per leaf; steps 1..warmup_steps (1-based, inclusive) are warm-up.
    # No eps: a zero norm gives h = 1. The paper takes a zero norm into gamma (min, or EMA);
    # zero_keeps_gamma=True is optclip's documented change: a leaf's zero norm leaves its gamma,
    # and a gamma still +inf after the warm-up takes the leaf's first clipped norm.
    def init(params):
        return dict(gamma={k: math.inf for k in params}, step=0)

    def step(g, s, params):
        g = _f64(g)
        k = s["step"] + 1
        norms = {key: float(np.sqrt(np.sum(v**2))) for key, v in g.items()}
        out, gamma = {}, {}
        if k <= warmup_steps:
            n = _gnorm(g)
            h = min(1.0, lambda_abs / n) if n > 0 else 1.0
            for key in g:
                out[key] = h * g[key]
                gamma[key] = min(s["gamma"][key], h * norms[key])
                if zero_keeps_gamma and norms[key] == 0:
                    gamma[key] = s["gamma"][key]
        else:
            for key in g:
                ni, gi = norms[key], s["gamma"][key]
                h = min(1.0, lambda_rel * gi / ni) if ni > 0 else 1.0
                out[key] = h * g[key]
                gamma[key] = beta * gi + (1 - beta) * h * ni
                if zero_keeps_gamma and ni == 0:
                    gamma[key] = gi
                elif zero_keeps_gamma and gi == math.inf:
                    gamma[key] = h * ni
        return out, dict(gamma=gamma, step=k)

    return init, step


def spam(
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.0,
    threshold=5000.0,
    interval=500,
    warmup_steps=150,
    spike_free_steps=20,
    decay_on_direction=False,
):
    # SPAM (Huang et al. 2025), the authors' galore_torch/SPAM.py ``AdamW.step`` for a plain
    # parameter (no 'density'), correct_bias=True. Their names: threshold, DeltaT (= interval),
    # warmup_steps, grad_accu_steps (= spike_free_steps). Counters as in their code:
    # T = total_step (0 before the first step), cur = current_step (starts at warmup_steps + 1,
    # so scale = 1 until the first reset; set to 0 at the end of the step before a reset step).
    def init(params):
        return dict(m=_zeros(params), v=_zeros(params), total_step=0, current_step=warmup_steps + 1)

    def death_rate(cur):  # CosineDecay(0.99, warmup_steps).get_dr: CosineAnnealingLR(T_max=W+1)
        if cur >= warmup_steps:
            return 0.0
        return 0.99 * (1 + math.cos(math.pi * cur / (warmup_steps + 1))) / 2

    def step(g, s, params):
        t = s["total_step"]
        scale = 1.0 - death_rate(s["current_step"])  # computed before anything else
        reset = (t + 1) % interval == 0
        # The clip reads v *after* the reset (zero); with spike_free_steps >= 1 it is off on a
        # reset step anyway, since then (t + 1) % interval == 0 < spike_free_steps.
        clip = threshold != 0 and t + 1 >= spike_free_steps
        clip = clip and (t + 1) % interval >= spike_free_steps
        k = t + 1  # Adam's per-parameter step, incremented every step, never reset
        step_size = lr * math.sqrt(1 - b2**k) / (1 - b1**k)
        m, v, delta = {}, {}, {}
        for key, gk in _f64(g).items():
            m0 = np.zeros(np.shape(gk)) if reset else s["m"][key]
            v0 = np.zeros(np.shape(gk)) if reset else s["v"][key]
            if clip:  # raw (not bias-corrected) v of the previous step
                bound = threshold * v0
                gk = np.where(gk**2 > bound, np.sign(gk) * np.sqrt(bound), gk)
            m[key] = b1 * m0 + (1 - b1) * gk
            v[key] = b2 * v0 + (1 - b2) * gk**2
            u = -(step_size * scale) * (m[key] / (np.sqrt(v[key]) + eps))  # eps outside sqrt
            p0 = np.asarray(params[key], np.float64)
            # Decoupled decay after the step, on the updated parameter, not scaled, only if > 0.
            # decay_on_direction=True: optclip's, on the parameter before the step (x - lr (u +
            # lambda x)); the two differ by lr^2 lambda u a step (docs/design.md).
            wd = (
                -lr * weight_decay * (p0 if decay_on_direction else p0 + u)
                if weight_decay > 0
                else 0.0
            )
            delta[key] = u + wd
        cur = 0 if (t + 2) % interval == 0 else s["current_step"] + 1
        return delta, dict(m=m, v=v, total_step=t + 1, current_step=cur)

    return init, step


def robust_acclip(
    lr,
    b1=0.9,
    b2=0.99,
    alpha=1.0,
    eps=1e-5,
    initial_threshold=0.0,
    weight_decay=0.0,
    rms_scale=False,
    spike_factor=4.0,
):
    # optclip's own rule (ALGORITHMS.md 7.5): ACClip with g replaced by
    # gt = g * min(1, r / |g|), r = spike_factor * tau_{k-1} (bias-corrected when tau_0 = 0).
    def init(params):
        t0 = 0.0 if initial_threshold is None else initial_threshold
        tau = {k: np.full(np.shape(v), float(t0)) for k, v in params.items()}
        return dict(m=_zeros(params), tau=tau, v=_zeros(params), k=0)

    def step(g, s, params):
        n = s["k"]  # steps seen before this one
        m, tau, v, delta = {}, {}, {}, {}
        for key, gk in _f64(g).items():
            tp = s["tau"][key]
            if initial_threshold is not None and initial_threshold > 0:
                r = spike_factor * tp
            elif n == 0:
                r = np.full(np.shape(gk), np.inf)
            elif initial_threshold is None:
                r = spike_factor * tp
            else:
                r = spike_factor * tp / (1 - b2**n) ** (1 / alpha)
            # A coordinate with no scale yet (zero gradients so far) is not clipped.
            r = np.where(r > 0, r, np.inf)
            a = np.abs(gk)
            keep = (a == 0) | np.isinf(r)
            ratio = np.divide(r, a, out=np.ones_like(a), where=~keep)
            gt = np.where(keep, gk, gk * np.minimum(1.0, ratio))
            m[key] = b1 * s["m"][key] + (1 - b1) * gt
            if initial_threshold is None and n == 0:
                tau[key] = np.abs(gt)
            else:
                tau[key] = (b2 * tp**alpha + (1 - b2) * np.abs(gt) ** alpha) ** (1 / alpha)
            d = np.minimum(tau[key] / (np.abs(m[key]) + eps), 1.0) * m[key]
            if rms_scale:
                v[key] = b2 * s["v"][key] + (1 - b2) * gt**2
                d = d / (np.sqrt(v[key]) + eps)
            delta[key] = -lr * (d + weight_decay * np.asarray(params[key], np.float64))
        return delta, dict(m=m, tau=tau, v=v, k=n + 1)

    return init, step


def skip_step_adam(lr, window=128, sigma_factor=6.0, min_history=None, b1=0.9, b2=0.999, eps=1e-8):
    # Skip-step wrapper (after OLMo-core's SkipStepOptimizer) around optax-style Adam.
    # Histories hold at most `window` past values; the current value is judged against them,
    # then appended (its bound if it was an outlier; not at all if non-finite).
    mh = window // 2 if min_history is None else min_history

    def init(params):
        return dict(m=_zeros(params), v=_zeros(params), t=0, norms=(), losses=(), skipped=0)

    def judge(x, hist):  # -> (outlier, value to record or None)
        if not math.isfinite(x):
            return False, None
        # Fewer than 2 values: the ddof=1 std is nan and nothing can be an outlier.
        # optclip's rule: a window with no spread judges nothing (every larger value would be
        # an outlier, recorded as the window's own value, for ever).
        if len(hist) >= max(mh, 2) and max(hist) > min(hist):
            bound = float(np.mean(hist) + sigma_factor * np.std(hist, ddof=1))
            if x > bound:
                return True, bound
        return False, x

    def step(g, s, params, value=None):
        g = _f64(g)
        watched = {"norms": _gnorm(g)}
        if value is not None:
            watched["losses"] = float(value)
        verdicts = {name: judge(x, s[name]) for name, x in watched.items()}
        new = dict(s)
        for name, (_, rec) in verdicts.items():
            if rec is not None:
                new[name] = (*s[name], rec)[-window:]
        if any(out for out, _ in verdicts.values()):
            new["skipped"] = s["skipped"] + 1
            return {k: np.zeros(np.shape(x)) for k, x in g.items()}, new
        t = s["t"] + 1
        m = {k: b1 * s["m"][k] + (1 - b1) * x for k, x in g.items()}
        v = {k: b2 * s["v"][k] + (1 - b2) * x**2 for k, x in g.items()}
        delta = {k: -lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) for k in g}
        new.update(m=m, v=v, t=t)
        return delta, new

    return init, step


SPIKE_REFERENCES = {
    "zclip": zclip,
    "adagc": adagc,
    "spam": spam,
    "robust_acclip": robust_acclip,
    "skip_step_adam": skip_step_adam,
}
