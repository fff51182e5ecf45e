"""Spike-robust clipping head to head, on the language model and corpus of ``lm_study.py``.

Twelve optimizers (Adam, clip(1)+Adam, ZClip, AdaGC, SPAM, skip-step, AGC, four ACClip forms,
generalized SignSGD), each at its best peak learning rate of ``lm_study.py --size small`` and
wrapped in ``optax.apply_if_finite``, train with lm_study's schedule, seeds and batches while the
gradient is corrupted at the same three steps (35%, 50%, 65% of the run) for every method: times
1e1, 1e2, 1e4 or 1e6; one matrix of the middle block times 1e4; a burst of five steps times 1e4;
or inf (non-finite). Clean runs at 1/3, 3, 10, 30 and 100 times the learning rate give each
method's viable range. All scenarios, learning rates and seeds of a method are one vmapped
program, compiled once; warm-ups and windows longer than a short run allows are scaled to it.

Reported per method and scenario: final validation loss (mean over seeds) and its change from
clean; loss spikes (steps whose training loss tops the same-seed clean run's, on the same batch,
by more than 0.5 nats); steps to recover after the last injected spike (until the trailing mean
of that excess stays at or below 0.05 nats); and verdicts computed from them.

    python benchmarks/spikes.py --quick                              # CPU smoke run, < 90 s
    python benchmarks/spikes.py --size small --budget-seconds 900    # 120k params, 2 CPU cores
    python benchmarks/spikes.py --size gpu --budget-seconds 1800 --out out/spikes_gpu

Writes ``--out``/spikes.json and spikes.png (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import _byte_lm
import jax
import jax.numpy as jnp
import lm_study
import numpy as np
import optax
from _spike_setup import (
    ADAPTIVE,
    AGC_CLIPPING,
    BASELINE,
    EXCESS,
    GLUONS,
    MAX_ERRORS,
    METHODS,
    RECOMMENDED,
    SCENARIOS,
    SWEEP,
    TOLERANCE,
    lmo_verdict,
    spike_steps,
    windows,
    with_gluon,
)

import optclip
from optclip._plotting import available, pyplot, save


def target_leaf(study) -> tuple[int, str]:
    """The middle block's MLP up-projection: the index of its leaf and its name."""
    block = study.size.layers // 2
    flat = jax.tree_util.tree_flatten_with_path(study.init(0))[0]
    want = f"['blocks'][{block}]['up']['kernel']"
    i = next(i for i, (p, _) in enumerate(flat) if jax.tree_util.keystr(p).startswith(want))
    return i, f"blocks[{block}].up.kernel {tuple(flat[i][1].shape)}"


# ---------------------------------------------------------------------------------------------
# Training: corruptions, learning rates and batches are per-run inputs of one program.


def make_runner(study, tx, group: int | None, options: dict | None = None):
    """``init(params)`` and ``advance(params, state, lrs, factors, masks, starts)``: the steps of
    ``starts`` (runs, chunk, batch) for every run, the gradient's leaves under ``masks`` times
    ``factors`` (runs, chunk) first; returns the per-step training losses. ``group`` runs at a
    time (``lax.map`` over vmapped groups, to bound memory), or all at once. ``options``: XLA's
    compiler options."""
    train = jnp.asarray(study.corpus.train)

    def one(params, state, lr, factors, mask, starts):
        def step(carry, xs):
            params, state = carry
            s, factor = xs
            loss, grads = jax.value_and_grad(study.loss)(params, train, s)
            leaves, treedef = jax.tree.flatten(grads)
            hit = mask & (factor != 1.0)  # per leaf
            leaves = [jnp.where(hit[i], g * factor, g) for i, g in enumerate(leaves)]
            updates, state = tx.update(treedef.unflatten(leaves), state, params, value=loss)
            updates = jax.tree.map(lambda u: lr * u, updates)
            return (optax.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(step, (params, state), (starts, factors))
        return params, state, losses

    def advance(*args):
        if group is None or group >= args[2].shape[0]:
            return jax.vmap(one)(*args)
        return jax.lax.map(lambda a: one(*a), args, batch_size=group)

    return jax.jit(jax.vmap(tx.init)), jax.jit(
        advance, donate_argnums=(0, 1), compiler_options=options
    )


def layout(study, steps, seeds, leaf) -> tuple[list[dict], dict]:
    """Every (scenario or lr multiple, seed) of a method, and their stacked inputs on the host:
    initial params, gradient factors (runs, steps), leaf masks (runs, leaves), batch starts."""
    configs = [(s, 1.0) for s in SCENARIOS] + [("clean", m) for m in SWEEP]
    runs = [dict(scenario=c, lr_mult=m, seed=seed) for c, m in configs for seed in seeds]
    inits = [study.init(seed) for seed in seeds]
    n_leaves = len(jax.tree.leaves(inits[0]))
    factors, masks = np.ones((len(runs), steps), np.float32), np.ones((len(runs), n_leaves), bool)
    for i, r in enumerate(runs):
        factor, kind, one_leaf = SCENARIOS[r["scenario"]]
        factors[i, spike_steps(steps, kind)] = factor
        if one_leaf:
            masks[i] = np.arange(n_leaves) == leaf
    index = [seeds.index(r["seed"]) for r in runs]
    params = jax.tree.map(lambda *x: np.stack(x)[index], *inits)
    starts = np.stack([study.batch_starts(seed, steps) for seed in seeds])[index]
    return runs, dict(params=params, factors=factors, masks=masks, starts=starts)


def setup_runs(study, name, steps, plan, group, options=None):
    """One method's runs (``plan`` from :func:`layout`) on the device, and its runner."""
    factory, lr = METHODS[name]
    runs = [dict(r, method=name, lr=lr * r["lr_mult"]) for r in plan[0]]
    tx = optax.apply_if_finite(factory(lm_study.schedule(steps), windows(steps)), MAX_ERRORS)
    init, advance = make_runner(study, tx, group, options)
    params = jax.tree.map(jnp.asarray, plan[1]["params"])
    lrs = jnp.asarray([r["lr"] for r in runs], jnp.float32)
    inputs = (lrs, *(jnp.asarray(plan[1][k]) for k in ("factors", "masks", "starts")))
    return runs, params, init(params), inputs, advance


def validate(study, params, group: int | None) -> np.ndarray:
    """Every run's validation loss, ``group`` runs at a time (all at once if ``None``)."""
    n = len(jax.tree.leaves(params)[0])
    cut = lambda i: jax.tree.map(lambda x: x[i : i + (group or n)], params)
    return np.concatenate([study.validate(cut(i)) for i in range(0, n, group or n)]).astype(float)


def train_method(study, name, steps, plan, chunk, group, options=None, progress=None):
    """Every run of one method: the run records, the final validation losses (configs, seeds),
    the per-step training losses (configs, seeds, steps) and the non-finite steps skipped."""
    runs, params, state, (lrs, factors, masks, starts), advance = setup_runs(
        study, name, steps, plan, group, options
    )
    losses = []
    for done in range(0, steps, chunk):
        window = slice(done, done + chunk)
        params, state, loss = advance(
            params, state, lrs, factors[:, window], masks, starts[:, window]
        )
        losses.append(np.asarray(loss, np.float64))
        if progress is not None:
            progress.update(chunk)
    val, losses = validate(study, params, group), np.concatenate(losses, axis=1)
    val[~np.isfinite(val)] = np.inf
    skipped = np.asarray(state.total_notfinite)
    for i, r in enumerate(runs):
        r.update(final_val_loss=val[i], train_loss=np.round(losses[i], 5).tolist())
        r.update(nonfinite_steps=int(skipped[i]))
    shape = (len(SCENARIOS) + len(SWEEP), -1)
    return runs, val.reshape(shape), losses.reshape(*shape, steps), skipped.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Reading the result.


def recovery(excess: np.ndarray, last: int, window: int) -> int | None:
    """Steps after ``last`` until the trailing ``window``-step mean of the excess stays at or
    below TOLERANCE to the end; ``None`` (never) if it ends above it."""
    ma = np.convolve(np.nan_to_num(excess, nan=np.inf), np.ones(window) / window)[: len(excess)]
    above = np.nonzero(~(ma[last + 1 :] <= TOLERANCE))[0]
    if len(above) and above[-1] == len(ma) - last - 2:
        return None
    return int(above[-1]) + 1 if len(above) else 0


def summarize(val: np.ndarray, losses: np.ndarray, steps: int) -> dict:
    """Per scenario of one method (``train_method``'s arrays): the validation loss over seeds,
    its change from clean (paired by seed), the loss spikes and the worst seed's recovery."""
    rows, clean = {}, val[0]
    for i, (scn, (_, kind, _)) in enumerate(SCENARIOS.items()):
        v, excess = val[i], losses[i] - losses[0]
        recs = [recovery(e, spike_steps(steps, kind)[-1], max(3, steps // 50)) for e in excess]
        with np.errstate(invalid="ignore"):  # inf - inf: a diverged run
            delta, tol = float(np.mean(v - clean)), max(0.05, 2 * float(np.std(clean)))
            rows[scn] = dict(
                mean=float(np.mean(v)),
                std=float(np.std(v)),
                delta=delta,
                survives=bool(np.all(np.isfinite(v)) and delta <= tol),
                loss_spikes=float(np.mean(np.sum(~(excess <= EXCESS), axis=1))),
                recovery=None if None in recs else max(recs),
            )
    return rows


def unigram_loss(corpus) -> float:
    """Validation loss of the training split's byte frequencies (add-one): no context at all."""
    p = np.bincount(corpus.train, minlength=256) + 1.0
    return float(-np.mean(np.log(p / p.sum())[corpus.val]))


def sweep(val: np.ndarray, skipped: np.ndarray, lr: float, floor: float) -> dict:
    """One method's mean final validation loss and non-finite steps skipped at each lr multiple
    (clean); viable where every seed's loss is below ``floor``, the unigram loss (the model
    learned more than byte frequencies)."""
    mults, n = [1.0, *SWEEP], len(SCENARIOS)
    vals, skips = [val[0], *val[n:]], [skipped[0], *skipped[n:]]
    rows = {
        f"{m:g}": dict(
            lr=lr * m, mean=float(np.mean(v)), viable=bool(np.all(v < floor)), skipped=k.tolist()
        )
        for m, v, k in sorted(zip(mults, vals, skips, strict=True), key=lambda x: x[0])
    }
    ok = [r["lr"] for r in rows.values() if r["viable"]]
    top = rows[f"{max(mults):g}"]["viable"]
    return dict(by_mult=rows, viable=[min(ok), max(ok)] if ok else None, at_top=top)


def verdicts(table: dict) -> list[str]:
    spiky = [s for s in SCENARIOS if s != "clean"]
    survivors = [m for m, rows in table.items() if all(rows[s]["survives"] for s in spiky)]
    lines = [f"(1) survive every spike scenario: {', '.join(survivors) or 'none'}"]
    if BASELINE in table:
        b, gaps, better = table[BASELINE]["clean"], [], []
        for m in (m for m in ADAPTIVE if m in table):
            a = table[m]["clean"]
            gap, spread = a["mean"] - b["mean"], math.hypot(a["std"], b["std"])
            gaps.append(f"{m} {gap:+.4f}/{spread:.4f}{'' if m in survivors else '!'}")
            if gap < -spread and m in survivors:
                better.append(m)
        lines.append(
            f"(2) an adaptive method beats {BASELINE} when clean, beyond the seed spread, and "
            f"survives every scenario: {'holds for ' + ', '.join(better) if better else 'no'} "
            f"(clean gap/spread: {', '.join(gaps)}; ! = fails a scenario)"
        )
    if RECOMMENDED in table:
        lines.append(lmo_verdict(table, survivors))
    for plain, robust in (("acclip", "acclip(robust)"), ("acclip(rms)", "acclip(rms, robust)")):
        if plain in table and robust in table:
            fails = [s for s in spiky if not table[plain][s]["survives"]]
            saved = [s for s in fails if table[robust][s]["survives"]]
            word = "yes" if saved == fails and fails else "partly" if saved else "no"
            detail = f"{len(saved)} of {len(fails)}: {', '.join(fails)}" if fails else "none fail"
            lines.append(f"(3) {robust} survives where {plain} does not: {word} ({detail})")
    return lines


def cell(r: dict) -> str:
    rec = "never" if r["recovery"] is None else r["recovery"]
    val = f"{r['mean']:6.3f} {r['delta']:+7.3f}" if r["mean"] < 100 else f"{'diverged':>14}"
    return f"{val}{' ' if r['survives'] else '!'}{r['loss_spikes']:5.1f}{rec:>6}"


def print_report(result: dict) -> None:
    c, m = result["corpus"], result["model"]
    print(
        f"\ncorpus: train {c['train_bytes']:,} bytes (sha256 {c['train_sha256'][:16]}...), "
        f"validation {c['val_bytes']:,} (sha256 {c['val_sha256'][:16]}...); unigram loss "
        f"{result['unigram_loss']:.3f}\nmodel: {m['params']:,} params, d={m['d_model']}, "
        f"{m['layers']} layers, context {m['context']}, batch {m['batch']}, {m['dtype']}; "
        f"{result['steps']} steps, seeds {result['seeds']}; {result['device']}\nspikes at "
        f"steps {result['spike_steps']}, burst {result['burst_steps']}; one tensor: "
        f"{result['one_tensor']}\nwindows {result['windows']}; AGC clipping {AGC_CLIPPING}"
    )
    print("\ncell: final val loss, change from clean, loss spikes (mean), steps to recover (max)")
    scns = list(SCENARIOS)
    for part in (scns[:4], scns[4:]):
        print(f"{'method (peak lr)':<28}" + "".join(f"{s:>28}" for s in part))
        for name, rows in result["table"].items():
            label = f"{name} ({METHODS[name][1]:g})"
            print(f"{label:<28}" + "".join(f"{cell(rows[s]):>28}" for s in part))
        print()
    print("! = does not survive: a seed non-finite, or the mean change > max(0.05, 2 std of clean)")
    print(
        "\nviable peak lrs (clean, every seed below the unigram loss); mean val loss by lr "
        "(nf: non-finite steps skipped, all seeds):"
    )
    for name, s in result["sweep"].items():
        rng = "none" if s["viable"] is None else "{:.3g}-{:.3g}".format(*s["viable"])
        means = ", ".join(
            f"x{float(k):.3g} {r['mean']:.3f}" + (f" ({sum(r['skipped'])} nf)" * any(r["skipped"]))
            for k, r in s["by_mult"].items()
        )
        print(f"  {name:<21}{rng:<14}{'(grid top)' if s['at_top'] else '':<11}{means}")
    print("\nverdicts:")
    for line in result["verdicts"]:
        print("  " + line)


def plot(result: dict, path: Path):
    if not available():
        return None
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    names, scns = list(result["table"]), list(SCENARIOS)[1:]
    deltas = np.asarray([[result["table"][n][s]["delta"] for s in scns] for n in names])
    im = a.imshow(np.clip(np.nan_to_num(deltas, nan=5.0, posinf=5.0), -0.1, 1.0), cmap="magma_r")
    a.set_xticks(range(len(scns)), scns, rotation=40, ha="right", fontsize=7)
    a.set_yticks(range(len(names)), names, fontsize=7)
    a.grid(False)
    fig.colorbar(im, ax=a, label="val loss - clean (capped at 1)")
    for i, (n, s) in enumerate(result["sweep"].items()):
        rows, style = s["by_mult"].values(), "o-" if i < 10 else "s--"  # ten colours in a cycle
        b.plot([r["lr"] for r in rows], [min(r["mean"], 6.0) for r in rows], style, label=n)
    b.axhline(result["unigram_loss"], color="gray", ls="--", lw=0.8, label="unigram")
    b.set_xscale("log")
    b.set_xlabel("peak learning rate")
    b.set_ylabel("final val loss, clean (capped at 6)")
    b.legend(fontsize=6)
    b.set_title(f"{result['model']['params']:,}-param byte LM, {result['steps']} steps", fontsize=9)
    return str(save(fig, path))


# ---------------------------------------------------------------------------------------------


def plan_steps(study, names, seeds, leaf, group, budget, probe=10) -> tuple[int, float]:
    """Steps per run so that every method fits ``budget`` seconds, from one timed ``probe``-step
    chunk of the first method (after compiling it)."""
    plan = layout(study, probe, seeds, leaf)
    _, params, state, inputs, advance = setup_runs(study, names[0], probe, plan, group)
    compile_s, per_step = lm_study.time_probe(advance, params, state, inputs, probe)
    spare = budget - (len(names) + 1) * 1.2 * compile_s
    return max(40, int(spare / (len(names) * per_step * 1.05))), per_step


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a CPU smoke run in under 90 s")
    ap.add_argument("--size", choices=sorted(_byte_lm.SIZES), default="small")
    ap.add_argument("--steps", type=int, help="steps per run (default: from --budget-seconds)")
    ap.add_argument("--budget-seconds", type=float, default=900.0, help="the whole run's time")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-bytes", type=int, help="cut the training split to this many bytes")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--group", type=int, help="runs vmapped at once (default: all on CPU, 8 else)")
    ap.add_argument("--no-sweep", action="store_true", help="no lr sweep: the scenarios only")
    ap.add_argument("--scenarios", nargs="+", choices=[s for s in SCENARIOS if s != "clean"])
    ap.add_argument("--out", default="out/benchmarks")
    args = ap.parse_args(argv)
    args.names = [n.strip() for n in re.split(r",(?![^(]*\))", args.methods)]  # not in (...)
    if unknown := sorted(set(args.names) - set(METHODS)):
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.steps is not None and args.steps < 20:
        ap.error(f"--steps {args.steps}: the spikes need at least 20 steps")
    return args


def header(argv, corpus, study, steps, seeds, names, leaf_name) -> dict:
    """What the result is about: every setting a reader needs to repeat it."""
    return dict(
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        corpus=corpus.description,
        model=dict(
            dataclasses.asdict(study.size), params=study.num_params(), dtype=study.dtype.name
        ),
        steps=steps,
        seeds=seeds,
        device=f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        versions=dict(jax=jax.__version__, optax=optax.__version__, optclip=optclip.__version__),
        lrs={n: METHODS[n][1] for n in names},
        windows=windows(steps),
        agc_clipping=AGC_CLIPPING,
        spike_steps=spike_steps(steps, "spikes"),
        burst_steps=spike_steps(steps, "burst"),
        one_tensor=leaf_name,
        unigram_loss=unigram_loss(corpus),
        scenarios={k: v[0] for k, v in SCENARIOS.items()},
        lr_multiples=[1.0, *SWEEP],
        definitions=dict(
            loss_spike=f"a step whose training loss tops the same-seed clean one's by > {EXCESS}",
            recovery=f"steps after the last injected spike until the trailing max(3, steps // 50)"
            f"-step mean of that excess stays <= {TOLERANCE} (worst seed; null: never)",
            survives="every seed finite and mean val change <= max(0.05, 2 std of clean)",
            viable="every seed's final val loss (clean) below the unigram loss at that lr",
        ),
        runs=[],
        seconds={},
        table={},
        sweep={},
    )


def main(argv=None):
    args = parse(argv)
    size, max_bytes, val_batches = _byte_lm.SIZES[args.size], args.max_bytes, 8
    if args.quick:
        size, max_bytes, val_batches = _byte_lm.SIZES["quick"], args.max_bytes or 200_000, 2
    backend = jax.default_backend()
    dtype = args.dtype if args.dtype != "auto" else "float32" if backend == "cpu" else "bfloat16"
    group = args.group or (None if backend == "cpu" else 8)
    # The smoke run is compile-bound: LLVM -O1 compiles a quarter faster, to the same numbers.
    options = {"xla_backend_optimization_level": 1} if args.quick else None
    corpus = _byte_lm.stdlib_corpus(max_bytes)
    study = _byte_lm.Study.make(size, corpus, jnp.dtype(dtype), val_batches)
    names, seeds, (leaf, leaf_name) = args.names, list(range(args.seeds)), target_leaf(study)
    if args.no_sweep:
        globals()["SWEEP"] = ()
    if set(GLUONS) & set(names):  # its (L0_i, L1_i) from a probe run: no learning-rate grid
        with_gluon(study)
    if args.scenarios:
        globals()["SCENARIOS"] = {k: SCENARIOS[k] for k in ["clean", *args.scenarios]}
    steps = args.steps or (40 if args.quick else None)
    if steps is None:
        steps, per_step = plan_steps(study, names, seeds, leaf, group, args.budget_seconds)
        n_runs = len(seeds) * (len(SCENARIOS) + len(SWEEP))
        print(
            f"throughput: {per_step * 1e3:.0f} ms per step of {n_runs} vmapped runs; "
            f"{steps} steps per run fit {args.budget_seconds:.0f} s"
        )
    chunk = max(1, steps // 10)
    steps = steps // chunk * chunk
    result = header(argv, corpus, study, steps, seeds, names, leaf_name)
    progress = None
    try:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps * len(names), desc="spikes", unit="step", disable=args.quick)
    except ImportError:
        pass
    start, plan = time.perf_counter(), layout(study, steps, seeds, leaf)
    for name in names:
        t0 = time.perf_counter()
        runs, val, losses, skipped = train_method(
            study, name, steps, plan, chunk, group, options, progress
        )
        result["seconds"][name] = time.perf_counter() - t0
        result["runs"] += runs
        result["table"][name] = summarize(val, losses, steps)
        result["sweep"][name] = sweep(val, skipped, METHODS[name][1], result["unigram_loss"])
    if progress is not None:
        progress.close()
    result["total_seconds"] = time.perf_counter() - start
    result["verdicts"] = verdicts(result["table"])
    print_report(result)
    return lm_study.write(result, Path(args.out), "spikes", plot)


if __name__ == "__main__":
    main()
