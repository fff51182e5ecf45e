"""E7: the E4 optimizers with rare gradient spikes, with and without them."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import chosen, transformer_setup
from e4_transformer import E4_OPTIMIZERS, GCLIP_THRESHOLD, ema_sgd

import optclip

# E4's best learning rates (docs/results.md), used when no e4.json is in the output folder.
E7_DEFAULT_LRS = {
    "sgd_momentum": 1.0,
    "gclip_momentum": 1.0,
    "adam": 3e-3,
    "acclip": 1.0,
    "acclip_rms": 3e-3,
    "generalized_signsgd": 3e-4,
}


# Two common guards that are not E4 optimizers: clip the raw gradient before the momentum
# (GClip's Algorithm 1 clips the momentum, so a spike stays in m for ~log(factor)/log(1/b1)
# steps), and optax's usual clip_by_global_norm(1) in front of Adam. Each borrows the
# learning rate of the E4 optimizer it modifies.
E7_EXTRA = {
    "clip-then-momentum": (
        "gclip_momentum",
        lambda lr: optax.chain(optclip.clip_by_global_norm(GCLIP_THRESHOLD), ema_sgd(lr)),
    ),
    "clip(1)+adam": (
        "adam",
        lambda lr: optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(lr)),
    ),
}


def e7(quick, out=None, **over):
    over = dict(over, seeds=over.get("seeds") or (1 if quick else 3))
    charlm, task, steps, seeds = transformer_setup(quick, over)
    steps = over.get("steps") or (40 if quick else steps)
    spike_every, spike_at, factor = (20, 10, 1e4) if quick else (200, 100, 1e4)
    lrs, source = dict(E7_DEFAULT_LRS), "defaults (E4's measured best)"
    e4_json = Path(out) / "e4.json" if out else None
    if e4_json is not None and e4_json.exists() and not quick:
        lrs.update({r["name"]: r["lr"] for r in json.loads(e4_json.read_text())})
        source = str(e4_json)
    configs = {
        f"{n} ({lrs[n]:g})": E4_OPTIMIZERS[n][0](lrs[n]) for n in chosen(E4_OPTIMIZERS, over)
    }
    for n in chosen(E7_EXTRA, over):
        base, make = E7_EXTRA[n]
        configs[f"{n} ({lrs[base]:g})"] = make(lrs[base])

    def spikes(k, grads):
        hit = (k % spike_every) == spike_at
        return jax.tree.map(lambda g: jnp.where(hit, g * factor, g), grads)

    rows = []
    for name, tx in configs.items():
        clean, _, _ = charlm.train_seeds(task, tx, seeds, steps)
        spiked, _, _ = charlm.train_seeds(task, tx, seeds, steps, grad_hook=spikes)
        # A diverged run's loss is inf, whose std is NaN; the table prints "diverged" then.
        with np.errstate(invalid="ignore"):
            rows.append(
                dict(
                    name=name,
                    clean=float(np.mean(clean)),
                    clean_std=float(np.std(clean)),
                    spiked=float(np.mean(spiked)),
                    spiked_std=float(np.std(spiked)),
                )
            )
    print(
        f"\nE7 spikes: char transformer ({task.num_params()} params), {steps} steps, "
        f"{len(seeds)} seeds; gradients x{factor:g} at steps {spike_at} mod {spike_every}; "
        f"learning rates from {source}"
    )
    print(f"{'optimizer':<30}{'val loss, clean':>20}{'with spikes':>20}{'change':>10}")

    def cell(mean, std):
        # A loss far above the untrained ln(128) = 4.85 (or inf) means the run blew up.
        return f"{mean:>12.4f} ± {std:<6.3f}" if mean < 100 else f"{'diverged':>21}"

    for r in rows:
        change = r["spiked"] - r["clean"]
        print(
            f"{r['name']:<30}{cell(r['clean'], r['clean_std'])}"
            f"{cell(r['spiked'], r['spiked_std'])}"
            + (f"{change:>+10.3f}" if max(r["clean"], r["spiked"]) < 100 else "")
        )

    def draw(ax):
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [min(r["clean"], 10) for r in rows], 0.4, label="clean")
        ax.bar(xs + 0.2, [min(r["spiked"], 10) for r in rows], 0.4, label="with spikes")
        ax.set_xticks(xs, [r["name"].split(" (")[0] for r in rows], rotation=20, fontsize=8)
        ax.set_ylabel("validation loss (capped at 10)")
        ax.legend()

    return rows, draw
