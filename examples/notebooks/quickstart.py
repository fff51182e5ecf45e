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
# # optclip quickstart: ACClip in an `optax.chain` with Flax NNX
#
# optclip's optimizers are `optax.GradientTransformation`s: chain them, wrap them, and hand them
# to `nnx.Optimizer`. This notebook trains a small MLP on a regression task whose labels carry
# heavy-tailed noise, with ACClip at Adam's learning rate, and reads the clipping statistics from
# the optimizer state with `optclip.statistics`.
#
# It shows the mechanics, not a measured recipe: this chain was not compared with others. Which
# optimizer and learning rate to use is in `docs/choosing.md`; for a transformer the measured
# choice is `optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(lr))` at Adam's learning rate.

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
# The optimizer: a global-norm clip (optclip's drop-in for optax's, with the norm in its state)
# in front of RMS-scaled ACClip. `optclip.statistics(optimizer.opt_state)` reads every statistic
# the chain's states keep, inside the jitted step, as one flat dict: the pre-clip gradient norm is
# `"clip_by_global_norm/norm"`, ACClip's fraction of clipped coordinates `"acclip/clip_fraction"`.

# %%
tx = optax.chain(
    optclip.clip_by_global_norm(5.0),
    optclip.acclip(3e-3, rms_scale=True, weight_decay=1e-4),
)
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
    norm, clipped = stats["clip_by_global_norm/norm"], stats["acclip/clip_fraction"]
    history.append((float(loss), float(norm), float(clipped)))
print("statistics:", ", ".join(stats))
print(f"loss {history[0][0]:.3f} -> {np.mean([h[0] for h in history[-20:]]):.3f}")
print(f"last gradient norm {history[-1][1]:.3f}, fraction clipped {history[-1][2]:.3f}")

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
    ax[1].plot([h[2] for h in history])
    ax[1].set(xlabel="step", ylabel="fraction clipped")
    plt.show()
except ImportError:
    pass
