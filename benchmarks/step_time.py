"""Optimizer step time on model-shaped parameter trees: optclip against optax (and PyTorch).

Each variant is a jitted, donated ``update + apply_updates`` step, timed two
ways (docs/performance.md):

* **device time**: ``--inner`` steps inside one jitted ``lax.fori_loop``, one
  dispatch for all of them, per step. This is the optimizer's own cost, what it
  adds to a training step whose update is jitted with the forward and backward
  passes, and what the ratios and targets use.
* **per call**: ``--inner`` separate jitted calls, per step. On an accelerator
  this adds the host's dispatch of every argument buffer (params, state and
  gradient: about 7 per leaf for Adam), which a many-leaf tree pays per call.

``--loop auto`` (the default) times the loop on accelerators only. XLA:CPU runs the
fusions inside a loop on fewer threads, so there the loop would time the loop
(docs/performance.md, first section, has the measurement); a CPU has no device queue for
the two numbers to differ by, and XLA:CPU takes tens of seconds to compile a loop over a
148-leaf step. Rows timed without the loop report the per-call time as device time and say
so (``device_from``).

Every variant first takes 104 untimed steps (``SETTLE_STEPS``), so that each is timed in the
regime a training run spends its steps in: SPAM's clip is off for its first 20 steps, ZClip and
AdaGC warm up for 25 and 100, and such a step runs another program than the steps after it.
Variants are timed round-robin in one process (the machine is shared and noisy, so only ratios
measured in the same run are meaningful) and reported as medians with the ratio to their
counterpart. The trees are one leaf (the bandwidth
reference) and the parameter layouts of GPT-2 small, ResNet-50 and ViT-B/16
(``_model_trees.py``), widths multiplied by ``--scale``. When torch is
importable and a CUDA device is present, the same run times PyTorch's fused
Adam on the same shapes. From the compiled program it reports XLA's bytes
accessed per parameter, temporary bytes and fusions; and the achieved bandwidth
as a fraction of a measured device copy (a donated ``x * a + b`` on one leaf
of the same size).

    python benchmarks/step_time.py --scale 0.25   # 2 CPU cores: about 10 minutes
    python benchmarks/step_time.py --inner 10     # a GPU, full-size trees
    python benchmarks/step_time.py --quick        # smoke test (seconds)

Writes ``--out``/step_time.json and step_time.png (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import _common
import _lmo_rows
import _model_trees
import _step_report
import _torch_step
import jax
import optax

import optclip

LR = 1e-3
AXPY = _step_report.AXPY
SELECT = " [select]"  # a variant traced with OPTCLIP_GLOBAL_NORM=select
TORCH_ADAM, TORCH_CLIP_ADAM = _torch_step.ADAM, _torch_step.CLIP_ADAM


def variants():
    """name -> (transformation, counterpart name or None)."""
    ema = lambda: optax.ema(0.9, debias=False)
    grouped = optclip.group_small_leaves
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
        "gclip(b1=0.9)": (optclip.gclip(LR, 1.0, b1=0.9), "optax.ema+clip_gn+scale"),
        "optax.ema+clip+scale": (optax.chain(ema(), optax.clip(1.0), optax.scale(-LR)), None),
        "cclip(b1=0.9)": (optclip.cclip(LR, 1.0, b1=0.9), "optax.ema+clip+scale"),
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
        # The global norm without control flow (OPTCLIP_GLOBAL_NORM=select), the accelerators'
        # form under `auto`.
        f"optclip.clip_gn+adam{SELECT}": (
            optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(LR)),
            "optax.clip_gn+adam",
        ),
        f"gclip(b1=0.9){SELECT}": (optclip.gclip(LR, 1.0, b1=0.9), "optax.ema+clip_gn+scale"),
        # Two parameter-sized state arrays, like Adam.
        "stochastic_ingd": (optclip.stochastic_ingd(p=1.0, q=10.0, beta=0.9), "optax.adam"),
        # Layouts: every leaf concatenated every step (optax) against small leaves packed.
        "optax.flatten(adam)": (optax.flatten(optax.adam(LR)), "optax.adam"),
        "grouped(adam)": (grouped(optax.adam(LR)), "optax.adam"),
        "grouped(acclip)": (grouped(optclip.acclip(LR)), "optax.adam"),
        "grouped(generalized_signsgd)": (grouped(optclip.generalized_signsgd(LR)), "optax.adam"),
        # Spike-robust clipping in front of (or around) Adam, against optax's fixed clip.
        "zclip+adam": (optax.chain(optclip.zclip(), optax.adam(LR)), "optax.clip_gn+adam"),
        "adagc+adam": (optax.chain(optclip.adagc(), optax.adam(LR)), "optax.clip_gn+adam"),
        "skip_step(adam)": (optclip.skip_step(optax.adam(LR)), "optax.clip_gn+adam"),
        "spam": (optclip.spam(LR), "optax.adam"),
        "acclip(robust)": (optclip.acclip(LR, robust=True), "optax.adam"),
        # Per-layer LMO steps against optax's Muon given optclip.muon's Muon/AdamW split.
        **_lmo_rows.rows(LR),
        # The memory-bandwidth yardstick: read and write every parameter once.
        AXPY: (None, None),
    }


# Further ratios reported besides each variant's counterpart.
EXTRA_RATIOS = [
    ("gclip(b1=0.9)", "optax.ema+scale"),
    ("optclip.clip_gn+adam", "optax.adam"),
    ("optax.clip_gn+adam", "optax.adam"),
    ("grouped(adam)", "optax.flatten(adam)"),
    ("optax.adam", TORCH_ADAM),
    ("acclip", TORCH_ADAM),
    ("generalized_signsgd", TORCH_ADAM),
    ("grouped(acclip)", TORCH_ADAM),
    ("optclip.clip_gn+adam", TORCH_CLIP_ADAM),
]

# The bars, as (variant, reference, largest ratio). acclip(rms_scale) moves 36 bytes
# per parameter where adam moves 28: its bar is 5% above that floor.
TARGETS = [
    ("optclip.clip_gn+adam", "optax.clip_gn+adam", 1.00),
    (f"optclip.clip_gn+adam{SELECT}", "optax.clip_gn+adam", 1.00),
    (f"optclip.clip_gn+adam{SELECT}", "optax.adam", 1.20),
    ("gclip(b1=0.9)", "optax.ema+clip_gn+scale", 1.05),
    (f"gclip(b1=0.9){SELECT}", "optax.ema+clip_gn+scale", 1.05),
    ("acclip", "optax.adam", 1.05),
    ("generalized_signsgd", "optax.adam", 1.05),
    ("acclip(rms_scale)", "optax.adam", 1.05 * 36 / 28),
    ("stochastic_ingd", "optax.adam", 1.15),
    ("acclip", TORCH_ADAM, 1.00),
    ("generalized_signsgd", TORCH_ADAM, 1.00),
    ("grouped(acclip)", TORCH_ADAM, 1.00),
    ("grouped(generalized_signsgd)", TORCH_ADAM, 1.00),
    ("zclip+adam", "optax.clip_gn+adam", 1.05),
    ("skip_step(adam)", "optax.clip_gn+adam", 1.05),
    ("adagc+adam", "optax.clip_gn+adam", 1.05),
    ("spam", "optax.adam", 1.15),
    ("muon", _lmo_rows.CONTRIB, 1.10),
    ("scion", _lmo_rows.CONTRIB, 1.10),
    ("gluon", _lmo_rows.CONTRIB, 1.10),
]


# The quick mode's subset on the model trees: per-leaf and packed state, against adam. Each
# many-leaf program takes seconds to compile on CPU; every variant runs on the quick one leaf.
QUICK_MODEL_VARIANTS = ("optax.adam", "acclip", "grouped(acclip)")


def chosen(names: str | None) -> dict:
    """The variants named (all if ``None``), their counterparts, and the bandwidth yardstick."""
    every = variants()
    if names is None:
        return every
    keep = {AXPY, *names.split(",")}
    unknown = keep - set(every)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(every)}")
    keep |= {every[k][1] for k in keep if every[k][1] in every}
    return {k: v for k, v in every.items() if k in keep}


def trees(scale: float, n: int, names) -> dict[str, dict[str, tuple[int, ...]]]:
    """Tree name -> {leaf path: shape}: one leaf of ``n`` and the model layouts at ``scale``."""
    out = {}
    for name in names:
        if name == "one leaf":
            out[f"one leaf of {n:.0e}"] = {"x": (n,)}
        else:
            out[name] = _model_trees.MODELS[name](scale)
    return out


@contextlib.contextmanager
def norm_form(name: str):
    """Traces a ``[select]`` variant with ``OPTCLIP_GLOBAL_NORM=select``, others as configured."""
    if not name.endswith(SELECT):
        yield
        return
    before = os.environ.get(optclip._numerics.NORM_FORM_VARIABLE)
    os.environ[optclip._numerics.NORM_FORM_VARIABLE] = "select"
    try:
        yield
    finally:
        if before is None:
            del os.environ[optclip._numerics.NORM_FORM_VARIABLE]
        else:
            os.environ[optclip._numerics.NORM_FORM_VARIABLE] = before


def compile_step(tx, params, grads, inner: int = 1, loop: bool = True):
    """A donated step, and (if ``loop``) ``inner`` of them inside one jitted ``fori_loop``."""

    def step(params, state, grads):
        if tx is None:  # the yardstick
            return jax.tree.map(lambda x: x * 0.999 + 1e-3, params), state
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def loop_fn(params, state, grads):
        body = lambda _, carry: step(*carry, grads)
        return jax.lax.fori_loop(0, inner, body, (params, state))

    state = tx.init(params) if tx is not None else ()
    jitted = jax.jit(step, donate_argnums=(0, 1))
    compiled = jitted.lower(params, state, grads).compile()
    looped = jax.jit(loop_fn, donate_argnums=(0, 1)) if loop else None
    if looped is not None:
        looped.lower(params, state, grads).compile()
    return jitted, looped, compiled, state


def program_report(compiled, n: int) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    mem = compiled.memory_analysis()
    text = compiled.as_text()
    fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", text, flags=re.M))
    temp = getattr(mem, "temp_size_in_bytes", 0)
    return dict(
        bytes_per_param=float(cost.get("bytes accessed", float("nan"))) / n,
        temp_bytes=int(temp),
        fusions=fusions,
        conditionals=len(re.findall(r" conditional\(", text)),
    )


def state_bytes_per_param(state, n: int) -> float:
    return _common.state_bytes(state) / n


def use_loop(mode: str) -> bool:
    """Whether to time the jitted loop (``--loop``): ``auto`` times it on accelerators only, since
    XLA:CPU runs a loop's fusions on fewer threads (module docstring)."""
    if mode != "auto":
        return mode == "always"
    return jax.default_backend() != "cpu"


# Untimed steps that take every state past its start, where a step may run another program
# than the steps after it: SPAM clips from its 20th step (its spike-free steps), ZClip from its
# 26th and AdaGC from its 101st (their warm-ups).
SETTLE_STEPS = 104


def time_variants(specs, shapes, reps, warmup=2, inner=1, loop="auto"):
    """Round-robin timing of every variant on one tree; returns {name: row}.

    Each sample times ``inner`` steps both ways: inside one jitted loop (``device_ms``) and as
    ``inner`` separate calls (``call_ms``); both are per step. Without the loop (``use_loop``),
    ``device_ms`` is the per-call time and ``device_from`` says so.
    """
    looping = use_loop(loop)
    n = _model_trees.size(shapes)
    grads = _model_trees.materialize(shapes, seed=1)
    runs = {}
    for name, (tx, _) in specs.items():
        params = _model_trees.materialize(shapes)
        with norm_form(name):
            jitted, looped, compiled, state = compile_step(tx, params, grads, inner, looping)
        runs[name] = dict(
            step=jitted,
            loop=looped,
            params=params,
            state=state,
            device=[],
            call=[],
            report=program_report(compiled, n),
            state_bpp=state_bytes_per_param(state, n),
        )
    for run in runs.values():
        for _ in range(SETTLE_STEPS):
            run["params"], run["state"] = run["step"](run["params"], run["state"], grads)
        jax.block_until_ready(run["params"])
    for r in range(warmup + reps):
        for run in runs.values():
            t0 = time.perf_counter()
            if looping:
                run["params"], run["state"] = run["loop"](run["params"], run["state"], grads)
                jax.block_until_ready(run["params"])
            t1 = time.perf_counter()
            for _ in range(inner):
                run["params"], run["state"] = run["step"](run["params"], run["state"], grads)
            jax.block_until_ready(run["params"])
            if r >= warmup:
                run["call"].append((time.perf_counter() - t1) / inner)
                run["device"].append((t1 - t0) / inner if looping else run["call"][-1])
    return {
        name: dict(
            device_ms=1e3 * statistics.median(run["device"]),
            call_ms=1e3 * statistics.median(run["call"]),
            device_from="loop" if looping else "calls",
            state_bytes_per_param=run["state_bpp"],
            **run["report"],
        )
        for name, run in runs.items()
    }


def copy_bandwidth(n: int, reps: int, inner: int, loop: str) -> float:
    """GB/s of a donated ``x * a + b`` on one leaf of ``n`` float32 (8 bytes per entry)."""
    row = time_variants({AXPY: (None, None)}, {"x": (n,)}, reps, inner=inner, loop=loop)[AXPY]
    return 8 * n / (row["device_ms"] * 1e6)


def measure_tree(specs, shapes, reps, inner, torch_device, loop="auto") -> dict:
    """Every variant (and PyTorch's, when available) on one tree, with ratios and bandwidth."""
    n = _model_trees.size(shapes)
    rows = time_variants(specs, shapes, reps, inner=inner, loop=loop)
    if torch_device and _torch_step.available(torch_device):
        rows |= _torch_step.time_torch(shapes, reps, inner, torch_device)
    copy = copy_bandwidth(n, reps, inner, loop)
    for name, row in rows.items():
        if "bytes_per_param" in row:
            # The bytes a step cannot avoid: read and write the state and the params, read the
            # gradient (x*a+b: read and write x). XLA's own count includes second passes and,
            # for packed layouts, counts every slice of a buffer as a read of all of it.
            floor = 8.0 if name == AXPY else 2 * row["state_bytes_per_param"] + 12
            row["floor_bytes_per_param"] = floor
            row["gb_per_s"] = floor * n / (row["device_ms"] * 1e6)
            row["of_copy"] = row["gb_per_s"] / copy
    for name, (_, counterpart) in specs.items():
        if counterpart in rows:
            rows[name]["ratio"] = rows[name]["device_ms"] / rows[counterpart]["device_ms"]
            rows[name]["call_ratio"] = rows[name]["call_ms"] / rows[counterpart]["call_ms"]
            rows[name]["vs"] = counterpart
    # Device time against device time (PyTorch's: ``inner`` eager steps in a row).
    ratios = {
        f"{a} / {b}": rows[a]["device_ms"] / rows[b]["device_ms"]
        for a, b in EXTRA_RATIOS + [t[:2] for t in TARGETS]
        if a in rows and b in rows
    }
    targets = [
        dict(variant=a, vs=b, ratio=r, bar=bar, met=r <= bar)
        for a, b, bar in TARGETS
        if (r := ratios.get(f"{a} / {b}")) is not None
    ]
    return dict(
        leaves=len(shapes), params=n, copy_gb_per_s=copy, rows=rows, ratios=ratios, targets=targets
    )


def scaling(sizes, reps, inner=1):
    names = ["optax.adam", "acclip", "gclip(b1=0.9)", "generalized_signsgd"]
    specs = {k: v for k, v in variants().items() if k in names}
    out = {}
    for n in sizes:
        rows = time_variants(specs, {"x": (n,)}, reps, inner=inner)
        out[str(n)] = {
            k: dict(device_ms=v["device_ms"], ns_per_param=1e6 * v["device_ms"] / n)
            for k, v in rows.items()
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    ap.add_argument("--scale", type=float, default=1.0, help="model widths x this (default 1)")
    ap.add_argument("--n", type=float, default=1e7, help="parameters of the one-leaf tree")
    ap.add_argument("--trees", default="one leaf," + ",".join(_model_trees.MODELS))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--inner",
        type=int,
        default=2,
        help="steps per timed sample: the jitted loop's length and the calls in a row "
        "(use ~10 on a GPU)",
    )
    ap.add_argument(
        "--loop",
        choices=["auto", "always", "never"],
        default="auto",
        help="time steps inside one jitted loop: auto = on accelerators only",
    )
    ap.add_argument("--sizes", help="comma-separated N for the scaling table (default 1e5,1e6,1e7)")
    ap.add_argument("--torch-device", default="cuda", help="'cuda', 'cpu', or '' for none")
    ap.add_argument(
        "--variants",
        help="comma-separated variants to time, with their counterparts (default: all)",
    )
    ap.add_argument("--out", default="out/benchmarks")
    args = ap.parse_args(argv)
    n, reps, scale, tree_names = int(args.n), args.reps, args.scale, args.trees.split(",")
    sizes = [int(float(x)) for x in (args.sizes or "1e5,1e6,1e7").split(",")]
    if args.quick:
        n, reps, scale, sizes = 10**5, 2, 0.05, []
        tree_names = ["one leaf", "GPT-2 small"]
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
    results = dict(n=n, reps=reps, inner=args.inner, scale=scale, machine=machine, trees={})
    for name, shapes in trees(scale, n, tree_names).items():
        specs = chosen(args.variants)
        if args.quick and len(shapes) > 1:  # compiling many-leaf programs dominates
            specs = {k: v for k, v in specs.items() if k in QUICK_MODEL_VARIANTS}
        result = measure_tree(specs, shapes, reps, args.inner, args.torch_device, args.loop)
        results["trees"][name] = result
        _step_report.print_tree(
            f"{name}, donated, median of {reps}, {args.inner} step(s) a sample", result
        )
    results["scaling"] = scaling(sizes, reps, args.inner)
    if sizes:
        print("\nscaling (ns per parameter, one leaf; constant means linear cost)")
    for size, rows in results["scaling"].items():
        print(
            f"  N={int(size):>9d}  "
            + "  ".join(f"{k}: {v['ns_per_param']:.2f}" for k, v in rows.items())
        )
    (out / "step_time.json").write_text(json.dumps(results, indent=2))
    png = _step_report.plot(results, out / "step_time.png")
    print(f"\nwrote {out / 'step_time.json'}" + (f" and {png}" if png else ""))
    return results


if __name__ == "__main__":
    main()
