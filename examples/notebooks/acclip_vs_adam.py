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
# # ACClip vs Adam on a small character transformer
#
# A causal character-level transformer (`optclip.demo.charlm`) on the Python standard library's own
# source code (no download), trained with Adam, a global-norm clip in front of Adam, the RMS-scaled
# ACClip at Adam's learning rate, and the printed ACClip rule at SGD's. The full measurement of the
# same model (d_model 96, 3 seeds, learning-rate grids) is `benchmarks/acclip_scale.py`; this
# notebook is the short version, one seed.
#
# What the measurements say (`docs/results.md`): the RMS-scaled ACClip tied or beat Adam on this
# model and lost to it on a second, byte-level one; clip(1) + Adam beat both on both. Which
# optimizer to use: `docs/choosing.md`.

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

import numpy as np
import optax

import optclip
from optclip.demo import charlm

FAST = bool(os.environ.get("OPTCLIP_FAST"))
cfg = charlm.Config(d_model=96)  # the model of benchmarks/acclip_scale.py
if FAST:
    cfg = charlm.Config(d_model=32, heads=2, layers=1, seq=32, batch=8)
STEPS = 20 if FAST else 400
max_chars = 100_000 if FAST else 1_500_000
task = charlm.Task.make(cfg, max_chars, text=charlm.stdlib_text(max_chars))
print(f"{task.num_params()} parameters, {task.train.shape[0]} training characters")

# %%
optimizers = {
    "adam (3e-3)": optax.adam(3e-3),
    "clip(1) + adam (3e-3)": optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(3e-3)),
    "acclip rms_scale (3e-3)": optclip.acclip(3e-3, rms_scale=True),
    "acclip printed rule (1.0)": optclip.acclip(1.0),
}
curves = {}
for name, tx in optimizers.items():
    track = optclip.clip_fraction if name.startswith("acclip") else None
    val, losses, clipped = charlm.train_seeds(task, tx, [0], STEPS, track=track)
    curves[name] = losses[0]
    print(f"{name:28s} validation loss {val[0]:.4f}")

# %%
assert all(np.isfinite(c).all() for c in curves.values())
try:
    import matplotlib.pyplot as plt

    for name, c in curves.items():
        plt.plot(np.convolve(c, np.ones(10) / 10, mode="valid"), label=name)
    plt.xlabel("step")
    plt.ylabel("training loss (10-step mean)")
    plt.legend()
    plt.show()
except ImportError:
    pass
