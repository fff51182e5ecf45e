"""The configuration of ``spikes.py``: the methods, their warm-ups scaled to the run, and the
corruptions (kept apart so the benchmark's module stays one job: training and reporting)."""

from __future__ import annotations

import math

import _lmo_setup
import optax

import optclip

# Warm-ups and windows, scaled to the run: (default, the fraction of the run it may take).
WINDOWS = {"zclip_warmup": (25, 0.1), "adagc_warmup": (100, 0.1), "skip_window": (128, 0.2)}
SPAM = dict(interval=500, warmup_steps=150, spike_free_steps=20)  # the interval <= a third
AGC_CLIPPING = 0.01  # NFNets' unit-wise ratio for large batches (Brock et al. 2021)
# Best of `lm_study.py --size small --steps 1000` (2 seeds; docs/choosing.md).
MUON_LR, SCION_LR = 3e-3, 3e-4


def windows(steps: int) -> dict:
    """Each default length, cut to its fraction of a short run; SPAM's reset interval to a third
    of it, its warm-up and spike-free steps keeping their ratio to the interval."""
    w = {k: min(d, max(2, int(steps * f))) for k, (d, f) in WINDOWS.items()}
    r = min(SPAM["interval"], max(3, steps // 3)) / SPAM["interval"]
    w.update({f"spam_{k}": max(int(k != "warmup_steps"), int(v * r)) for k, v in SPAM.items()})
    return w


def guarded(guard):
    """``guard(windows)`` chained in front of Adam."""
    return lambda s, w: optax.chain(guard(w), optax.adam(s))


METHODS = {  # name: (factory of a unit-peak schedule and the windows, peak lr)
    "adam": (lambda s, w: optax.adam(s), 0.01),
    "clip(1)+adam": (guarded(lambda w: optclip.clip_by_global_norm(1.0)), 0.01),
    "zclip+adam": (guarded(lambda w: optclip.zclip(warmup_steps=w["zclip_warmup"])), 0.01),
    "adagc+adam": (guarded(lambda w: optclip.adagc(warmup_steps=w["adagc_warmup"])), 0.01),
    "spam": (lambda s, w: optclip.spam(s, **{k: w["spam_" + k] for k in SPAM}), 0.01),
    "skip-step adam": (lambda s, w: optclip.skip_step(optax.adam(s), w["skip_window"]), 0.01),
    "agc+adam": (guarded(lambda w: optax.adaptive_grad_clip(AGC_CLIPPING)), 0.01),
    "acclip": (lambda s, w: optclip.acclip(s), 1.0),
    "acclip(robust)": (lambda s, w: optclip.acclip(s, robust=True), 1.0),
    "acclip(rms)": (lambda s, w: optclip.acclip(s, rms_scale=True), 0.01),
    "acclip(rms, robust)": (lambda s, w: optclip.acclip(s, rms_scale=True, robust=True), 0.01),
    "generalized_signsgd": (lambda s, w: optclip.generalized_signsgd(s), 0.001),
    # The per-layer LMO family (benchmarks/_lmo_setup.py), each at its best peak lr of
    # `lm_study.py --size small --steps 1000` (Muon's matrices at ten times it); Gluon's
    # factory is set in spikes.main() from a probe run, at its fitted steps.
    "optax_muon": (lambda s, w: _lmo_setup.optax_muon(s), MUON_LR),
    "muon": (lambda s, w: _lmo_setup.muon(s), MUON_LR),
    "clip(1)+muon": (
        lambda s, w: optax.chain(optclip.clip_by_global_norm(1.0), _lmo_setup.muon(s)),
        MUON_LR,
    ),
    "adagc+muon": (
        lambda s, w: optax.chain(optclip.adagc(warmup_steps=w["adagc_warmup"]), _lmo_setup.muon(s)),
        MUON_LR,
    ),
    "scion": (lambda s, w: optclip.scion(s), SCION_LR),
    # Gluon at its fitted steps, alone and behind the clips; set by with_gluon() in spikes.main().
    _lmo_setup.GLUON: (None, 1.0),
    "clip(1)+gluon": (None, 1.0),
    "adagc+gluon": (None, 1.0),
}
GLUONS = [_lmo_setup.GLUON, "clip(1)+gluon", "adagc+gluon"]
LMO = ["optax_muon", "muon", "clip(1)+muon", "adagc+muon", "scion", *GLUONS]
RECOMMENDED = "agc+adam"
ADAPTIVE = ["zclip+adam", "adagc+adam", "spam", "skip-step adam"] + [
    m for m in METHODS if m.startswith("acclip")
]
BASELINE = "clip(1)+adam"
SCENARIOS = {  # name: (factor, which steps, one tensor only)
    "clean": (1.0, "spikes", False),
    "x1e1": (1e1, "spikes", False),
    "x1e2": (1e2, "spikes", False),
    "x1e4": (1e4, "spikes", False),
    "x1e6": (1e6, "spikes", False),
    "one tensor x1e4": (1e4, "spikes", True),
    "burst x1e4": (1e4, "burst", False),
    "non-finite": (math.inf, "spikes", False),  # inf times the gradient: inf, and NaN at zeros
}
# The lr sweep: clean runs at these multiples of the peak lr (and at 1: the clean scenario).
SWEEP = (1 / 3, 3.0, 10.0, 30.0, 100.0)
SPIKE_AT, BURST = (0.35, 0.5, 0.65), 5  # fractions of the run; the burst starts at the middle
EXCESS, TOLERANCE = 0.5, 0.05  # a loss spike; the recovered excess (nats)
MAX_ERRORS = 10**6  # apply_if_finite never gives up


def spike_steps(steps: int, kind: str) -> list[int]:
    if kind == "burst":
        return list(range(int(SPIKE_AT[1] * steps), int(SPIKE_AT[1] * steps) + BURST))
    return [int(f * steps) for f in SPIKE_AT]


def lmo_verdict(table: dict, survivors: list[str]) -> str:
    """Whether an LMO optimizer beats the recommendation (AGC + Adam) clean, beyond the seed
    spread, and survives every spike scenario."""
    r, wins = table[RECOMMENDED]["clean"], []
    for m in (m for m in LMO if m in table):
        a = table[m]["clean"]
        if a["mean"] - r["mean"] < -math.hypot(a["std"], r["std"]) and m in survivors:
            wins.append(m)
    return (
        f"(4) an LMO optimizer beats {RECOMMENDED} when clean, beyond the seed spread, and "
        f"survives every scenario: {'holds for ' + ', '.join(wins) if wins else 'no'}"
    )


def with_gluon(study) -> None:
    """Gluon's factory from a probe run of ``study`` (``_lmo_setup.fit``), alone and behind the
    clips, into ``METHODS``."""
    gluon, _ = _lmo_setup.fit(study)
    METHODS[_lmo_setup.GLUON] = (lambda s, w: gluon(s), 1.0)
    clip = optclip.clip_by_global_norm(1.0)
    METHODS["clip(1)+gluon"] = (lambda s, w: optax.chain(clip, gluon(s)), 1.0)
    METHODS["adagc+gluon"] = (
        lambda s, w: optax.chain(optclip.adagc(warmup_steps=w["adagc_warmup"]), gluon(s)),
        1.0,
    )
