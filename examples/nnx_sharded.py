"""A Flax NNX model trained with an optclip optimizer on a ('data', 'model') device mesh.

Weights split over 'model' by their annotations, the batch over 'data', and the optimizer
state over 'data' as well (ZeRO stage 1) by ``optclip.state_shardings``. docs/nnx_sharding.md
explains each part. Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optclip


class MLP(nnx.Module):
    """Megatron-style: the hidden units stay split over 'model' from one layer to the next."""

    def __init__(self, d_in, hidden, rngs):
        w, zeros = nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()
        columns = nnx.with_partitioning(w, (None, "model"))  # (d_in, hidden): hidden split
        rows = nnx.with_partitioning(w, ("model", None))  # (hidden, 1): hidden split
        bias = nnx.with_partitioning(zeros, ("model",))
        self.up = nnx.Linear(d_in, hidden, kernel_init=columns, bias_init=bias, rngs=rngs)
        self.down = nnx.Linear(hidden, 1, kernel_init=rows, rngs=rngs)  # bias: replicated

    def __call__(self, x):
        return self.down(nnx.relu(self.up(x)))


def pin(variables, shardings):
    """Inside jit: constrain each Variable to its sharding, which XLA would otherwise choose."""
    constrain = lambda v, s: v.set_value(jax.lax.with_sharding_constraint(v.get_value(), s))
    jax.tree.map(constrain, variables, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


def main():
    n = jax.device_count()
    model_size = 2 if n % 2 == 0 else 1  # 8 devices: (4, 2); one device: (1, 1)
    # Auto axes: XLA moves values between the params' layout and the state's ZeRO layout.
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((n // model_size, model_size), ("data", "model"), axis_types=auto)
    print(f"{n} devices, mesh {dict(mesh.shape)}")
    tx = optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(1e-3))

    with jax.set_mesh(mesh):  # the mesh whose axes the annotations name
        model = MLP(16, 128, nnx.Rngs(0))  # each Param is created with its annotated sharding
        params = nnx.state(model, nnx.Param)
        param_sh = jax.tree.map(lambda p: p.sharding, nnx.as_pure(params))
        state_sh = nnx.as_pure(optclip.state_shardings(tx, params, mesh))

        @nnx.jit
        def make_optimizer(model):
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            # Flax lays the state out like the params (|data| copies); made under jit and
            # pinned, it is born in the ZeRO layout instead.
            pin(optimizer.opt_state, state_sh)
            return optimizer

        @nnx.jit(donate_argnums=(0, 1))
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            # Unpinned, XLA may hand the params back in the state's layout (it does here).
            pin(nnx.state(model, nnx.Param), param_sh)
            pin(optimizer.opt_state, state_sh)
            return loss

        optimizer = make_optimizer(model)
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (16 * mesh.shape["data"], 16))
        y = jnp.sin(x @ jax.random.normal(kw, (16, 1)))
        x, y = jax.device_put((x, y), NamedSharding(mesh, P("data")))  # rows split over 'data'
        losses = [float(train_step(model, optimizer, x, y)) for _ in range(20)]

    kernel = model.up.kernel.get_value()
    mu = optax.tree.get(optimizer.opt_state, "mu")["up"]["kernel"].get_value()
    for name, a in (("up.kernel", kernel), ("its Adam mu", mu)):
        shard = a.addressable_shards[0].data.shape
        print(f"{name} {a.shape}: {a.sharding.spec}, {shard} per device")
    print(f"loss: step 0 {losses[0]:.4f}, step {len(losses) - 1} {losses[-1]:.4f}")
    # Equivalent rather than equal: on one device XLA writes every spec as P().
    assert kernel.sharding.is_equivalent_to(param_sh["up"]["kernel"], kernel.ndim)
    assert mu.sharding.is_equivalent_to(optax.tree.get(state_sh, "mu")["up"]["kernel"], mu.ndim)
    assert losses[-1] < losses[0]


if __name__ == "__main__":
    main()
