"""The per-layer LMO optimizers in the LM study and the spike benchmark: optclip's Muon, Scion
and Gluon (its per-layer (L0, L1) fitted on a probe run, no learning-rate grid), optax's Muon as
the peer, and clips in front of Muon. Kept apart so each benchmark's module stays one job.

Every factory takes a unit-peak schedule ``s`` (the benchmarks multiply the update by the peak
learning rate, which every optimizer here is linear in)."""

from __future__ import annotations

import _lmo_rows
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import diagnostics as D

# The Muon leaves (hidden matrices) at ten times the rate of the AdamW leaves (embeddings,
# head, vectors): the ratio the peer measurement used, and Keller Jordan's 0.02 against 3e-4 is
# of the same order.
MUON_RATIO = 10.0
# The probe that fits Gluon's (L0, L1): Adam at its library default, from the initialization,
# for a short run; the first steps (the largest curvature changes) are left out of the fit.
PROBE_STEPS, PROBE_SKIP, PROBE_LR = 200, 20, 1e-3


def _times(s: optax.ScalarOrSchedule, k: float) -> optax.ScalarOrSchedule:
    return (lambda t: k * s(t)) if callable(s) else k * s


def _peer_dimension_numbers(params):
    """optax's Muon on the leaves optclip's Muon takes, with the same axes (its default takes
    every 2-D leaf, the embeddings included)."""
    norms, dims = optclip.default_lmo_norms(params)
    is_dims = lambda x: isinstance(x, optclip.LmoDims)
    return jax.tree.map(_lmo_rows.contrib_spec, norms, dims, is_leaf=is_dims)


def muon(s):
    return optclip.muon(_times(s, MUON_RATIO), adam_learning_rate=s)


def optax_muon(s):
    return optax.contrib.muon(
        _times(s, MUON_RATIO),
        adam_learning_rate=s,
        muon_weight_dimension_numbers=_peer_dimension_numbers,
    )


def probe(study, seed: int = 0) -> D.LayerSmoothness:
    """Per-layer smoothness along ``PROBE_STEPS`` of Adam from seed ``seed``'s initialization."""
    train = jnp.asarray(study.corpus.train)
    starts = study.batch_starts(10_000 + seed, PROBE_STEPS)
    return D.layer_smoothness(
        lambda p, batch: study.loss(p, train, batch),
        study.init(seed),
        starts,
        optax.adam(PROBE_LR),
    )


def fit(study, seed: int = 0):
    """Gluon's factory with the probe's fitted (L0_i, L1_i) (its only rate is the schedule),
    and the fit by layer kind: the median ``1/L1_i`` and ``L0_i``."""
    estimates = probe(study, seed)
    fit = D.fit_layer_l0_l1(estimates, skip=PROBE_SKIP)
    kinds = jax.tree.leaves(estimates.kinds)
    by_kind = {}
    for kind in sorted(set(kinds)):  # medians: a layer with L1 = 0 has an infinite radius
        l0, l1 = ([v for v, k in zip(jax.tree.leaves(t), kinds, strict=True) if k == kind]
                  for t in (fit.l0, fit.l1))  # fmt: skip
        with np.errstate(divide="ignore"):
            by_kind[f"1/L1 {kind}"] = float(np.median(1 / np.asarray(l1)))
        by_kind[f"L0 {kind}"] = float(np.median(l0))
    print("gluon: fitted by layer kind: " + ", ".join(f"{k} {v:.4g}" for k, v in by_kind.items()))
    factory = lambda s: D.fit_gluon(estimates, skip=PROBE_SKIP, gluon_kwargs={"learning_rate": s})
    return factory, by_kind


# The peak learning-rate grids (the schedule's unit peak times these). Muon's is Adam's (its
# matrices at MUON_RATIO times it); Scion's spans its nanoGPT rate 2^-12 by 30x each way; Gluon
# runs at 1 (its fitted steps) with 1/3 and 3 beside it to show where its best lies.
ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
OPTIMIZERS = {
    "agc+adam": (lambda s: optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(s)), ADAM_GRID),
    "optax_muon": (optax_muon, ADAM_GRID),
    "muon": (muon, ADAM_GRID),
    "clip+muon": (lambda s: optax.chain(optclip.clip_by_global_norm(1.0), muon(s)), ADAM_GRID),
    "adagc+muon": (lambda s: optax.chain(optclip.adagc(), muon(s)), ADAM_GRID),
    "scion": (lambda s: optclip.scion(s), (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
}
GLUON = "gluon(fitted)"
GLUON_GRID = (1 / 3, 1.0, 3.0)
