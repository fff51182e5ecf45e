"""Log what the optimizer did, per layer, to TensorBoard.

Trains a small Flax NNX MLP with the recommended chain (optax's adaptive
gradient clipping before Adam, a non-finite step skipped), the clip watched by
``optclip.record_norms``, and writes ``optclip.statistics`` of the optimizer
state to TensorBoard event files at every step. One batch, at ``--spike-step``,
has its targets scaled a hundredfold: the per-layer keys show which tensor's
gradient spiked and how much of it the clip removed.

    pip install -e ".[examples]"
    python examples/tensorboard_logging.py --logdir runs/agc
    pip install tensorboard && tensorboard --logdir runs   # charts grouped by first key segment

Keys (``docs/design.md``, "Reading statistics"): ``agc/record_norms/grad_norm/layers.0.kernel``
is the raw gradient's norm of the first layer's kernel, ``agc/record_norms/removed/...`` the
fraction of it the clip removed, ``adam/scale_by_adam/count`` Adam's step count and
``apply_if_finite/...`` the skipped steps; ``agc`` and ``adam`` are the ``optax.named_chain``
names, which keep the keys when links are added.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tensorboardX import SummaryWriter

import optclip


class MLP(nnx.Module):
    """Two dense layers with a ReLU between them."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


def optimizer_chain(learning_rate: float) -> optax.GradientTransformation:
    """The recommended chain (``docs/choosing.md``), its clip watched leaf by leaf."""
    tx = optax.named_chain(
        ("agc", optclip.record_norms(optax.adaptive_grad_clip(0.01))),
        ("adam", optax.adam(learning_rate)),
    )
    return optax.apply_if_finite(tx, max_consecutive_errors=10)


@nnx.jit
def train_step(model, optimizer, x, y):
    """One step; returns the loss and every statistic of the optimizer state."""
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss, optclip.statistics(optimizer.opt_state)


def _report(step: int, loss: float, before: dict[str, float], stats: dict[str, float]) -> None:
    """Per tensor: the gradient's norm against the step before, and what the clip let through."""
    print(f"step {step}: loss {loss:.3g}; per tensor, gradient norm (step before) -> after AGC")
    prefix = "agc/record_norms/"
    for key in sorted(k for k in stats if k.startswith(prefix + "grad_norm/")):
        leaf = key.rsplit("/", 1)[1]
        out = stats[f"{prefix}update_norm/{leaf}"]
        print(f"  {leaf:16s} {stats[key]:9.3g} ({before.get(key, float('nan')):7.3g}) -> {out:.3g}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Trains, logs every step's statistics, and returns the last step's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/tensorboard_logging")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--spike-step", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    args = parser.parse_args(argv)

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optimizer_chain(args.learning_rate), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(8, 1)).astype(np.float32)
    stats: dict[str, float] = {}
    with SummaryWriter(args.logdir) as writer:
        for step in range(1, args.steps + 1):
            x = rng.normal(size=(32, 8)).astype(np.float32)
            y = x @ w_true * (100.0 if step == args.spike_step else 1.0)
            loss, device_stats = train_step(model, optimizer, x, y)
            before, stats = stats, {k: float(v) for k, v in jax.device_get(device_stats).items()}
            writer.add_scalar("loss", float(loss), step)
            for key, value in stats.items():
                writer.add_scalar(key, value, step)
            if step == args.spike_step:
                _report(step, float(loss), before, stats)
    print(f"{len(stats) + 1} scalars a step for {args.steps} steps in {args.logdir}")
    return stats


if __name__ == "__main__":
    main()
