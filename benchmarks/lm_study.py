"""Do the papers' claims hold on a real language model? A byte-level study in one command.

A decoder-only transformer (Flax NNX: pre-norm blocks, causal attention, a GELU MLP, learned
positions, input and output embeddings tied) is trained on bytes of Python source that every
machine has: this interpreter's standard library (``sysconfig.get_paths()["stdlib"]``, test
packages excluded, files in sorted order; every tenth file is validation). The output names the
corpus by byte count and SHA-256, so a run says exactly what it trained on.

Every optimizer gets the same warmup and cosine decay, a small grid of peak learning rates and
the same seeds (each seed fixes the initialization and the batch order); the runs of one optimizer
are vmapped into one program. Reported: the validation loss of each optimizer's best learning rate
as mean ± std over seeds (flagged when the best sits at the grid's edge), the gradient-noise tail
(Hill's index of per-minibatch noise norms, ``optclip.diagnostics``) during a reference Adam run,
ACClip's clip fraction during training, and a verdict per claim: holds, does not hold, or
inconclusive when the gap is within the seed spread.

    python benchmarks/lm_study.py --quick                      # CPU smoke run, under a minute
    python benchmarks/lm_study.py --size small --budget-seconds 600  # ~0.12M params on 2 cores
    python benchmarks/lm_study.py --size cpu --budget-seconds 7200   # ~0.8M params on 2 cores
    python benchmarks/lm_study.py --size gpu --budget-seconds 480    # ~25M params on one GPU

Writes ``--out``/lm_study.json and lm_study.png (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import _byte_lm
import _lmo_setup
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import diagnostics as D
from optclip._plotting import available, pyplot, save

# ---------------------------------------------------------------------------------------------
# The optimizers: (factory of a unit-peak schedule, peak learning-rate grid). Each update is
# linear in the learning rate, so the peak is a traced factor and one program serves the grid.

OPTIMIZERS = {
    "adam": (lambda s: optax.adam(s), (1e-3, 3e-3, 1e-2, 3e-2)),
    "acclip": (lambda s: optclip.acclip(s), (0.03, 0.1, 0.3, 1.0)),
    "acclip(rms_scale)": (lambda s: optclip.acclip(s, rms_scale=True), (1e-3, 3e-3, 1e-2, 3e-2)),
    "generalized_signsgd": (lambda s: optclip.generalized_signsgd(s), (3e-4, 1e-3, 3e-3, 1e-2)),
    "signum": (lambda s: optclip.generalized_signsgd(s, b2=0.0), (3e-4, 1e-3, 3e-3, 1e-2)),
    "gclip": (lambda s: optclip.gclip(s, threshold=1.0, b1=0.9), (0.1, 0.3, 1.0, 3.0)),
    "clip+adam": (
        lambda s: optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(s)),
        (1e-3, 3e-3, 1e-2, 3e-2),
    ),
    "sgd_momentum": (lambda s: optax.sgd(s, momentum=0.9), (0.03, 0.1, 0.3, 1.0)),
    # The per-layer LMO family and its peer (benchmarks/_lmo_setup.py); Gluon's factory is
    # set in main() from a probe run of the study's model.
    **_lmo_setup.OPTIMIZERS,
    _lmo_setup.GLUON: (None, _lmo_setup.GLUON_GRID),
}
REFERENCE = "adam"


def schedule(steps: int) -> optax.Schedule:
    """Linear warmup over 5% of the steps to 1, cosine decay to 0.1: the same for every run."""
    warmup = max(1, steps // 20)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(steps, warmup + 1), 0.1)


# ---------------------------------------------------------------------------------------------
# Training.


def clip_fraction(state) -> jax.Array:
    """ACClip's fraction of clipped coordinates this step; NaN for optimizers without one."""
    try:
        return optclip.clip_fraction(state)
    except ValueError:
        return jnp.float32(jnp.nan)


def make_runner(study: _byte_lm.Study, tx: optax.GradientTransformation, chunk: int):
    """``init(params)`` and ``advance(params, state, peak_lrs, starts)``: ``chunk`` steps of
    every run at once (runs on the leading axis), with the mean training loss and the last clip
    fraction."""
    train = jnp.asarray(study.corpus.train)

    def one(params, state, lr, starts):
        def step(carry, s):
            params, state = carry
            loss, grads = jax.value_and_grad(study.loss)(params, train, s)
            updates, state = tx.update(grads, state, params)
            updates = jax.tree.map(lambda u: lr * u, updates)
            return (optax.apply_updates(params, updates), state), (loss, clip_fraction(state))

        (params, state), (losses, fractions) = jax.lax.scan(step, (params, state), starts)
        return params, state, losses.mean(), fractions[-1]

    advance = jax.jit(jax.vmap(one), donate_argnums=(0, 1))
    return jax.jit(jax.vmap(tx.init)), advance


def setup_runs(study, name, steps, seeds, chunk):
    """Every (peak lr, seed) of one optimizer, stacked: ``(runs, params, state, lrs, starts,
    advance)`` for :func:`make_runner`'s ``advance``."""
    factory, grid = OPTIMIZERS[name]
    runs = [(lr, seed) for lr in grid for seed in seeds]
    params = jax.tree.map(lambda *x: jnp.stack(x), *[study.init(seed) for _, seed in runs])
    lrs = jnp.asarray([lr for lr, _ in runs], jnp.float32)
    starts = jnp.stack([study.batch_starts(seed, steps) for _, seed in runs])
    init, advance = make_runner(study, factory(schedule(steps)), chunk)
    return runs, params, init(params), lrs, starts, advance


def train_optimizer(study, name, steps, seeds, chunk, progress=None):
    """Every (peak lr, seed) of one optimizer; returns its runs and the time spent."""
    grid = OPTIMIZERS[name][1]
    runs, params, state, lrs, starts, advance = setup_runs(study, name, steps, seeds, chunk)
    curves = {k: [] for k in ("step", "train", "val", "clip_fraction")}
    snapshots = {}
    start = time.perf_counter()
    for done in range(0, steps, chunk):
        params, state, train_loss, fraction = advance(
            params, state, lrs, starts[:, done : done + chunk]
        )
        val_loss = study.validate(params)
        curves["step"].append(done + chunk)
        for key, value in (("train", train_loss), ("val", val_loss), ("clip_fraction", fraction)):
            curves[key].append(np.asarray(value, np.float64))
        if name == REFERENCE:
            snapshots[done + chunk] = jax.tree.map(
                lambda x: x[len(seeds) * (len(grid) // 2)], params
            )
        if progress is not None:
            progress.update(chunk)
    seconds = time.perf_counter() - start
    out = []
    for i, (lr, seed) in enumerate(runs):
        val = [float(v[i]) for v in curves["val"]]
        out.append(
            dict(
                optimizer=name,
                lr=lr,
                seed=seed,
                steps=curves["step"],
                val_loss=val,
                train_loss=[float(v[i]) for v in curves["train"]],
                clip_fraction=[float(v[i]) for v in curves["clip_fraction"]],
                final_val_loss=val[-1] if math.isfinite(val[-1]) else math.inf,
            )
        )
    return out, seconds, snapshots


def noise_tail(study: _byte_lm.Study, params, batches: int, seed: int = 0) -> dict:
    """Hill's index (top 10%) of per-minibatch gradient-noise norms at ``params``."""
    hi = len(study.corpus.train) - study.size.context - 1
    starts = jax.random.randint(jax.random.key(seed), (batches, study.size.batch), 0, hi)
    train = jnp.asarray(study.corpus.train)
    norms = np.asarray(D.noise_norms(lambda p, s: study.loss(p, train, s), params, starts))
    return dict(
        hill=D.hill_tail_index(norms, max(2, batches // 10)),
        max_over_median=float(np.max(norms) / np.median(norms)),
    )


# ---------------------------------------------------------------------------------------------
# Reading the result.


def summarize(runs: list[dict]) -> dict:
    """Per optimizer: the best peak lr by mean final validation loss over seeds, mean ± std."""
    table = {}
    for name, (_, grid) in OPTIMIZERS.items():
        by_lr = {}
        for lr in grid:
            finals = [r["final_val_loss"] for r in runs if r["optimizer"] == name and r["lr"] == lr]
            if finals:
                by_lr[lr] = np.asarray(finals)
        if not by_lr:
            continue
        best = min(by_lr, key=lambda lr: np.mean(by_lr[lr]))
        table[name] = dict(
            lr=best,
            mean=float(np.mean(by_lr[best])),
            std=float(np.std(by_lr[best])),
            at_edge=best in (grid[0], grid[-1]),
            by_lr={str(lr): float(np.mean(v)) for lr, v in by_lr.items()},
        )
    return table


def verdict(table: dict, a: str, b: str, claim: str, kind: str) -> dict:
    """``kind`` "beats": a < b beyond the spread holds; "matches": not worse beyond it holds."""
    ra, rb = table[a], table[b]
    gap = ra["mean"] - rb["mean"]
    spread = math.hypot(ra["std"], rb["std"])
    if not math.isfinite(gap):
        word = "does not hold" if not math.isfinite(ra["mean"]) else "holds"
    elif kind == "beats":
        word = "holds" if gap < -spread else "does not hold" if gap > spread else "inconclusive"
    else:
        word = "does not hold" if gap > spread else "holds"
    return dict(claim=claim, a=a, b=b, gap=gap, spread=spread, verdict=word)


CLAIMS = [  # (a, b, claim, kind), each judged when both a and b ran (``--optimizers``)
    ("acclip", REFERENCE, "ACClip (the paper's rule) beats Adam", "beats"),
    ("acclip(rms_scale)", REFERENCE, "ACClip (rms_scale) beats Adam", "beats"),
    ("generalized_signsgd", REFERENCE, "Generalized SignSGD matches Adam", "matches"),
    ("clip+adam", "sgd_momentum", "Clipping + Adam beats SGD-momentum", "beats"),
]


def verdicts(table: dict, tails: dict) -> list[dict]:
    out = [verdict(table, *claim) for claim in CLAIMS if claim[0] in table and claim[1] in table]
    if tails:
        hills = [t["hill"] for t in tails.values()]
        heavy = max(hills) < 2
        out.append(
            dict(
                claim="The gradient noise is heavy-tailed (Hill index < 2 throughout)",
                hill=hills,
                verdict="holds" if heavy else "does not hold" if min(hills) > 2 else "inconclusive",
            )
        )
    return out


def print_report(result: dict) -> None:
    c, m = result["corpus"], result["model"]
    print(
        f"\ncorpus: {c['files']} stdlib files of Python {c['python']}; train {c['train_bytes']:,} "
        f"bytes (sha256 {c['train_sha256'][:16]}...), validation {c['val_bytes']:,} bytes "
        f"(sha256 {c['val_sha256'][:16]}...)"
    )
    print(
        f"model: {m['params']:,} params, d={m['d_model']}, {m['layers']} layers, context "
        f"{m['context']}, batch {m['batch']}, {m['dtype']} matmuls; {result['steps']} steps, "
        f"seeds {result['seeds']}, {result['tokens_per_run']:,} tokens per run; "
        f"{result['device']}"
    )
    print(f"\n{'optimizer':<22}{'best lr':>9}{'val loss (mean ± std)':>26}  grid means")
    for name, row in result["table"].items():
        edge = " (grid edge)" if row["at_edge"] else ""
        grid = ", ".join(f"{lr}: {v:.4f}" for lr, v in row["by_lr"].items())
        print(f"{name:<22}{row['lr']:>9g}{row['mean']:>17.4f} ± {row['std']:.4f}{edge}  {grid}")
    if result["noise"]:
        print(
            "\ngradient-noise tail of the reference Adam run (Hill index of noise norms, top 10%):"
        )
        for step, t in result["noise"].items():
            print(f"  step {step}: Hill {t['hill']:.2f}, max/median {t['max_over_median']:.1f}")
    fractions = [r["clip_fraction"] for r in result["runs"] if r["optimizer"] == "acclip"]
    if fractions:
        mean = np.nanmean(np.asarray(fractions), axis=0)
        print("ACClip clip fraction during training: " + ", ".join(f"{v:.2f}" for v in mean))
    print("\nverdicts (gap = a - b in validation loss; spread = the seed stds combined):")
    for v in result["verdicts"]:
        detail = (
            f"gap {v['gap']:+.4f}, spread {v['spread']:.4f}"
            if "gap" in v
            else "Hill " + ", ".join(f"{h:.2f}" for h in v["hill"])
        )
        print(f"  {v['claim']}: {v['verdict']} ({detail})")


def _json_safe(x):
    """Strict JSON: a diverged run's inf/NaN losses become null."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def plot(result: dict, path: Path):
    if not available():
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for name, row in result["table"].items():
        runs = [r for r in result["runs"] if r["optimizer"] == name and r["lr"] == row["lr"]]
        steps = np.asarray(runs[0]["steps"])
        curves = np.asarray([r["val_loss"] for r in runs], dtype=np.float64)
        mean = curves.mean(0)
        (line,) = ax.plot(steps, mean, label=f"{name} (lr {row['lr']:g})")
        ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    finite = [r["mean"] for r in result["table"].values() if math.isfinite(r["mean"])]
    if finite:
        ax.set_ylim(min(finite) - 0.1, max(finite) + 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(
        f"{result['model']['params']:,}-param byte LM on the stdlib, {len(result['seeds'])} seeds "
        "(band: min-max)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return str(save(fig, path))


# ---------------------------------------------------------------------------------------------


def time_probe(advance, params, state, inputs, steps: int) -> tuple[float, float]:
    """Seconds of a runner's first chunk of ``steps`` (compiling included) and per step of the
    second, for ``advance(params, state, *inputs) -> (params, state, ...)``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(advance(params, state, *inputs))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(advance(out[0], out[1], *inputs))
    return compile_s, (time.perf_counter() - t0) / steps


def plan_steps(study, names, seeds, chunk, budget: float, probe_steps: int) -> tuple[int, float]:
    """Steps per run so that every optimizer's runs fit ``budget`` seconds: one timed chunk of
    ``probe_steps`` (after compiling) gives seconds per step of the vmapped runs."""
    _, params, state, lrs, starts, advance = setup_runs(
        study, names[0], probe_steps, seeds, probe_steps
    )
    compile_s, per_step = time_probe(advance, params, state, (lrs, starts), probe_steps)
    spare = budget - len(names) * 1.2 * compile_s
    steps = int(spare / (len(names) * per_step))
    return max(chunk, steps // chunk * chunk), per_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a CPU smoke run in under a minute")
    ap.add_argument("--size", choices=sorted(_byte_lm.SIZES), default="cpu")
    ap.add_argument("--steps", type=int, help="steps per run (default: from --budget-seconds)")
    ap.add_argument("--budget-seconds", type=float, default=600.0, help="the whole study's time")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--evals", type=int, default=10, help="validation points per run")
    ap.add_argument("--max-bytes", type=int, help="cut the training split to this many bytes")
    ap.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="matmul dtype; auto: bfloat16 on accelerators, float32 on CPU",
    )
    ap.add_argument("--noise-batches", type=int, default=64)
    ap.add_argument("--out", default="out/benchmarks")
    args = ap.parse_args(argv)
    names = args.optimizers.split(",")
    unknown = set(names) - set(OPTIMIZERS)
    if unknown:
        ap.error(f"unknown optimizers {sorted(unknown)}; choose from {', '.join(OPTIMIZERS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    size, max_bytes, val_batches = _byte_lm.SIZES[args.size], args.max_bytes, 8
    if args.quick:
        size, max_bytes, val_batches = _byte_lm.SIZES["quick"], args.max_bytes or 200_000, 2
        args.noise_batches, args.evals = min(args.noise_batches, 32), min(args.evals, 2)
    backend = jax.default_backend()
    dtype_name = (
        args.dtype if args.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
    )
    corpus = _byte_lm.stdlib_corpus(max_bytes)
    study = _byte_lm.Study.make(size, corpus, jnp.dtype(dtype_name), val_batches)
    seeds = list(range(args.seeds))
    fitted = None
    if _lmo_setup.GLUON in names:  # its (L0_i, L1_i) from a probe run: no learning-rate grid
        factory, fitted = _lmo_setup.fit(study)
        OPTIMIZERS[_lmo_setup.GLUON] = (factory, _lmo_setup.GLUON_GRID)
    steps = args.steps or (40 if args.quick else None)
    chunk_guess = 10 if args.quick else 50
    if steps is None:
        steps, per_step = plan_steps(study, names, seeds, chunk_guess, args.budget_seconds, 10)
        print(
            f"throughput: {per_step * 1e3:.1f} ms per step of "
            f"{len(seeds) * len(OPTIMIZERS[names[0]][1])} vmapped runs; "
            f"{steps} steps per run fit {args.budget_seconds:.0f} s"
        )
    chunk = max(1, steps // args.evals)
    steps = steps // chunk * chunk
    result = dict(
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        corpus=corpus.description,
        model=dict(dataclasses.asdict(size), params=study.num_params(), dtype=dtype_name),
        steps=steps,
        seeds=seeds,
        tokens_per_run=steps * size.batch * size.context,
        schedule="linear warmup over 5% of the steps, cosine decay to 0.1 of the peak",
        device=f"{jax.devices()[0].device_kind} ({backend})",
        versions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            optax=optax.__version__,
            optclip=optclip.__version__,
        ),
        runs=[],
        seconds={},
        noise={},
        gluon_radii=fitted,
    )
    progress = None
    try:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps * len(names), desc="lm study", unit="step", disable=args.quick)
    except ImportError:
        pass
    start = time.perf_counter()
    for name in names:
        runs, seconds, snapshots = train_optimizer(study, name, steps, seeds, chunk, progress)
        result["runs"] += runs
        result["seconds"][name] = seconds
        if name == REFERENCE:
            points = sorted(snapshots)
            for step in sorted({points[0], points[len(points) // 2], points[-1]}):
                result["noise"][str(step)] = noise_tail(study, snapshots[step], args.noise_batches)
    if progress is not None:
        progress.close()
    result["total_seconds"] = time.perf_counter() - start
    result["table"] = summarize(result["runs"])
    result["verdicts"] = verdicts(result["table"], result["noise"])
    print_report(result)
    return write(result, Path(args.out), "lm_study", plot)


def write(result: dict, out: Path, name: str, draw) -> dict:
    """``out``/``name``.json (strict JSON) and ``name``.png from ``draw(result, path)``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(_json_safe(result), indent=1))
    png = draw(result, out / f"{name}.png")
    print(
        f"\n{result['total_seconds']:.0f} s; wrote {out / f'{name}.json'}"
        + (f" and {png}" if png else "")
    )
    return result


if __name__ == "__main__":
    main()
