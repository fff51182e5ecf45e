"""E6: Stochastic INGD against SGD-momentum and Adam on a ReLU MLP (nonsmooth)."""

from __future__ import annotations

import numpy as np
import optax
from _common import load_example

import optclip

E6_GRIDS = {
    # name: (factory(value), grid, what the grid varies). Same weight decay for all. (A first
    # run with grids one step lower, q {30, 10, 3}, SGD {0.1, 0.03, 0.01}, Adam {3e-3, 1e-3,
    # 3e-4}, found every best point at the large-step edge, so each grid moved up one step;
    # INGD was still at its edge (q = 1) and moved once more. Smaller q = larger steps.)
    "stochastic_ingd": (
        lambda q: optclip.stochastic_ingd(p=1.0, q=q, beta=0.9, key=0, weight_decay=5e-4),
        (3.0, 1.0, 0.3),
        "q",
    ),
    "sgd_momentum": (
        lambda lr: optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, 0.9)),
        (0.3, 0.1, 0.03),
        "lr",
    ),
    "adam": (
        lambda lr: optax.chain(optax.add_decayed_weights(5e-4), optax.adam(lr)),
        (1e-2, 3e-3, 1e-3),
        "lr",
    ),
}


def e6(quick, out=None, **over):
    ex = load_example("ingd_relu_mlp")
    data = ex.load_digits()
    epochs, seeds = (2, 1) if quick else (30, over.get("seeds") or 5)
    rows = []
    for name, (make, grid, knob) in E6_GRIDS.items():
        grid = grid[1:2] if quick else grid
        by_value = {}
        for v in grid:
            runs = np.array([ex.train(name, data, epochs, 32, s, tx=make(v)) for s in range(seeds)])
            by_value[v] = runs  # seeds x epochs x (train acc, test acc, train loss)
        # Chosen by the objective the optimizer minimises (final training loss), not on test.
        best = min(by_value, key=lambda v: by_value[v][:, -1, 2].mean())
        runs = by_value[best]
        rows.append(
            dict(
                name=name,
                knob=knob,
                best=best,
                edge=len(grid) > 1 and best in (grid[0], grid[-1]),
                grid={f"{v:g}": float(r[:, -1, 2].mean()) for v, r in by_value.items()},
                train_loss=float(runs[:, -1, 2].mean()),
                train_loss_std=float(runs[:, -1, 2].std()),
                train_acc=float(runs[:, -1, 0].mean()),
                test_acc=float(runs[:, -1, 1].mean()),
                test_acc_std=float(runs[:, -1, 1].std()),
                curve=runs[:, :, 2].mean(0).tolist(),
                test_curve=runs[:, :, 1].mean(0).tolist(),
            )
        )
    (xtr, _), (xte, _) = data
    print(
        f"\nE6 nonsmooth: ReLU MLP 64-128-128-10 on digits ({len(xtr)} train / {len(xte)} test), "
        f"{epochs} epochs of batch 32, {seeds} seeds, weight decay 5e-4; grid point chosen by "
        "final training loss; INGD evaluated at its iterate x"
    )
    print(
        f"{'optimizer':<18}{'best':>10}{'train loss':>20}{'train acc':>11}{'test acc':>18}"
        "  grid -> train loss"
    )
    for r in rows:
        grid = ", ".join(f"{k}: {v:.4f}" for k, v in r["grid"].items())
        print(
            f"{r['name']:<18}{r['knob'] + ' ' + format(r['best'], 'g') + '*' * r['edge']:>10}"
            f"{r['train_loss']:>12.4f} ± {r['train_loss_std']:<6.4f}{r['train_acc']:>10.4f}"
            f"{r['test_acc']:>10.4f} ± {r['test_acc_std']:<6.4f}  {grid}"
        )
    print("* best grid point at the edge of its grid")

    def draw(ax):
        for r in rows:
            ax.semilogy(
                np.arange(1, len(r["curve"]) + 1),
                r["curve"],
                label=f"{r['name']} ({r['knob']} {r['best']:g}): test acc {r['test_acc']:.3f}",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.legend(fontsize=7)

    return rows, draw
