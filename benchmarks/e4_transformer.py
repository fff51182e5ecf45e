"""E4: the character transformer with six optimizers, learning-rate grids and seeds."""

from __future__ import annotations

import numpy as np
import optax
from _common import chosen, transformer_setup, window_curve

import optclip

SGD_GRID = (3.0, 1.0, 0.3)
ADAM_GRID = (1e-2, 3e-3, 1e-3)
# EMA of the raw-gradient momentum along an SGD-momentum run of the d_model-96 transformer
# (lr 1): about 0.55 over the first 10 steps, 0.11-0.13 from step 50 on. A threshold a
# little above the steady value clips the early phase and any spike, not the steady state.
GCLIP_THRESHOLD = 0.15


def ema_sgd(lr):
    # EMA momentum, m = 0.9 m + 0.1 g, as in the papers' Algorithm 1, so that a learning
    # rate means the same step for SGD, GClip and printed ACClip (optax.sgd's heavy-ball
    # momentum sums gradients and steps 10x further at the same rate).
    return optax.chain(optclip.ema_momentum(0.9), optax.scale_by_learning_rate(lr))


# name: (factory(lr), learning-rate grid, tracks the clip fraction). Every optimizer gets
# three grid points a factor ~3 apart at its own scale. Generalized SignSGD's grid sits a
# factor 10 below Adam's: its direction m/sqrt(EMA of m^2) is sign-like, of size ~1 per
# coordinate, where Adam's m/sqrt(EMA of g^2) shrinks under noise. (A first run with
# {3e-3, 1e-3, 3e-4} found the best point at the bottom edge, 3e-4, so the grid moved down.)
E4_OPTIMIZERS = {
    "sgd_momentum": (ema_sgd, SGD_GRID, False),
    "gclip_momentum": (
        lambda lr: optclip.gclip(lr, threshold=GCLIP_THRESHOLD, b1=0.9),
        SGD_GRID,
        False,
    ),
    "adam": (optax.adam, ADAM_GRID, False),
    "acclip": (lambda lr: optclip.acclip(lr), SGD_GRID, True),
    "acclip_rms": (lambda lr: optclip.acclip(lr, rms_scale=True), ADAM_GRID, True),
    "generalized_signsgd": (optclip.generalized_signsgd, (1e-3, 3e-4, 1e-4), False),
}


def e4(quick, out=None, **over):
    charlm, task, steps, seeds = transformer_setup(quick, over)
    window = max(1, steps // 40)
    rows = []
    for name in chosen(E4_OPTIMIZERS, over):
        make, grid, tracks = E4_OPTIMIZERS[name]
        grid = grid[1:2] if quick else grid
        by_lr = {}
        for lr in grid:
            track = optclip.clip_fraction if tracks else None
            val, losses, frac = charlm.train_seeds(task, make(lr), seeds, steps, track=track)
            by_lr[lr] = dict(
                val=val.tolist(),
                curve=window_curve(losses.mean(0), window),
                clip_fraction=float(np.nanmean(frac)) if tracks else None,
            )
        means = {lr: float(np.mean(r["val"])) for lr, r in by_lr.items()}
        best = min(means, key=means.get)
        rows.append(
            dict(
                name=name,
                lr=best,
                edge=len(grid) > 1 and best in (grid[0], grid[-1]),
                mean=means[best],
                std=float(np.std(by_lr[best]["val"])),
                val=by_lr[best]["val"],
                grid={f"{lr:g}": round(m, 4) for lr, m in means.items()},
                curve=by_lr[best]["curve"],
                curve_window=window,
                clip_fraction=by_lr[best]["clip_fraction"],
                params=task.num_params(),
                steps=steps,
                seeds=len(seeds),
            )
        )
    print(
        f"\nE4 attention model: char transformer ({task.num_params()} params, d_model "
        f"{task.cfg.d_model}, {task.cfg.layers} layers), {steps} steps of batch "
        f"{task.cfg.batch}x{task.cfg.seq}, {len(seeds)} seeds, 3-point learning-rate grid each"
    )
    print(f"{'optimizer':<22}{'best lr':>9}{'val loss (mean ± std)':>24}  grid: lr -> mean")
    for r in sorted(rows, key=lambda r: r["mean"]):
        lr = f"{r['lr']:g}" + ("*" if r["edge"] else "")
        grid = ", ".join(f"{k}: {v:.3f}" for k, v in r["grid"].items())
        print(f"{r['name']:<22}{lr:>9}{r['mean']:>15.4f} ± {r['std']:<6.4f}  {grid}")
    print("* best learning rate at the edge of its grid")

    def draw(ax):
        for r in sorted(rows, key=lambda r: r["mean"]):
            curve = np.array(r["curve"], dtype=float)  # None (diverged) -> nan
            xs = window * (np.arange(len(curve)) + 1)
            ax.plot(xs, curve, label=f"{r['name']} (lr {r['lr']:g}): val {r['mean']:.3f}")
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss (mean over seeds, windows of {window})")
        lo = min(np.nanmin(np.array(r["curve"], dtype=float)) for r in rows)
        ax.set_ylim(lo - 0.1, lo + 1.5)
        ax.legend(fontsize=7)

    return rows, draw
