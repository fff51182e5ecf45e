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
# # Is my gradient noise heavy-tailed? Measure it
#
# Zhang et al. (2020) argue that SGD struggles on attention models because their stochastic
# gradients have heavy-tailed noise, which clipping (and adaptive methods) tame.
# `optclip.diagnostics` measures the noise for any `loss_fn(params, batch)`: here a small MLP on
# synthetic data, once with Gaussian label noise and once with heavy-tailed label noise.

# %%
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

from optclip import diagnostics as D

N_BATCHES = 128 if os.environ.get("OPTCLIP_FAST") else 1024
rng = np.random.default_rng(0)
x = rng.normal(size=(N_BATCHES, 16, 8)).astype(np.float32)
w = rng.normal(size=(8,)).astype(np.float32)
labels = {
    "Gaussian noise": x @ w + rng.normal(size=(N_BATCHES, 16)).astype(np.float32),
    "Student-t(1.5) noise": x @ w + rng.standard_t(1.5, size=(N_BATCHES, 16)).astype(np.float32),
}


def loss_fn(params, batch):
    xb, yb = batch
    h = jnp.tanh(xb @ params["w1"])
    return jnp.mean((h @ params["w2"] - yb) ** 2)


params = {
    "w1": jax.random.normal(jax.random.key(0), (8, 32)) / 3,
    "w2": jax.random.normal(jax.random.key(1), (32,)) / 6,
}

# %% [markdown]
# For each dataset: the norms `||g_b - mean g||` of the minibatch gradients' noise, Hill's tail
# index of those norms, and the alpha-stable tail index of the noise projected on a random
# direction (2 = Gaussian, smaller = heavier).

# %%
results = {}
u = jax.random.normal(jax.random.key(2), (8 * 32 + 32,))
for name, y in labels.items():
    batches = (jnp.asarray(x), jnp.asarray(y))
    norms = np.asarray(D.noise_norms(loss_fn, params, batches))
    grads = jax.lax.map(lambda b: jax.grad(loss_fn)(params, b), batches)
    flat = jnp.concatenate([grads["w1"].reshape(N_BATCHES, -1), grads["w2"]], axis=1)
    proj = np.asarray((flat - flat.mean(0)) @ u)
    results[name] = dict(
        norms=norms,
        hill=D.hill_tail_index(norms, N_BATCHES // 10),
        stable=D.tail_index(proj, 16),
    )
    r = results[name]
    print(f"{name:22s} Hill {r['hill']:.2f}   alpha-stable {r['stable']:.2f}")

# %% [markdown]
# **Reading.** A tail index near 2 means concentrated noise; clearly below 2, heavy tails. It
# says how heavy the noise is, but in this project's measurements it did not predict the best
# optimizer (`docs/results.md`, E5): on the small transformers measured, Adam-family methods
# beat SGD with momentum although the noise was near-Gaussian, and a clip of the raw gradient in
# front of Adam was best (`docs/results.md`, `docs/spikes.md`); on a digits MLP whose noise
# became heavy-tailed, unclipped SGD with momentum had the best test accuracy (E6). Which
# optimizer to use: `docs/choosing.md`.

# %%
heavy = results["Student-t(1.5) noise"]["stable"] < results["Gaussian noise"]["stable"]
print("heavier tail with Student-t labels:", heavy)

# %%
try:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        D.plot_noise_histogram(r["norms"], dim=288, alpha=min(r["stable"], 2.0), ax=ax)
        ax.set_title(name)
    plt.show()
except ImportError:
    pass
