"""One process of the multi-process tests (tests/test_multiprocess.py).

Started by the examples' launcher (``examples/local_processes.py``), alone or
as one of several jax.distributed processes. For every optimizer it trains the
example's MLP a few steps on a global ('data', 'model') mesh with the batch split
over 'data', in three layouts:

* ``follow``: parameters split over both axes, so across the processes too
  (FSDP with tensor parallelism), state following them;
* ``replicated``: parameters and state replicated;
* ``zero``: parameters replicated, state from ``optclip.state_shardings``.

It writes this process's copy of every final parameter and state leaf, and the
state's bytes on one device, to ``--out``. ``--save-ckpt`` also writes an orbax
checkpoint after ``SPLIT`` steps (``follow`` layout); ``--resume`` restores one
onto this run's mesh and trains the remaining steps instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import jax  # noqa: E402
import local_processes  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import sharded_training as example  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optclip  # noqa: E402
from tests.conftest import CASES, Case  # noqa: E402

ALL = [*CASES, Case("stochastic_ingd", optclip.stochastic_ingd, dict(key=0), "p")]
CKPT_CASES = ("acclip_rms", "gclip_momentum", "stochastic_ingd")
ZERO_CASES = CKPT_CASES
STEPS, SPLIT = 4, 2
# Every parameter split over 'data', which spans the processes: each process
# holds part of each parameter, and every norm is reduced across processes.
SPECS = {
    "w1": P("data", "model"),
    "b1": P(("model", "data")),
    "w2": P(("data", "model"), None),
    "b2": P(),
}
LAYOUTS = ("follow", "replicated", "zero")


def _mesh(shape):
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, ("data", "model"), axis_types=auto)


def _copy(x):
    """This process's copy of a global array (its own shards where they cover it)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    out = np.zeros(x.shape, x.dtype)
    seen = np.zeros(x.shape, bool)
    for shard in x.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
        seen[shard.index] = True
    if seen.all():
        return out
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _record(out, prefix, tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = _copy(leaf)


def _setup(case, mesh, layout):
    """The optimizer, its initial params and state in ``layout``, and a jitted ``run``."""
    tx = case.make()
    host = example.init_params()
    specs = SPECS if layout == "follow" else {}
    params = {
        k: example.global_array(v, NamedSharding(mesh, specs.get(k, P()))) for k, v in host.items()
    }
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    if layout == "zero":
        state_sh = optclip.state_shardings(tx, params, mesh)
    elif layout == "follow":
        state_sh = optclip.state_shardings(tx, params, mesh, data_axis=None)
    else:
        state_sh = jax.tree.map(lambda _: NamedSharding(mesh, P()), jax.eval_shape(tx.init, params))

    def run(params, state, xs, ys):
        # The steps in one scanned program: one compilation per optimizer and layout.
        def step(carry, batch):
            params, state = carry
            grads = jax.grad(example.loss_fn)(params, *batch)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, state), (xs, ys))[0]

    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    return params, state, state_sh, jax.jit(run, out_shardings=(param_sh, state_sh))


def _batches(mesh, first, last):
    """Steps ``first..last-1``'s batches, stacked, each split over 'data'."""
    data = NamedSharding(mesh, P(None, "data", None))
    xs, ys = zip(*(example.batch(t) for t in range(first, last)), strict=True)
    return (
        example.shard_batch(np.stack(xs), data, axis=1),
        example.shard_batch(np.stack(ys), data, axis=1),
    )


def _resume(case, mesh, checkpointer, folder):
    params, state, state_sh, run = _setup(case, mesh, "follow")
    target = example.checkpoint_target(params, state, state_sh)
    restored = checkpointer.restore(Path(folder) / case.name, target)
    return run(*example.from_checkpoint(restored, state), *_batches(mesh, SPLIT, STEPS))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mesh", default="2x4", help="the training mesh, data x model")
    ap.add_argument("--save-ckpt", default=None, help="write checkpoints after SPLIT steps here")
    ap.add_argument("--resume", default=None, help="finish the checkpointed runs in this folder")
    ap.add_argument("--resume-mesh", default="4x2", help="the mesh to restore them onto")
    ap.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--process-id", type=int, default=None)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--coordinator", default=None)
    args = ap.parse_args(argv)
    if args.num_processes > 1:
        local_processes.initialize(args.coordinator, args.num_processes, args.process_id)
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    out: dict[str, np.ndarray] = {}
    mesh = _mesh(tuple(int(n) for n in args.mesh.split("x")))
    for case in ALL if args.train else ():
        for layout in LAYOUTS if case.name in ZERO_CASES else ("follow",):
            params, state, _, run = _setup(case, mesh, layout)
            if layout == "follow":
                seen = np.zeros(params["w1"].shape, bool)
                for shard in params["w1"].addressable_shards:
                    seen[shard.index] = True
                out["w1_local_fraction"] = np.array([seen.mean()])
            out[f"{case.name}/{layout}/state_bytes_per_device"] = np.array(
                [sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))]
            )
            out[f"{case.name}/{layout}/state_bytes"] = np.array(
                [sum(x.nbytes for x in jax.tree.leaves(state))]
            )
            if args.save_ckpt and layout == "follow" and case.name in CKPT_CASES:
                params, state = run(params, state, *_batches(mesh, 0, SPLIT))
                checkpointer.save(
                    Path(args.save_ckpt) / case.name, {"params": params, "opt_state": state}
                )
                checkpointer.wait_until_finished()
                params, state = run(params, state, *_batches(mesh, SPLIT, STEPS))
            else:
                params, state = run(params, state, *_batches(mesh, 0, STEPS))
            _record(out, f"{case.name}/{layout}", (params, state))
    if args.resume:
        resume_mesh = _mesh(tuple(int(n) for n in args.resume_mesh.split("x")))
        for case in ALL:
            if case.name in CKPT_CASES:
                _record(
                    out,
                    f"{case.name}/resumed",
                    _resume(case, resume_mesh, checkpointer, args.resume),
                )
    np.savez(Path(args.out) / f"p{jax.process_index()}.npz", **out)
    print(f"process {jax.process_index()}: wrote {len(out)} arrays", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
