"""Compiled memory footprint of every optimizer: what XLA allocates for one step.

For each full optimizer of optclip, the spike-robust chains and optax's references, this
compiles the jitted ``update + apply_updates`` step on a model-shaped parameter tree twice, with
params and state donated and without, and reads XLA's buffer assignment
(``jax.jit(step).lower(...).compile().memory_analysis()``). Nothing parameter-sized is
allocated: the params are ``jax.ShapeDtypeStruct``s and the state comes from ``jax.eval_shape``.

Per float32 parameter it reports, in bytes:

* **state**: the state's leaves, scalars (size 1) excluded;
* **temp**: XLA's temporary buffers of the step, donated and not donated;
* **out not aliased**: output bytes that reuse no donated input buffer (0 when donation works);

and **extra vs counterpart**: the donated temp beyond the counterpart's (optax.adam for the
Adam-like, optax.sgd with momentum for momentum methods, optax.sgd for plain GD) in
parameter-sized float32 copies.

    python benchmarks/footprint.py                # GPT-2 small at scale 0.25: 1.5-2.5 min, 2 cores
    python benchmarks/footprint.py --write-docs   # and the table in docs/performance.md

Writes ``--out``/footprint.json (this backend's entry beside the other backends' already
there), footprint.md and footprint.png (if matplotlib is installed). ``--write-docs`` replaces
this backend's columns of the table between the ``footprint`` markers of docs/performance.md
and keeps the other backends' columns found there: a CPU run and a GPU run fill one table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common
import _lmo_rows
import _model_trees
import jax
import jax.numpy as jnp
import jaxlib
import optax
from _common import ROOT, plot

import optclip

LR = 1e-3
ADAM, SGD, MOMENTUM = "optax.adam", "optax.sgd", "optax.sgd(momentum=0.9)"
DOCS = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- footprint:begin -->", "<!-- footprint:end -->"
# CompiledMemoryStats' fields kept in the JSON, per compiled step.
FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def optimizers() -> dict[str, tuple[optax.GradientTransformation, str | None]]:
    """name -> (transformation, counterpart name or None), in the table's order. The names are
    ``step_time.py``'s; ``tests/test_compiled_memory.py`` asserts the same pairs."""
    adam = lambda: optax.adam(LR)
    return {
        "acclip": (optclip.acclip(LR), ADAM),
        "acclip(rms_scale)": (optclip.acclip(LR, rms_scale=True), ADAM),
        "acclip(robust)": (optclip.acclip(LR, robust=True), ADAM),
        "cclip": (optclip.cclip(LR, 1.0), SGD),
        "clip_momentum_sgd": (optclip.clip_momentum_sgd(LR, 1.0), MOMENTUM),
        "clipped_gd": (optclip.clipped_gd(LR, 1.0), SGD),
        "gclip": (optclip.gclip(LR, 1.0), SGD),
        "gclip(b1=0.9)": (optclip.gclip(LR, 1.0, b1=0.9), MOMENTUM),
        "generalized_signsgd": (optclip.generalized_signsgd(LR), ADAM),
        "signum": (optclip.generalized_signsgd(LR, b2=0.0), MOMENTUM),
        "normalized_gd": (optclip.normalized_gd(LR, 1.0), SGD),
        "normalized_momentum_sgd": (optclip.normalized_momentum_sgd(LR), MOMENTUM),
        "spam": (optclip.spam(LR), ADAM),
        "stochastic_ingd": (optclip.stochastic_ingd(), MOMENTUM),
        "zclip+adam": (optax.chain(optclip.zclip(), adam()), ADAM),
        "adagc+adam": (optax.chain(optclip.adagc(), adam()), ADAM),
        "skip_step(adam)": (optclip.skip_step(adam()), ADAM),
        "optclip.clip_gn+adam": (optax.chain(optclip.clip_by_global_norm(1.0), adam()), ADAM),
        "grouped(acclip)": (optclip.group_small_leaves(optclip.acclip(LR)), ADAM),
        ADAM: (adam(), None),
        "optax.adamw": (optax.adamw(LR), ADAM),
        SGD: (optax.sgd(LR), None),
        MOMENTUM: (optax.sgd(LR, momentum=0.9), None),
        "optax.clip_gn+adam": (optax.chain(optax.clip_by_global_norm(1.0), adam()), ADAM),
        # docs/choosing.md's recommendation for a transformer.
        "optax.agc+adam": (optax.chain(optax.adaptive_grad_clip(0.01), adam()), ADAM),
        # Per-layer LMO steps against optax's Muon given optclip.muon's Muon/AdamW split.
        **_lmo_rows.rows(LR),
    }


def abstract(shapes: dict[str, tuple[int, ...]]) -> dict:
    """``{path: ShapeDtypeStruct}`` float32 params to trace and compile with, never allocated."""
    return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def state_bytes(tx: optax.GradientTransformation, params) -> int:
    """Bytes of ``tx``'s state leaves of more than one entry (scalars excluded)."""
    return _common.state_bytes(jax.eval_shape(tx.init, params))


def memory(tx: optax.GradientTransformation, params, donate: bool) -> dict:
    """XLA's memory analysis of the jitted ``update + apply_updates`` step, and compile time."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, params)
    t0 = time.perf_counter()
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    mem = jitted.lower(params, state, params).compile().memory_analysis()
    out = {f: int(getattr(mem, f, 0) or 0) for f in FIELDS}
    out["compile_s"] = round(time.perf_counter() - t0, 2)
    return out


def measure(specs: dict, shapes: dict[str, tuple[int, ...]], jobs: int = 2) -> dict[str, dict]:
    """Every optimizer's row on one tree. ``specs`` must hold each counterpart it names.
    ``jobs`` steps compile at a time (XLA's compiler runs outside Python's lock)."""
    params = abstract(shapes)
    n = _model_trees.size(shapes)
    work = [(name, donate) for name in specs for donate in (True, False)]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        done = pool.map(lambda w: memory(specs[w[0]][0], params, w[1]), work)
        mem = dict(zip(work, done, strict=True))
    unaliased = lambda m: m["output_size_in_bytes"] - m["alias_size_in_bytes"]
    rows = {}
    for name, (tx, counterpart) in specs.items():
        donated, plain = mem[name, True], mem[name, False]
        rows[name] = dict(
            counterpart=counterpart,
            state_bytes_per_param=state_bytes(tx, params) / n,
            temp_bytes_per_param=donated["temp_size_in_bytes"] / n,
            temp_bytes_per_param_not_donated=plain["temp_size_in_bytes"] / n,
            unaliased_output_bytes_per_param=unaliased(donated) / n,
            unaliased_output_bytes_per_param_not_donated=unaliased(plain) / n,
            donated=donated,
            not_donated=plain,
        )
    for row in rows.values():
        if row["counterpart"] is not None:
            extra = row["donated"]["temp_size_in_bytes"]
            extra -= rows[row["counterpart"]]["donated"]["temp_size_in_bytes"]
            row["extra_temp_vs_counterpart"] = extra / (4 * n)  # in float32 parameter copies
    return rows


def environment() -> dict:
    return dict(
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        optax=optax.__version__,
        optclip=optclip.__version__,
        date=datetime.date.today().isoformat(),
    )


# Reporting. Each backend has its own columns, "<label> (<backend>)"; the state's is shared.
COLUMNS = (  # (label, row key, format)
    ("temp", "temp_bytes_per_param", "{:.2f}"),
    ("temp, not donated", "temp_bytes_per_param_not_donated", "{:.2f}"),
    ("out not aliased", "unaliased_output_bytes_per_param", "{:.2f}"),
    ("extra vs counterpart", "extra_temp_vs_counterpart", "{:+.2f}"),
)
NAME, COUNTERPART, STATE = "optimizer", "counterpart", "state"


def _cells(row: dict) -> list[str]:
    # Rounded first, so that a few bytes less than the counterpart print as +0.00, not -0.00.
    return [fmt.format(round(row[key], 2) or 0.0) if key in row else "" for _, key, fmt in COLUMNS]


def print_table(result: dict) -> None:
    print(environment_line(result)[2:])
    print("bytes per parameter (state: scalars excluded); extra: parameter-sized float32 copies")
    head = f"{NAME:<26}{COUNTERPART:<25}{STATE:>6}" + "".join(
        f"{label:>{max(9, len(label) + 2)}}" for label, _, _ in COLUMNS
    )
    print(head)
    print("-" * len(head))
    for name, r in result["rows"].items():
        cells = "".join(
            f"{c:>{max(9, len(label) + 2)}}"
            for c, (label, _, _) in zip(_cells(r), COLUMNS, strict=True)
        )
        print(f"{name:<26}{r['counterpart'] or '':<25}{r['state_bytes_per_param']:>6.2f}{cells}")
    print(f"{len(result['rows'])} optimizers in {result['seconds']:.0f} s")


def environment_line(result: dict) -> str:
    env, tree = result["environment"], result["tree"]
    return (
        f"- `{env['backend']}`: {env['device']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
        f"optax {env['optax']}, {env['date']}; {tree['name']} at scale {tree['scale']}: "
        f"{tree['params']:,} float32 parameters in {tree['leaves']} leaves."
    )


def backend_of(header: str) -> str | None:
    """The backend a column belongs to (``temp (cpu)``: cpu), or None for shared columns."""
    m = re.fullmatch(r".+ \((\w+)\)", header)
    return m.group(1) if m else None


def parse_section(text: str) -> dict:
    """A generated section's table and environment lines: ``{"header": [...],
    "rows": {name: {header: cell}}, "environments": {backend: line}}``."""
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    header, rows, environments = [], {}, {}
    for line in text.splitlines():
        if line.startswith("|") and not header:
            header = split(line)
        elif line.startswith("|") and set(line) - set("|-: "):
            cells = dict(zip(header, split(line), strict=True))
            rows[cells[NAME].strip("`")] = cells
        elif m := re.match(r"- `(\w+)`:", line):
            environments[m.group(1)] = line
    return dict(header=header, rows=rows, environments=environments)


def markdown(result: dict, previous: str = "") -> str:
    """The table and environment lines: this run's backend columns, and those of every other
    backend kept from ``previous`` (an earlier generated section), cpu first."""
    backend = result["environment"]["backend"]
    old = parse_section(previous)
    backends = {backend} | {backend_of(h) for h in old["header"]} - {None}
    backends = sorted(backends, key=lambda b: (b != "cpu", b))
    columns = [f"{label} ({b})" for b in backends for label, _, _ in COLUMNS]
    header = [NAME, COUNTERPART, STATE, *columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for name, r in result["rows"].items():
        ours = dict(
            zip([f"{label} ({backend})" for label, _, _ in COLUMNS], _cells(r), strict=True)
        )
        kept = old["rows"].get(name, {})
        vs = f"`{r['counterpart']}`" if r["counterpart"] else ""
        cells = [f"`{name}`", vs, f"{r['state_bytes_per_param']:.2f}"]
        cells += [ours[c] if c in ours else kept.get(c, "") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    environments = old["environments"] | {backend: environment_line(result)}
    lines += [""] + [environments[b] for b in backends if b in environments]
    return "\n".join(lines) + "\n"


def write_docs(result: dict, path: Path = DOCS) -> None:
    """Replaces the text between the markers with :func:`markdown` of ``result``."""
    text = Path(path).read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    previous, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{BEGIN}\n{markdown(result, previous)}{END}{tail}")


def draw(result: dict, path: Path):
    rows, names = result["rows"], list(result["rows"])

    def bars(ax):
        state = [rows[k]["state_bytes_per_param"] for k in names]
        ax.barh(names, state, color="tab:gray", label="state")
        temp = [rows[k]["temp_bytes_per_param"] for k in names]
        ax.barh(names, temp, left=state, color="tab:red", label="temp (donated)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("bytes per parameter")
        env, tree = result["environment"], result["tree"]
        ax.set_title(
            f"{env['backend']} ({env['device']}), jax {env['jax']}; "
            f"{tree['name']} x {tree['scale']}, {tree['params']:,} params",
            fontsize=8,
        )
        ax.legend()

    return plot(path, bars, figsize=(7, 6))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.25, help="model widths x this (default 0.25)")
    ap.add_argument("--tree", default="GPT-2 small", choices=list(_model_trees.MODELS))
    ap.add_argument("--optimizers", help="comma-separated names (default: all), with counterparts")
    ap.add_argument("--jobs", type=int, default=2, help="steps compiled at a time (default 2)")
    ap.add_argument("--out", default="out/benchmarks")
    ap.add_argument("--write-docs", action="store_true", help="update docs/performance.md's table")
    args = ap.parse_args(argv)
    specs = optimizers()
    if args.optimizers:
        if args.write_docs:
            raise SystemExit("--write-docs writes every optimizer's row: leave out --optimizers")
        keep = set(args.optimizers.split(","))
        if unknown := keep - set(specs):
            raise SystemExit(
                f"unknown optimizers {sorted(unknown)}; choose from {', '.join(specs)}"
            )
        keep |= {specs[k][1] for k in keep} - {None}
        specs = {k: v for k, v in specs.items() if k in keep}
    shapes = _model_trees.MODELS[args.tree](args.scale)
    t0 = time.perf_counter()
    rows = measure(specs, shapes, args.jobs)
    tree = dict(name=args.tree, scale=args.scale)
    tree |= dict(params=_model_trees.size(shapes), leaves=len(shapes))
    result = dict(environment=environment(), tree=tree, rows=rows)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "footprint.json"
    backends = json.loads(path.read_text()).get("backends", {}) if path.exists() else {}
    backends[result["environment"]["backend"]] = result
    _common.write_json(path, {"backends": backends})
    (out / "footprint.md").write_text(markdown(result))
    png = draw(result, out / "footprint.png")
    print(f"wrote {path}, {out / 'footprint.md'}" + (f" and {png}" if png else ""))
    if args.write_docs:
        write_docs(result)
        print(f"updated {DOCS}")
    return result


if __name__ == "__main__":
    main()
