"""Optimizer step time and memory traffic: optclip against its nearest optax counterpart.

Each variant is a jitted, donated ``update + apply_updates`` step. Variants are
timed round-robin in one process (the machine is shared and noisy, so only
ratios measured in the same run are meaningful) and reported as medians with
the ratio to their counterpart. From the compiled program it reports XLA's
bytes accessed per parameter, temporary and peak bytes, and the number of
fusions; and the measured optimizer-state bytes per parameter.

    python benchmarks/step_time.py            # full run (a few minutes on 2 cores)
    python benchmarks/step_time.py --quick    # smoke test (seconds)

Writes ``--out``/step_time.json and step_time.png (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import optclip
from optclip._plotting import available, pyplot, save

LR = 1e-3
AXPY = "x*a+b"


def variants():
    """name -> (transformation, counterpart name or None)."""
    ema = lambda: optax.ema(0.9, debias=False)
    return {
        "optax.adam": (optax.adam(LR), None),
        "acclip": (optclip.acclip(LR), "optax.adam"),
        "acclip(rms_scale)": (optclip.acclip(LR, rms_scale=True), "optax.adam"),
        "generalized_signsgd": (optclip.generalized_signsgd(LR), "optax.adam"),
        "optax.ema+scale": (optax.chain(ema(), optax.scale(-LR)), None),
        "optax.ema+clip_gn+scale": (
            optax.chain(ema(), optax.clip_by_global_norm(1.0), optax.scale(-LR)),
            None,
        ),
        "gclip(b1=0.9)": (optclip.gclip(LR, 1.0, b1=0.9), "optax.ema+scale"),
        "optax.ema+clip+scale": (optax.chain(ema(), optax.clip(1.0), optax.scale(-LR)), None),
        "cclip(b1=0.9)": (optclip.cclip(LR, 1.0, b1=0.9), "optax.ema+clip+scale"),
        "cclip(no clip_fraction)": (
            optclip.cclip(LR, 1.0, b1=0.9, track_clip_fraction=False),
            "optax.ema+clip+scale",
        ),
        "optax.normalize+scale": (
            optax.chain(optax.normalize_by_update_norm(1.0, eps=1.0), optax.scale(-LR)),
            None,
        ),
        "normalized_gd": (optclip.normalized_gd(LR, 1.0), "optax.normalize+scale"),
        "optax.signum": (optax.signum(LR), None),
        "signum": (optclip.generalized_signsgd(LR, b2=0.0), "optax.signum"),
        "optax.clip_gn+adam": (optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR)), None),
        "optclip.clip_gn+adam": (
            optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(LR)),
            "optax.clip_gn+adam",
        ),
        # Two parameter-sized state arrays, like Adam.
        "stochastic_ingd": (optclip.stochastic_ingd(p=1.0, q=10.0, beta=0.9), "optax.adam"),
        # The memory-bandwidth yardstick: read and write every parameter once.
        AXPY: (None, None),
    }


# Extra ratios worth reporting besides each variant's main counterpart.
EXTRA_RATIOS = [
    ("gclip(b1=0.9)", "optax.ema+clip_gn+scale"),
    ("optclip.clip_gn+adam", "optax.adam"),
    ("optax.clip_gn+adam", "optax.adam"),
]


def make_tree(n: int, leaves: int, seed: int = 0):
    sizes = [n // leaves] * leaves
    sizes[-1] += n - sum(sizes)
    keys = jax.random.split(jax.random.key(seed), leaves)
    return {
        f"p{i:04d}": jax.random.normal(k, (s,), jnp.float32)
        for i, (k, s) in enumerate(zip(keys, sizes, strict=True))
    }


def compile_step(tx, params, grads):
    def step(params, state, grads):
        if tx is None:  # the yardstick
            return jax.tree.map(lambda x: x * 0.999 + 1e-3, params), state
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params) if tx is not None else ()
    jitted = jax.jit(step, donate_argnums=(0, 1))
    compiled = jitted.lower(params, state, grads).compile()
    return jitted, compiled, state


def program_report(compiled, n: int) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    mem = compiled.memory_analysis()
    text = compiled.as_text()
    fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", text, flags=re.M))
    temp = getattr(mem, "temp_size_in_bytes", 0)
    peak = (
        getattr(mem, "argument_size_in_bytes", 0)
        + getattr(mem, "output_size_in_bytes", 0)
        - getattr(mem, "alias_size_in_bytes", 0)
        + temp
    )
    return dict(
        bytes_per_param=float(cost.get("bytes accessed", float("nan"))) / n,
        temp_bytes=int(temp),
        peak_bytes=int(peak),
        fusions=fusions,
    )


def state_bytes_per_param(state, n: int) -> float:
    return sum(x.nbytes for x in jax.tree.leaves(state) if x.size > 1) / n


def time_variants(specs, n, leaves, reps, warmup=2, inner=1):
    """Round-robin timing of every variant; returns {name: row}.

    Each sample times ``inner`` consecutive steps (more than one on an accelerator, where
    a single step is short enough for dispatch to show).
    """
    grads = make_tree(n, leaves, seed=1)
    runs = {}
    for name, (tx, _) in specs.items():
        params = make_tree(n, leaves)
        jitted, compiled, state = compile_step(tx, params, grads)
        runs[name] = dict(
            fn=jitted,
            params=params,
            state=state,
            times=[],
            report=program_report(compiled, n),
            state_bpp=state_bytes_per_param(state, n),
        )
    for r in range(warmup + reps):
        for run in runs.values():
            t0 = time.perf_counter()
            for _ in range(inner):
                run["params"], run["state"] = run["fn"](run["params"], run["state"], grads)
            jax.block_until_ready(run["params"])
            if r >= warmup:
                run["times"].append((time.perf_counter() - t0) / inner)
    rows = {}
    for name, run in runs.items():
        rows[name] = dict(
            median_ms=1e3 * statistics.median(run["times"]),
            state_bytes_per_param=run["state_bpp"],
            **run["report"],
        )
    # Achieved bandwidth: XLA's bytes accessed over the measured time, and its fraction of
    # the yardstick's (a step can be no faster than streaming its bytes once).
    for row in rows.values():
        row["gb_per_s"] = row["bytes_per_param"] * n / (row["median_ms"] * 1e6)
    if AXPY in rows:
        for row in rows.values():
            row["bandwidth_fraction"] = row["gb_per_s"] / rows[AXPY]["gb_per_s"]
    for name, (_, counterpart) in specs.items():
        if counterpart in rows:
            rows[name]["ratio"] = rows[name]["median_ms"] / rows[counterpart]["median_ms"]
            rows[name]["vs"] = counterpart
    return rows


def scaling(sizes, reps, inner=1):
    names = ["optax.adam", "acclip", "gclip(b1=0.9)", "generalized_signsgd"]
    specs = {k: v for k, v in variants().items() if k in names}
    out = {}
    for n in sizes:
        rows = time_variants(specs, n, 1, reps, inner=inner)
        out[str(n)] = {
            k: dict(median_ms=v["median_ms"], ns_per_param=1e6 * v["median_ms"] / n)
            for k, v in rows.items()
        }
    return out


SHARDED_SNIPPET = r"""
import json, jax, jax.numpy as jnp, optax, optclip
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
sharded, replicated = NamedSharding(mesh, P("model")), NamedSharding(mesh, P())
n = {n}
out = {{}}
for name, tx in [("optax.adam", optax.adam(1e-3)), ("acclip", optclip.acclip(1e-3)),
                 ("generalized_signsgd", optclip.generalized_signsgd(1e-3)),
                 ("gclip(b1=0.9)", optclip.gclip(1e-3, 1.0, b1=0.9))]:
    params = jax.device_put(jnp.ones((n,), jnp.float32), sharded)
    # State shardings follow the params: optax.tree_map_params picks the
    # parameter-shaped leaves, everything else (counts, scalars) is replicated.
    abstract = jax.eval_shape(tx.init, params)
    shardings = optax.tree_map_params(tx, lambda _: sharded, abstract,
                                      transform_non_params=lambda _: replicated)
    row = {{}}
    for how, init in [("out_shardings", jax.jit(tx.init, out_shardings=shardings)),
                      ("plain_jit", jax.jit(tx.init))]:
        big = [x for x in jax.tree.leaves(init(params)) if x.size > 1]
        per_device = sum(x.addressable_shards[0].data.nbytes for x in big)
        total = sum(x.nbytes for x in big)
        row[how] = dict(total=total, per_device=per_device, shards=total / per_device)
    out[name] = dict(state_bytes_total=row["out_shardings"]["total"],
                     state_bytes_per_device=row["out_shardings"]["per_device"],
                     shards=row["out_shardings"]["shards"],
                     shards_plain_jit_init=row["plain_jit"]["shards"])
print(json.dumps(out))
"""


def sharded_state_bytes(n: int) -> dict:
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    res = subprocess.run(
        [sys.executable, "-c", SHARDED_SNIPPET.format(n=n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_table(title, rows):
    print(f"\n{title}")
    head = (
        f"{'variant':<24}{'ms':>9}{'ratio':>8}  {'vs':<24}{'B/param':>8}"
        f"{'state B/p':>10}{'temp B':>10}{'fusions':>8}{'GB/s':>8}{'of x*a+b':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(
            f"{name:<24}{r['median_ms']:>9.2f}{ratio:>8}  {r.get('vs', ''):<24}"
            f"{r['bytes_per_param']:>8.1f}{r['state_bytes_per_param']:>10.1f}"
            f"{r['temp_bytes']:>10d}{r['fusions']:>8d}{r['gb_per_s']:>8.0f}"
            f"{r.get('bandwidth_fraction', float('nan')):>9.2f}"
        )
    for a, b in EXTRA_RATIOS:
        if a in rows and b in rows:
            print(f"  {a} / {b}: {rows[a]['median_ms'] / rows[b]['median_ms']:.2f}")


def plot(results, path):
    if not available():
        print("matplotlib not installed: no plot")
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5))
    rows = results["one_leaf"]
    names = list(rows)
    axes[0].barh(names, [rows[k]["median_ms"] for k in names], color="tab:blue")
    axes[0].set_xlabel(f"median step time (ms), N = {results['n']:.0e}, one leaf")
    axes[0].invert_yaxis()
    first_size = next(iter(results["scaling"]))
    for name in results["scaling"][first_size]:
        xs = sorted(map(int, results["scaling"]))
        axes[1].plot(
            xs, [results["scaling"][str(x)][name]["ns_per_param"] for x in xs], "o-", label=name
        )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("parameters N")
    axes[1].set_ylabel("ns per parameter")
    axes[1].legend()
    axes[1].set_title("flat = linear cost")
    return str(save(fig, path))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    ap.add_argument("--n", type=float, default=1e7, help="parameters (default 1e7)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--inner", type=int, default=1, help="steps per timed sample (use ~10 on a GPU)"
    )
    ap.add_argument("--sizes", help="comma-separated N for the scaling table (default 1e5,1e6,1e7)")
    ap.add_argument("--out", default="out/benchmarks")
    args = ap.parse_args(argv)
    n, reps = int(args.n), args.reps
    sizes = [int(float(x)) for x in (args.sizes or "1e5,1e6,1e7").split(",")]
    if args.quick:
        n, reps, sizes = 10**5, 3, [10**4, 10**5]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        device=str(jax.devices()[0].device_kind),
        jax=jax.__version__,
        optax=optax.__version__,
    )
    print(f"machine: {machine}")
    results = dict(n=n, reps=reps, machine=machine)
    results["one_leaf"] = time_variants(variants(), n, 1, reps, inner=args.inner)
    print_table(f"one leaf of {n:.0e} float32, donated, median of {reps}", results["one_leaf"])
    results["many_leaves"] = time_variants(
        variants(), n, 1000 if not args.quick else 100, reps, inner=args.inner
    )
    print_table(
        f"{1000 if not args.quick else 100} leaves totalling {n:.0e}", results["many_leaves"]
    )
    results["scaling"] = scaling(sizes, reps, args.inner)
    print("\nscaling (ns per parameter; constant means linear cost)")
    for size, rows in results["scaling"].items():
        print(
            f"  N={int(size):>9d}  "
            + "  ".join(f"{k}: {v['ns_per_param']:.2f}" for k, v in rows.items())
        )
    results["sharded"] = sharded_state_bytes(8 * (10**4 if args.quick else 10**6))
    print("\nstate bytes on 8 simulated devices, params sharded over 'model'")
    for k, v in results["sharded"].items():
        print(
            f"  {k:<22} total {v['state_bytes_total']:>10d}"
            f"  per device {v['state_bytes_per_device']:>9d}"
            f"  total/per-device {v['shards']:.1f}"
            f"  (plain jax.jit(tx.init): {v['shards_plain_jit_init']:.1f})"
        )
    (out / "step_time.json").write_text(json.dumps(results, indent=2))
    png = plot(results, out / "step_time.png")
    print(f"\nwrote {out / 'step_time.json'}" + (f" and {png}" if png else ""))
    return results


if __name__ == "__main__":
    main()
