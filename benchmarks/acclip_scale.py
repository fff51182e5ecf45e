"""ACClip at SGD's and at Adam's learning-rate scale, and what the initial threshold does.

Trains the small character transformer of ``optclip/demo/charlm.py`` (text from
the standard library's own sources) with SGD-momentum, Adam, the printed ACClip
rule (``initial_threshold`` 0, 1 and the default: seeded from the first
gradient) and the RMS-scaled ACClip (``alpha`` 1 and 2). Each optimizer gets a
learning-rate grid at its own scale (SGD-sized for SGD and the printed rule,
Adam-sized for Adam and the RMS-scaled form) and several seeds; the best grid
point is the one with the lowest mean validation loss over seeds. The fraction
of coordinates ACClip clips is recorded at every step from its state.

    python benchmarks/acclip_scale.py           # the table in docs/results.md (27 min, 2 cores)
    python benchmarks/acclip_scale.py --quick   # smoke test (seconds)

Writes ``--out``/acclip_scale.json and acclip_scale.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import optax
from tqdm import tqdm

import optclip
from optclip._plotting import available, pyplot, save
from optclip.demo import charlm

SGD_GRID = (3.0, 1.0, 0.3)
ADAM_GRID = (1e-2, 3e-3, 1e-3)

CONFIGS = {
    # name: (factory(lr), grid, tracks clip fraction)
    # EMA momentum, m = 0.9 m + 0.1 g, as in ACClip and the papers' Algorithm 1, so the
    # same learning rates mean the same step sizes (optax.sgd's heavy-ball momentum
    # sums gradients and takes 10x larger steps at the same rate).
    "sgd_momentum": (
        lambda lr: optax.chain(optclip.ema_momentum(0.9), optax.scale_by_learning_rate(lr)),
        SGD_GRID,
        False,
    ),
    "adam": (lambda lr: optax.adam(lr), ADAM_GRID, False),
    "acclip tau0=0": (lambda lr: optclip.acclip(lr, initial_threshold=0.0), SGD_GRID, True),
    "acclip tau0=1": (lambda lr: optclip.acclip(lr, initial_threshold=1.0), SGD_GRID, True),
    "acclip tau0=|g1|": (lambda lr: optclip.acclip(lr), SGD_GRID, True),
    "acclip rms a=1 tau0=0": (
        lambda lr: optclip.acclip(lr, rms_scale=True, initial_threshold=0.0),
        ADAM_GRID,
        True,
    ),
    "acclip rms a=1 tau0=|g1|": (lambda lr: optclip.acclip(lr, rms_scale=True), ADAM_GRID, True),
    "acclip rms a=2 tau0=0": (
        lambda lr: optclip.acclip(lr, rms_scale=True, alpha=2.0, initial_threshold=0.0),
        ADAM_GRID,
        True,
    ),
}


def run(names, cfg, steps, seeds, grids=None, progress=True, max_chars=1_500_000):
    task = charlm.Task.make(cfg, max_chars, text=charlm.stdlib_text(max_chars))
    results = dict(params=task.num_params(), steps=steps, seeds=list(seeds), rows={})
    jobs = [(n, lr) for n in names for lr in (grids or {}).get(n, CONFIGS[n][1])]
    bar = tqdm(jobs, desc="runs", disable=not progress, file=sys.stderr)
    for name, lr in bar:
        bar.set_postfix_str(f"{name} lr={lr:g}")
        make, _, tracks = CONFIGS[name]
        track = optclip.clip_fraction if tracks else None
        val, losses, frac = charlm.train_seeds(task, make(lr), seeds, steps, track=track)
        row = results["rows"].setdefault(name, {})
        row[f"{lr:g}"] = dict(
            val=val.tolist(),
            final_train=losses[:, -1].tolist(),
            clip_fraction=np.nanmean(frac, axis=0).tolist() if tracks else None,
        )
    return results


def summarize(results):
    table = []
    for name, by_lr in results["rows"].items():
        means = {lr: float(np.mean(r["val"])) for lr, r in by_lr.items()}
        best = min(means, key=means.get)
        r = by_lr[best]
        grid = list(by_lr)
        edge = best in (grid[0], grid[-1]) and len(grid) > 1
        frac = r["clip_fraction"]
        table.append(
            dict(
                name=name,
                lr=best,
                edge=edge,
                mean=float(np.mean(r["val"])),
                std=float(np.std(r["val"])),
                all_lrs={lr: round(m, 4) for lr, m in means.items()},
                clip_first10=float(np.mean(frac[:10])) if frac else None,
                clip_last100=float(np.mean(frac[-100:])) if frac else None,
                clip_mean=float(np.mean(frac)) if frac else None,
            )
        )
    return table


def format_table(table) -> str:
    lines = [
        f"{'optimizer':<26}{'best lr':>9}{'val loss (mean ± std)':>24}"
        f"{'clipped: steps 1-10':>21}{'last 100':>10}{'all':>7}",
        "-" * 97,
    ]
    for t in sorted(table, key=lambda t: t["mean"]):
        lr = t["lr"] + ("*" if t["edge"] else "")
        clip = (
            f"{t['clip_first10']:>21.3f}{t['clip_last100']:>10.3f}{t['clip_mean']:>7.3f}"
            if t["clip_mean"] is not None
            else f"{'':>21}{'':>10}{'':>7}"
        )
        lines.append(f"{t['name']:<26}{lr:>9}{t['mean']:>15.4f} ± {t['std']:<6.4f}{clip}")
    lines.append("* best learning rate at the edge of its grid")
    return "\n".join(lines)


def plot(results, table, path):
    if not available():
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5))
    order = sorted((t for t in table if np.isfinite(t["mean"])), key=lambda t: t["mean"])
    axes[0].barh(
        [t["name"] for t in order],
        [t["mean"] for t in order],
        xerr=[t["std"] for t in order],
        color="tab:blue",
    )
    axes[0].invert_yaxis()
    axes[0].set_xlabel("validation loss (best lr, mean ± std over seeds)")
    lo = min(t["mean"] for t in order)
    axes[0].set_xlim(lo - 0.2, max(t["mean"] for t in order) + 0.1)
    for t in order:
        frac = results["rows"][t["name"]][t["lr"]]["clip_fraction"]
        if frac:
            axes[1].plot(frac, label=f"{t['name']} (lr {t['lr']})")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("fraction of coordinates clipped")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[1].legend(fontsize=8)
    return str(save(fig, path))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps, one seed")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--optimizers", default=",".join(CONFIGS))
    ap.add_argument("--out", default="out/benchmarks")
    ap.add_argument("--merge", help="an earlier acclip_scale.json whose other optimizers to keep")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        ap.error(f"unknown optimizer(s) {bad}; choose from {list(CONFIGS)}")
    cfg = charlm.Config(d_model=args.d_model)
    grids, max_chars = None, 1_500_000
    if args.quick:
        cfg = charlm.Config(d_model=32, heads=2, layers=1, seq=32, batch=8)
        args.steps, args.seeds, max_chars = 20, 1, 100_000
        grids = {n: CONFIGS[n][1][1:2] for n in names}
    start = time.perf_counter()
    results = run(names, cfg, args.steps, range(args.seeds), grids, max_chars=max_chars)
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        for name, rows in earlier["rows"].items():
            results["rows"].setdefault(name, rows)
    table = summarize(results)
    results["table"] = table
    results["machine"] = dict(platform=platform.platform(), python=platform.python_version())
    results["seconds"] = time.perf_counter() - start
    print(
        f"char transformer, {results['params']} params, {args.steps} steps, "
        f"{args.seeds} seeds, batch {cfg.batch}x{cfg.seq}"
    )
    print(format_table(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acclip_scale.json").write_text(json.dumps(results, indent=1))
    png = plot(results, table, out / "acclip_scale.png")
    print(
        f"wrote {out / 'acclip_scale.json'}"
        + (f" and {png}" if png else "")
        + f" in {results['seconds']:.0f}s"
    )
    return results


if __name__ == "__main__":
    main()
