"""SPMD training with an optclip optimizer: params sharded over a ('data', 'model') mesh.

The optimizer state follows the parameters' shardings: its shardings are built
with ``optax.tree_map_params`` from the params' and passed as ``out_shardings``
to a jitted, donated train step (what ``pjit`` used to do). The batch is split
over 'data'; the hidden layer's weights over 'model'. Global norms (clipping,
normalized steps) are reduced across shards by XLA, so the sharded run equals
the single-device one. Mid-way it saves a checkpoint with orbax, restores it
into abstract (sharded) targets and continues, checking the resumed run is
bitwise identical to the uninterrupted one.

    python examples/sharded_training.py                 # 8 simulated CPU devices
    python examples/sharded_training.py --optimizer gclip

On a real multi-device machine drop the XLA flag; on several hosts call
``jax.distributed.initialize()`` first (see docs/multihost.md).
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optclip

OPTIMIZERS = {
    "acclip": lambda: optclip.acclip(3e-3, rms_scale=True),
    "gclip": lambda: optclip.gclip(0.05, threshold=1.0, b1=0.9),
    "generalized_signsgd": lambda: optclip.generalized_signsgd(3e-3),
    "stochastic_ingd": lambda: optclip.stochastic_ingd(key=0),
}

SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


def init_params(key, d_in=16, hidden=64, d_out=1):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, d_out)) / np.sqrt(hidden),
        "b2": jnp.zeros(d_out),
    }


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def make_train_step(tx, params, mesh):
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    abstract_state = jax.eval_shape(tx.init, params)
    state_sh = optax.tree_map_params(
        tx,
        lambda _, p: p.sharding,
        abstract_state,
        params,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
    )

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


def batches(steps, batch, d_in=16, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_in, 1)).astype(np.float32)
    for _ in range(steps):
        x = rng.normal(size=(batch, d_in)).astype(np.float32)
        y = np.sin(x @ w) + 0.1 * rng.standard_t(1.5, size=(batch, 1)).astype(np.float32)
        yield x, y


def run(optimizer="acclip", steps=200, batch=64, mesh_shape=(2, 4), checkpoint_at=None):
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types=auto)
    tx = OPTIMIZERS[optimizer]()
    params = jax.device_put(
        init_params(jax.random.key(0)), {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
    )
    init, train, state_sh = make_train_step(tx, params, mesh)
    state = init(params)
    data_sh = NamedSharding(mesh, P("data", None))
    losses = []
    for i, (x, y) in enumerate(batches(steps, batch)):
        if checkpoint_at is not None and i == checkpoint_at:
            params, state = save_and_restore(params, state, state_sh)
        x, y = jax.device_put(x, data_sh), jax.device_put(y, data_sh)
        params, state, loss = train(params, state, x, y)
        losses.append(float(loss))
    return params, state, losses


def save_and_restore(params, state, state_sh):
    import orbax.checkpoint as ocp

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(Path(tmp) / "step", {"params": params, "opt_state": state})
        ckpt.wait_until_finished()
        target = {
            "params": jax.tree.map(
                lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
            ),
            "opt_state": jax.tree.map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, state_sh
            ),
        }
        restored = ckpt.restore(Path(tmp) / "step", target)
    opt_state = jax.tree.unflatten(
        jax.tree.structure(state), jax.tree.leaves(restored["opt_state"])
    )
    return restored["params"], opt_state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="acclip", choices=list(OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"{len(jax.devices())} devices; mesh (data=2, model=4); optimizer {args.optimizer}")
    params, state, losses = run(args.optimizer, args.steps)
    w1 = params["w1"]
    shard = w1.addressable_shards[0].data.shape
    print(f"w1 {w1.shape} sharding {w1.sharding.spec}, per-device shard {shard}")
    leaves = [x for x in jax.tree.leaves(state) if x.ndim >= 1 and x.size > 64]
    total = sum(x.nbytes for x in leaves)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
    print(f"optimizer state: {total} bytes in total, {per_device} bytes on each device")
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    resumed_params, _, _ = run(args.optimizer, args.steps, checkpoint_at=args.steps // 2)
    same = all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed_params), strict=True)
    )
    print(f"checkpoint at step {args.steps // 2}, restored and resumed: bitwise identical = {same}")
    return losses, same


if __name__ == "__main__":
    main()
