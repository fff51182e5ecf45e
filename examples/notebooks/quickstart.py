# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # optclip quickstart: the recommended optimizer with Flax NNX, and what it did, per layer
#
# optclip's optimizers and transforms are `optax.GradientTransformation`s: chain them, wrap
# them, and hand them to `nnx.Optimizer`. This notebook trains a small MLP on a regression task
# whose labels carry heavy-tailed noise with the optimizer `docs/choosing.md` recommends for a
# transformer, optclip's Muon (Newton-Schulz-orthogonalized momentum on the hidden matrices,
# AdamW on the rest) behind a clip of the raw gradient, and reads what it did:
# `optclip.record_norms` records each layer's gradient norm and the fraction the clip removed,
# and `optclip.statistics` reads every statistic of the optimizer state as one flat dict, inside
# the jitted step.
#
# It shows the mechanics, not a measurement: on this MLP the optimizer was not compared with
# others.

# %%
# On Colab, install optclip first (a no-op where it is already installed).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("optclip") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/optclip/optclip"],
        check=True,
    )

# %%
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optclip

STEPS = 60 if os.environ.get("OPTCLIP_FAST") else 600
print(jax.__version__, optax.__version__)

# %% [markdown]
# Data: `y = sin(x . w) + 0.1 * Student-t(1.5)` noise: minibatch gradients of infinite variance.

# %%
rng = np.random.default_rng(0)
w_true = rng.normal(size=(8, 1)).astype(np.float32)


def batch(n=32):
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, np.sin(x @ w_true) + 0.1 * rng.standard_t(1.5, size=(n, 1)).astype(np.float32)


model = nnx.Sequential(
    nnx.Linear(8, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 1, rngs=nnx.Rngs(1))
)

# %% [markdown]
# The optimizer: optclip's global-norm clip wrapped in `optclip.record_norms`, then Muon (its
# AdamW leaves at 3e-3, the hidden matrices at ten times it); a non-finite step is skipped
# (`optax.apply_if_finite`). `optclip.statistics` names each value by the transform that keeps
# it and the layer's path: `record_norms/grad_norm/layers.0.kernel` is the first layer's raw
# gradient norm, `record_norms/removed/layers.0.kernel` the fraction the clip removed, and
# `lmo/scale_by_lmo/dual_norm/layers.0.kernel` Muon's dual norm of that layer's momentum.

# %%
lr = 3e-3
tx = optax.chain(
    optclip.record_norms(optclip.clip_by_global_norm(1.0)),
    optclip.muon(10 * lr, adam_learning_rate=lr),
)
tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss, optclip.statistics(optimizer.opt_state)


# %%
history = []
for _ in range(STEPS):
    loss, stats = train_step(model, optimizer, *batch())
    history.append((float(loss), {k: float(v) for k, v in stats.items()}))
print("statistics:", ", ".join(k for k in stats if "kernel" in k))
print(f"loss {history[0][0]:.3f} -> {np.mean([h[0] for h in history[-20:]]):.3f}")

# %% [markdown]
# Which layer had the largest gradient, and how much the clip removed, over the run: the
# question a loss spike's post-mortem starts with.

# %%
kernels = [k.split("/")[-1] for k in stats if k.startswith("record_norms/grad_norm/")]
for leaf in kernels:
    norms = [h[1][f"record_norms/grad_norm/{leaf}"] for h in history]
    removed = [h[1][f"record_norms/removed/{leaf}"] for h in history]
    worst = int(np.argmax(norms))
    print(
        f"{leaf:18s} largest gradient norm {max(norms):8.3f} at step {worst:4d}; "
        f"mean fraction removed by the clip {np.mean(removed):.3f}"
    )

# %%
x_test, y_test = batch(1000)
clean = np.sin(x_test @ w_true)
print("test MSE against the noise-free target:", float(jnp.mean((model(x_test) - clean) ** 2)))
assert history[-1][0] < history[0][0] or STEPS < 100

# %%
try:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot([h[0] for h in history])
    ax[0].set(yscale="log", xlabel="step", ylabel="minibatch loss")
    for leaf in kernels:
        ax[1].plot([h[1][f"record_norms/removed/{leaf}"] for h in history], label=leaf)
    ax[1].set(xlabel="step", ylabel="fraction of the gradient norm clipped")
    ax[1].legend()
    plt.show()
except ImportError:
    pass
