"""optclip's demo: which optimizers keep training through gradient spikes.

``python -m optclip.demo`` trains the causal character-level transformer of
:mod:`optclip.demo.charlm` on a text shipped with the package (a snapshot of
optclip's own sources and docs, :mod:`optclip.demo.corpus`; the same on every
Python) with Adam, clip(1) + Adam, unit-wise AGC + Adam (the recommendation
before the LMO family) and clip(1) + ``optclip.muon`` (the recommendation,
``docs/choosing.md``), on two seeds, clean and with the gradient times 1e4 at
three steps; prints both validation losses (mean ± std), which
optimizers kept training, and saves the loss curves. README.md gives the times.

``python -m optclip.demo --task regression`` runs the heavy-tailed-noise
comparison instead: linear regression whose labels carry Student-t(1.5) noise
(infinite-variance minibatch gradients), every optimizer with a small
learning-rate grid tuned on a few seeds and reported on others.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip

try:
    from tqdm import tqdm

    from optclip.demo import charlm
except ImportError as e:  # the `demo` extra is not installed
    raise ImportError(
        f"optclip's demo needs flax and tqdm: pip install 'optclip[demo]' (missing: {e.name})"
    ) from e
from optclip._plotting import available as _can_plot
from optclip._plotting import pyplot, save
from optclip.demo.recipes import (
    DEFAULT_TRANSFORMER,
    PREVIOUS,
    RECOMMENDED,
    TRANSFORMER_OPTIMIZERS,
)

SGD_GRID = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
ADAM_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003)

# Each factory takes its learning rate as a traced scalar too (final_errors).
OPTIMIZERS: dict[
    str, tuple[Callable[[jax.typing.ArrayLike], optax.GradientTransformation], Sequence[float]]
] = {
    "sgd": (lambda lr: optax.sgd(lr), SGD_GRID),
    "sgd_momentum": (lambda lr: optax.sgd(lr, momentum=0.9), SGD_GRID),
    "adam": (lambda lr: optax.adam(lr), ADAM_GRID),
    "gclip": (lambda lr: optclip.gclip(lr, threshold=1.0, b1=0.9), SGD_GRID),
    "cclip": (lambda lr: optclip.cclip(lr, threshold=0.2, b1=0.9), SGD_GRID),
    "acclip": (lambda lr: optclip.acclip(lr), SGD_GRID),
    "acclip_rms": (lambda lr: optclip.acclip(lr, rms_scale=True, initial_threshold=0.0), ADAM_GRID),
    "generalized_signsgd": (lambda lr: optclip.generalized_signsgd(lr), ADAM_GRID),
}


def make_problem(seed: int, dim: int, steps: int, batch: int, df: float):
    """Features ~ N(0, I), labels x.w* + Student-t(df) noise, one minibatch per step."""
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=dim).astype(np.float32)
    x = rng.normal(size=(steps, batch, dim)).astype(np.float32)
    y = x @ w_star + rng.standard_t(df, size=(steps, batch)).astype(np.float32)
    return jnp.asarray(w_star), jnp.asarray(x), jnp.asarray(y)


def final_errors(
    make: Callable[[jax.typing.ArrayLike], optax.GradientTransformation],
    lrs: Sequence[float],
    problems,
) -> np.ndarray:
    """Excess risk ||w - w*||^2 averaged over the last 10% of steps, ``[lr, seed]``.

    The learning rate is an argument of one compiled program for the whole grid, not a
    constant of a program per learning rate: a grid compiles once.
    """

    def one(lr, w_star, xs, ys):
        tx = make(lr)
        w = jnp.zeros_like(w_star)

        def loss(w, x, y):
            return 0.5 * jnp.mean((x @ w - y) ** 2)

        def step(carry, batch):
            w, s = carry
            g = jax.grad(loss)(w, *batch)
            u, s = tx.update(g, s, w)
            w = optax.apply_updates(w, u)
            return (w, s), jnp.sum((w - w_star) ** 2)

        _, err = jax.lax.scan(step, (w, tx.init(w)), (xs, ys))
        tail = max(1, err.shape[0] // 10)
        return jnp.mean(err[-tail:])

    seeds = jax.vmap(one, in_axes=(None, 0, 0, 0))
    grid = jax.jit(jax.vmap(seeds, in_axes=(0, None, None, None)))
    out = np.asarray(grid(jnp.asarray(lrs, jnp.float32), *problems))
    return np.where(np.isfinite(out), out, np.inf)


def stack(problems):
    return tuple(jnp.stack(p) for p in zip(*problems, strict=True))


def run(names, steps, dim, batch, tune_seeds, eval_seeds, df=1.5, progress=True):
    tune = stack([make_problem(s, dim, steps, batch, df) for s in tune_seeds])
    held = stack([make_problem(s, dim, steps, batch, df) for s in eval_seeds])
    rows = []
    bar = tqdm(names, desc="optimizers", disable=not progress, file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        make, grid = OPTIMIZERS[name]
        best = grid[int(np.argmin(np.mean(final_errors(make, grid, tune), axis=1)))]
        (errs,) = final_errors(make, [best], held)
        rows.append(
            dict(
                name=name,
                lr=best,
                mean=float(np.mean(errs)),
                std=float(np.std(errs)),
                worst=float(np.max(errs)),
            )
        )
    return rows


def format_table(rows) -> str:
    lines = [
        f"{'optimizer':<21}{'best lr':>9}{'excess risk (mean ± std)':>28}{'worst seed':>13}",
        "-" * 71,
    ]
    for r in sorted(rows, key=lambda r: r["mean"]):
        lines.append(
            f"{r['name']:<21}{r['lr']:>9g}{r['mean']:>17.4g} ± {r['std']:<8.3g}{r['worst']:>13.4g}"
        )
    return "\n".join(lines)


def reading(rows) -> str:
    by = {r["name"]: r for r in rows}
    best = min(rows, key=lambda r: r["mean"])
    if "sgd" not in by:
        return f"Lowest error: {best['name']} ({best['mean']:.3g})."
    sgd = by["sgd"]["mean"]
    ratio = sgd / best["mean"] if best["mean"] > 0 else float("inf")
    beaten = [r["name"] for r in rows if r["mean"] < sgd and r["name"] != "sgd"]
    return (
        f"Reading: under infinite-variance noise {best['name']} reaches {ratio:.1f}x lower "
        f"excess risk than SGD at its best step; {len(beaten)} of {len(rows) - 1} other "
        f"optimizers beat SGD."
    )


# The injected spikes: the whole gradient times SPIKE at these fractions of the run.
SPIKE, SPIKE_AT = 1e4, (0.3, 0.5, 0.7)


def spike_scales(steps: int) -> np.ndarray:
    """Per step, the factor of the spiked runs' gradient: ``SPIKE`` at ``SPIKE_AT``, else 1."""
    scales = np.ones(steps, np.float32)
    scales[[int(f * steps) for f in SPIKE_AT]] = SPIKE
    return scales


def train_transformer(names, steps, seeds, quick, progress=True):
    """Trains the char transformer with each optimizer on every seed, clean and with spikes.

    The clean and spiked runs of one optimizer are one vmapped program (the same seeds, so the
    same initializations and batches). Returns the task, one row per optimizer (``val`` and
    ``val_spiked`` hold the validation loss of each seed) and each optimizer's training-loss
    curve without and with spikes, averaged over seeds.
    """
    cfg = (
        charlm.Config(d_model=32, heads=2, layers=1, seq=32, batch=8)
        if quick
        else charlm.Config(d_model=96)
    )
    task = charlm.Task.make(cfg, max_chars=100_000 if quick else 1_500_000)
    seeds = list(seeds)
    scales = np.stack(
        [np.ones(steps, np.float32)] * len(seeds) + [spike_scales(steps)] * len(seeds)
    )
    rows, curves = [], {}
    bar = tqdm(names, desc="training", disable=not progress, file=sys.stderr)
    for name in bar:
        make, lr = TRANSFORMER_OPTIMIZERS[name]
        bar.set_postfix_str(f"{name} (lr {lr:g})")
        start = time.perf_counter()
        val, losses, _ = charlm.train_seeds(task, make(lr), seeds * 2, steps, grad_scales=scales)
        n = len(seeds)
        curves[name] = np.mean(losses[:n], axis=0)
        curves[f"{name}, spiked"] = np.mean(losses[n:], axis=0)
        tail = max(1, steps // 20)
        rows.append(
            dict(
                name=name,
                lr=lr,
                train=float(np.mean(losses[:n, -tail:])),
                val=np.asarray(val[:n], np.float64),
                val_spiked=np.asarray(val[n:], np.float64),
                seconds=time.perf_counter() - start,
            )
        )
    return task, rows, curves


def survives(row: dict) -> bool:
    """Whether the spiked runs end within the seed spread (at least 0.05 nats) of the clean."""
    gap = float(np.mean(row["val_spiked"]) - np.mean(row["val"]))
    return bool(np.isfinite(gap)) and gap <= max(0.05, 2 * spread(row["val"]))


def spread(values: np.ndarray) -> float:
    """Seed-to-seed standard deviation (``ddof=1``; 0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _gap_and_spread(a: dict, b: dict) -> tuple[float, float]:
    """Mean validation loss of ``a`` minus ``b``, and the larger seed-to-seed spread."""
    gap = float(np.mean(a["val"]) - np.mean(b["val"]))
    return gap, max(spread(a["val"]), spread(b["val"]))


def compare(a: dict, b: dict) -> str:
    """Which of two rows has the lower mean validation loss, or "tie".

    A tie when the gap between the means is within the seed-to-seed spread (the
    larger of the two standard deviations): then another seed could reverse the
    order. With one seed there is no spread and every gap counts.
    """
    gap, within = _gap_and_spread(a, b)
    if abs(gap) <= within:
        return "tie"
    return a["name"] if gap < 0 else b["name"]


def _save_curves(curves, path):
    if not _can_plot():
        return None
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    colors: dict[str, str] = {}
    for name, c in curves.items():
        w = max(1, len(c) // 40)
        base = name.removesuffix(", spiked")
        style = dict(linestyle="--", color=colors[base]) if base in colors else {}
        (line,) = ax.plot(np.convolve(c, np.ones(w) / w, mode="valid"), label=name, **style)
        colors.setdefault(base, line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({max(1, len(c) // 40)}-step mean over seeds)")
    ax.set_ylim(top=min(6.0, ax.get_ylim()[1]))
    ax.set_title(f"dashed: gradient x{SPIKE:g} at {len(SPIKE_AT)} steps", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def _reading(rows) -> str:
    kept = [r for r in rows if survives(r)]
    stalled = [r["name"] for r in rows if not survives(r)]
    line = "Reading: with spikes, " + (
        f"{', '.join(r['name'] for r in kept)} kept training"
        if kept
        else "no optimizer kept training"
    )
    if stalled:
        line += f"; {', '.join(stalled)} did not"
    if kept:
        best = min(kept, key=lambda r: np.mean(r["val"]))
        line += f". Lowest clean validation loss among those that kept training: {best['name']}"
    return line + f". docs/choosing.md recommends {RECOMMENDED} (before it, {PREVIOUS})."


def _cell(values) -> str:
    mean = float(np.mean(values))
    return f"{mean:.4f} ± {spread(values):.4f}" if mean < 100 else "diverged"


def _transformer_main(args, parser) -> int:
    names = [n.strip() for n in (args.optimizers or DEFAULT_TRANSFORMER).split(",") if n.strip()]
    unknown = [n for n in names if n not in TRANSFORMER_OPTIMIZERS]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; choose from {list(TRANSFORMER_OPTIMIZERS)}")
    steps = args.steps or (30 if args.quick else 200)
    seeds = range(args.seed, args.seed + (args.seeds or 2))
    start = time.perf_counter()
    task, rows, curves = train_transformer(
        names, steps, seeds, args.quick, progress=not args.no_progress
    )
    spikes = ", ".join(str(int(f * steps)) for f in SPIKE_AT)
    print(
        f"Character transformer ({task.num_params()} parameters) on optclip's own sources and "
        f"docs, {steps} steps of {task.cfg.batch}x{task.cfg.seq} characters, "
        f"seeds {seeds.start}-{seeds.stop - 1} (mean ± std over seeds); spiked runs: the "
        f"gradient times {SPIKE:g} at steps {spikes}."
    )
    print(
        f"{'optimizer':<15}{'lr':>7}{'val loss, clean':>19}{'with spikes':>19}"
        f"{'kept training':>15}{'seconds':>9}"
    )
    for r in sorted(rows, key=lambda r: np.mean(r["val"])):
        kept = "yes" if survives(r) else "no"
        print(
            f"{r['name']:<15}{r['lr']:>7g}{_cell(r['val']):>19}{_cell(r['val_spiked']):>19}"
            f"{kept:>15}{r['seconds']:>9.1f}"
        )
    print(_reading(rows))
    plot = "demo_loss_quick.png" if args.quick else "demo_loss.png"
    png = _save_curves(curves, Path(args.out) / plot)
    print(f"loss curves saved to {png}" if png else "(install matplotlib for the loss-curve plot)")
    print(f"({time.perf_counter() - start:.1f}s on {jax.devices()[0].platform})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m optclip.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--task",
        choices=("transformer", "regression"),
        default="transformer",
        help="transformer: a character transformer on text (default); regression: linear "
        "regression under infinite-variance label noise",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per run (default 200 for the transformer, 30 with --quick; "
        "1000 for regression, at most 200 with --quick)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="transformer: the first seed; runs use seeds SEED, SEED+1, ... (default 0)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="how many seeds (each: its own initialization and batches) every optimizer runs "
        "on; the table shows mean ± std over them (default 2 for the transformer; for "
        "regression, 8 held-out seeds, at most 3 with --quick)",
    )
    parser.add_argument(
        "--optimizers",
        default=None,
        help="comma-separated subset to run; transformer: "
        + ", ".join(TRANSFORMER_OPTIMIZERS)
        + f" (default {DEFAULT_TRANSFORMER}); regression: "
        + ", ".join(OPTIMIZERS)
        + " (default all)",
    )
    parser.add_argument(
        "--out",
        default="out",
        help="folder for the loss-curve plot: demo_loss.png, or demo_loss_quick.png with "
        "--quick (default out/)",
    )
    parser.add_argument(
        "--dim", type=int, default=50, help="regression: number of features (default 50)"
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="regression: examples per minibatch (default 8)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller model and fewer steps: a run of seconds that checks the set-up, "
        "not a result",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (written to stderr)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo; ``argv`` as on the command line (``--help`` lists the flags).

    Args:
      argv: the arguments; ``sys.argv[1:]`` if ``None``.

    Returns:
      The exit status, 0.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("steps", "dim", "batch", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be a positive integer")
    if args.task == "transformer":
        return _transformer_main(args, parser)
    return _regression_main(args, parser)


def _regression_main(args, parser) -> int:
    names = [n.strip() for n in (args.optimizers or ",".join(OPTIMIZERS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; choose from {list(OPTIMIZERS)}")
    args.steps = args.steps or 1000
    args.seeds = args.seeds or 8
    if args.quick:
        args.steps, args.seeds = min(args.steps, 200), min(args.seeds, 3)
    start = time.perf_counter()
    rows = run(
        names,
        args.steps,
        args.dim,
        args.batch,
        tune_seeds=range(100, 104),
        eval_seeds=range(args.seeds),
        progress=not args.no_progress,
    )
    print(
        f"Linear regression, {args.dim} features, batch {args.batch}, {args.steps} steps, "
        f"Student-t(1.5) label noise; lr tuned on 4 seeds, reported on {args.seeds} others."
    )
    print(format_table(rows))
    print(reading(rows))
    print(f"({time.perf_counter() - start:.1f}s on {jax.devices()[0].platform})")
    return 0
