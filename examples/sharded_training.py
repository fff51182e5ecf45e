"""SPMD training with an optclip optimizer, in one process or several (jax.distributed).

The parameters live on a ('data', 'model') mesh: the hidden layer is split over
'model', the batch over 'data'. ``optclip.state_shardings`` lays the optimizer
state out like the parameters and splits it over 'data' as well (ZeRO stage 1),
so each device holds 1/|data| of it. Global norms (clipping, normalized steps)
are reduced across devices and processes by XLA, so every layout trains alike.
Checkpoints are written with orbax every ``--checkpoint-every`` steps.

    python examples/sharded_training.py                    # 1 process, 8 simulated CPU devices
    python examples/sharded_training.py --processes 2      # 2 local processes x 4 devices
    python examples/sharded_training.py --processes 2 --fail-at 120

With ``--fail-at`` the last process dies at that step; the others stop with a
clear error within seconds, a restart from the last checkpoint finishes the
run, and the result is compared bit for bit with an uninterrupted run. On a
cluster, start one process per host with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (docs/multihost.md).
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from local_processes import JAX_FATAL, initialize, launch

import optclip

SIMULATED_FAILURE = 3  # exit status of the process told to die by --fail-at
LOST_PROCESS = 75  # exit status of a survivor: restart every process from the last checkpoint

OPTIMIZERS = {
    "acclip": lambda: optclip.acclip(3e-3, rms_scale=True),
    "gclip": lambda: optclip.gclip(0.05, threshold=1.0, b1=0.9),
    "generalized_signsgd": lambda: optclip.generalized_signsgd(3e-3),
    "stochastic_ingd": lambda: optclip.stochastic_ingd(key=0),
}

SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


# ---------------------------------------------------------------------------
# The model, the data and the mesh
# ---------------------------------------------------------------------------


def make_mesh(model=4):
    """A ('data', 'model') mesh over every process's devices; 'model' stays inside a process."""
    model = min(model, jax.local_device_count())
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((jax.device_count() // model, model), ("data", "model"), axis_types=auto)


def init_params(seed=0, d_in=16, hidden=64, d_out=1):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(d_in, hidden)) / np.sqrt(d_in)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.normal(size=(hidden, d_out)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(d_out, np.float32),
    }


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def batch(step, size=64, d_in=16, seed=0):
    """Step ``step``'s global batch: heavy-tailed regression noise, the same in every process."""
    w = np.random.default_rng(seed).normal(size=(d_in, 1)).astype(np.float32)
    rng = np.random.default_rng([seed, step])
    x = rng.normal(size=(size, d_in)).astype(np.float32)
    y = np.sin(x @ w) + 0.1 * rng.standard_t(1.5, size=(size, 1)).astype(np.float32)
    return x, y


def global_array(host, sharding):
    """A global array from a host value every process holds (parameters at initialization)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def process_slice(sharding, shape, axis=0):
    """The part of ``axis`` of a global array of ``shape`` that this process's devices hold."""
    index = sharding.addressable_devices_indices_map(tuple(shape)).values()
    spans = [i[axis].indices(shape[axis])[:2] for i in index]
    return slice(min(s for s, _ in spans), max(e for _, e in spans))


def shard_batch(host, sharding, axis=0):
    """This process's rows (along ``axis``) of the global batch, as one global array.

    Every process computes the whole batch here; a real loader reads only its part.
    """
    index = [slice(None)] * host.ndim
    index[axis] = process_slice(sharding, host.shape, axis)
    return jax.make_array_from_process_local_data(sharding, host[tuple(index)], host.shape)


# ---------------------------------------------------------------------------
# Training with checkpoints
# ---------------------------------------------------------------------------


def make_train_step(tx, params, mesh):
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    state_sh = optclip.state_shardings(tx, params, mesh)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    init = jax.jit(tx.init, out_shardings=state_sh)
    train = jax.jit(
        step,
        out_shardings=(param_sh, state_sh, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
    return init, train, state_sh


def checkpoint_target(params, state, state_sh):
    """What a restore needs: every leaf's shape, dtype and sharding on this run's mesh."""
    like = lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
    return {
        "params": jax.tree.map(lambda p: like(p, p.sharding), params),
        "opt_state": jax.tree.map(like, state, state_sh),
    }


def from_checkpoint(restored, state):
    """The restored params, and the restored state in the optimizer's own state types."""
    opt_state = jax.tree.unflatten(
        jax.tree.structure(state), jax.tree.leaves(restored["opt_state"])
    )
    return restored["params"], opt_state


def train(optimizer, steps, mesh, ckpt_dir, every, resume=False, fail_at=None):
    """Trains from step 0, or from the last checkpoint in ``ckpt_dir`` with ``resume``."""
    import orbax.checkpoint as ocp

    tx = OPTIMIZERS[optimizer]()
    params = {k: global_array(v, NamedSharding(mesh, SPECS[k])) for k, v in init_params().items()}
    init, step_fn, state_sh = make_train_step(tx, params, mesh)
    state = init(params)
    # Synchronous saves: the model is tiny, and a process that dies right after a save should
    # leave that checkpoint behind. Large models keep orbax's asynchronous saves.
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=2, enable_async_checkpointing=False
    )
    manager = ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options)
    start = manager.latest_step() if resume else None
    if start is not None:
        target = checkpoint_target(params, state, state_sh)
        restored = manager.restore(start, args=ocp.args.StandardRestore(target))
        params, state = from_checkpoint(restored, state)
    data_sh = NamedSharding(mesh, P("data", None))
    losses = []
    for t in range(start or 0, steps):
        if t % every == 0:  # calling save at other steps would still synchronize the processes
            manager.save(t, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
        if t == fail_at and jax.process_index() == jax.process_count() - 1:
            print(f"process {jax.process_index()}: dying at step {t} (--fail-at)", flush=True)
            os._exit(SIMULATED_FAILURE)
        x, y = batch(t)
        params, state, loss = step_fn(
            params, state, shard_batch(x, data_sh), shard_batch(y, data_sh)
        )
        losses.append(float(loss))  # waits for the step, so a lost peer is noticed at this step
    manager.wait_until_finished()
    manager.close()
    return params, state, state_sh, losses, start or 0


def memory_report(params, state, state_sh, tx, mesh):
    """Bytes per device of the parameters and of the state under three layouts."""

    def per_device(tree, shardings):
        return sum(
            int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize
            for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True)
        )

    follow = optclip.state_shardings(tx, params, mesh, data_axis=None)
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), state_sh)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    measured = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
    return (
        f"params: {sum(x.nbytes for x in jax.tree.leaves(params))} bytes, "
        f"{per_device(params, jax.tree.map(lambda p: p.sharding, params))} per device\n"
        f"optimizer state: {total} bytes; per device {measured} with optclip.state_shardings "
        f"(split over 'data' x {mesh.shape['data']}), {per_device(state, follow)} if it only "
        f"followed the params, {per_device(state, replicated)} replicated"
    )


def host_copy(tree):
    """Every leaf as a full NumPy array in every process."""
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )


# ---------------------------------------------------------------------------
# Entry points: one process of a job, the local launcher, and one process alone
# ---------------------------------------------------------------------------


def run_process(args):
    """One process of a multi-process job (started by ``launch`` or by a cluster)."""
    initialize(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
    rank = jax.process_index()
    mesh = make_mesh()
    print(
        f"process {rank} of {jax.process_count()}: {jax.local_device_count()} local devices "
        f"of {jax.device_count()}; mesh {dict(mesh.shape)}",
        flush=True,
    )
    try:
        params, state, state_sh, losses, start = train(
            args.optimizer,
            args.steps,
            mesh,
            args.ckpt_dir,
            args.checkpoint_every,
            resume=args.resume,
            fail_at=args.fail_at,
        )
        final = host_copy(params) if args.out else None  # a collective: every process joins
    except Exception as err:  # a collective or a barrier whose peer is gone
        done = [int(p.name) for p in Path(args.ckpt_dir).glob("*") if p.name.isdigit()]
        print(
            f"process {rank}: lost contact with the other processes "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). The last checkpoint "
            f"is step {max(done, default=None)} in {args.ckpt_dir}: restart all "
            f"{args.num_processes} processes with --resume.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(LOST_PROCESS)  # skip the shutdown barrier, which would wait for the dead peer
    if rank == 0:
        print(memory_report(params, state, state_sh, OPTIMIZERS[args.optimizer](), mesh))
        print(f"steps {start}..{args.steps}: loss first {losses[0]:.4f}, last {losses[-1]:.4f}")
        if args.out:
            np.savez(args.out, **final)
    return 0


def run_job(args, extra=(), timeout=300.0):
    """Launches ``args.processes`` local processes of this script; prints their output."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--optimizer",
        args.optimizer,
        "--steps",
        str(args.steps),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--heartbeat-timeout",
        str(args.heartbeat_timeout),
        *extra,
    ]
    devices = max(1, 8 // args.processes)
    results = launch(command, args.processes, devices, timeout=timeout)
    for i, (status, output, seconds) in enumerate(results):
        for line in output.splitlines():
            if line.startswith(("process", "params", "optimizer", "steps")):
                print(f"  [{i}] {line}")
            elif JAX_FATAL in line:  # the coordination service ended this process
                print(f"  [{i}] JAX: {JAX_FATAL}{line.split(JAX_FATAL)[1].split(';')[0]}")
        print(
            f"  [{i}] exit status {status} after {seconds:.1f} s"
            if seconds is not None
            else f"  [{i}] killed (no exit within the time limit)"
        )
    return results


def launch_and_report(args):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(
            f"{args.processes} processes x {max(1, 8 // args.processes)} CPU devices, "
            f"coordinator on 127.0.0.1, optimizer {args.optimizer}"
        )
        if args.fail_at is None:
            results = run_job(args, ["--ckpt-dir", str(tmp / "ckpt")])
            return {"job": results}
        full_out, resumed_out = tmp / "full.npz", tmp / "resumed.npz"
        print(f"1. the last process dies at step {args.fail_at}:")
        failed = run_job(args, ["--ckpt-dir", str(tmp / "ckpt"), "--fail-at", str(args.fail_at)])
        dead = failed[-1][2] or 0.0
        survivors = [s for _, _, s in failed[:-1]]
        if all(s is not None for s in survivors):
            print(f"   the survivors exited {max(survivors) - dead:.1f} s after the loss")
        print("2. restart every process from the last checkpoint (--resume):")
        resumed = run_job(
            args, ["--ckpt-dir", str(tmp / "ckpt"), "--resume", "--out", str(resumed_out)]
        )
        print("3. an uninterrupted run, for comparison:")
        full = run_job(args, ["--ckpt-dir", str(tmp / "ckpt_full"), "--out", str(full_out)])
        same = None
        if full_out.exists() and resumed_out.exists():
            a, b = np.load(full_out), np.load(resumed_out)
            same = all(np.array_equal(a[k], b[k]) for k in a.files)
        print(f"resumed run equals the uninterrupted run bit for bit: {same}")
        return {"failed": failed, "resumed": resumed, "full": full, "same": same}


def run_alone(args):
    """One process, every local device: train, then resume from the mid-way checkpoint."""
    mesh = make_mesh()
    print(f"{jax.device_count()} devices; mesh {dict(mesh.shape)}; optimizer {args.optimizer}")
    with tempfile.TemporaryDirectory() as tmp:
        every = args.steps // 2
        params, state, state_sh, losses, _ = train(args.optimizer, args.steps, mesh, tmp, every)
        w1 = params["w1"]
        print(
            f"w1 {w1.shape} sharding {w1.sharding.spec}, "
            f"per-device shard {w1.addressable_shards[0].data.shape}"
        )
        print(memory_report(params, state, state_sh, OPTIMIZERS[args.optimizer](), mesh))
        print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
        resumed, _, _, _, start = train(args.optimizer, args.steps, mesh, tmp, every, resume=True)
    same = all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed), strict=True)
    )
    print(f"restored the step-{start} checkpoint and resumed: bitwise identical = {same}")
    return losses, same


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--optimizer",
        default="acclip",
        choices=list(OPTIMIZERS),
        help="the optclip optimizer to train with",
    )
    ap.add_argument("--steps", type=int, default=200, help="training steps")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="local processes to launch (8 CPU devices shared among them)",
    )
    ap.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        help="steps between orbax checkpoints (multi-process runs)",
    )
    ap.add_argument(
        "--fail-at",
        type=int,
        default=None,
        help="the last process dies at this step; then restart and compare",
    )
    ap.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=10,
        help="seconds without a heartbeat before a process counts as lost",
    )
    # Set by the launcher (or by a cluster's job script) for each process of a job.
    ap.add_argument("--process-id", type=int, default=None, help="this process's index in the job")
    ap.add_argument("--num-processes", type=int, default=1, help="processes in the job")
    ap.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordinator")
    ap.add_argument("--ckpt-dir", default=None, help="checkpoint folder shared by the processes")
    ap.add_argument("--resume", action="store_true", help="start from the last checkpoint")
    ap.add_argument("--out", default=None, help="process 0 saves the final params here (.npz)")
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.process_id is not None:
        return run_process(args)
    if args.processes > 1:
        return launch_and_report(args)
    return run_alone(args)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
