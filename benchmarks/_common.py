"""Code the experiments share: the transformer set-up, snapshots, loading the examples, plots.

The benchmark scripts import their siblings by name (``python benchmarks/X.py``
puts this folder first on ``sys.path``); the tests add the folder themselves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import optax

from optclip._plotting import available, pyplot, save

ROOT = Path(__file__).resolve().parents[1]


def plot(path, draw, figsize=(6, 4)):
    """Draws ``draw(ax)`` on one axis and saves it; ``None`` without matplotlib."""
    if not available():
        return None
    fig, ax = pyplot().subplots(figsize=figsize)
    draw(ax)
    return str(save(fig, path))


def state_bytes(state) -> int:
    """Bytes of a state's leaves of more than one entry (scalars excluded); arrays or
    ``jax.ShapeDtypeStruct``s alike."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if x.size > 1)


def write_json(path, rows):
    """Writes the rows of an experiment (NumPy scalars as floats)."""
    Path(path).write_text(json.dumps(rows, indent=1, default=float))


def transformer_setup(quick, over):
    from optclip.demo import charlm

    if quick:
        cfg = charlm.Config(d_model=32, heads=2, layers=1, seq=32, batch=8)
        steps, seeds, max_chars = 20, 1, 100_000
    else:
        cfg = charlm.Config(d_model=96)
        steps, seeds, max_chars = 400, 5, 1_500_000
    cfg = dataclasses.replace(
        cfg, **{k: v for k, v in over.items() if k in ("d_model", "layers") and v}
    )
    steps = over.get("steps") or steps
    seeds = list(range(over.get("seeds") or seeds))
    task = charlm.Task.make(cfg, max_chars, text=charlm.stdlib_text(max_chars))
    return charlm, task, steps, seeds


def chosen(names, over):
    """The names among ``names`` that ``--optimizers`` chose (``over["optimizers"]``), or all."""
    picked = over.get("optimizers")
    return [n for n in names if not picked or n in picked]


def window_curve(values, window):
    """Means over consecutive windows (the last partial one dropped)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v) // window
    out = v[: n * window].reshape(n, window).mean(1)
    return [float(x) if np.isfinite(x) else None for x in out]


def load_example(name):
    import importlib.util

    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"optclip_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_snapshots(loss_fn, params, tx, batches, snapshots):
    """Trains on ``batches`` (leading axis = steps); returns {step: params} at ``snapshots``."""

    @jax.jit
    def run(params, state, chunk):
        def step(carry, b):
            params, state = carry
            u, state = tx.update(jax.grad(loss_fn)(params, b), state, params)
            return (optax.apply_updates(params, u), state), None

        return jax.lax.scan(step, (params, state), chunk)[0]

    out, state, done = {}, tx.init(params), 0
    for stop in sorted(snapshots):
        if stop > done:
            chunk = jax.tree.map(lambda b, a=done, z=stop: b[a:z], batches)
            params, state = run(params, state, chunk)
            done = stop
        out[stop] = params
    return out
