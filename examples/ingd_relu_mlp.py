"""Stochastic INGD against SGD with momentum and Adam on a ReLU network.

A small ReLU MLP (64-128-128-10) classifies scikit-learn's bundled 8x8 digits
(no download). Stochastic INGD uses the thesis' settings (``beta = 0.9, p = 1,
q = 10``, weight decay 5e-4); SGD with momentum and Adam get the same weight
decay and a common learning rate each. Every optimizer gets the same number of
steps and minibatches. Accuracy is measured at the INGD iterate ``x`` (via
``optclip.ingd_iterate``), not at the interpolation point the loss sees.

    pip install -e ".[examples]"
    python examples/ingd_relu_mlp.py              # 14 s of training on 2 CPU cores (docs/ingd.md)
    python examples/ingd_relu_mlp.py --epochs 3   # quicker

Prints a table of train/test accuracy and saves a plot of the curves.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip._plotting import available, pyplot, save


def load_digits(seed: int = 0):
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def init_mlp(key, sizes=(64, 128, 128, 10)):
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (a, b) in zip(keys, itertools.pairwise(sizes), strict=True):
        params.append({"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)})
    return params


def forward(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def accuracy(params, x, y):
    return float(jnp.mean(jnp.argmax(forward(params, x), -1) == y))


OPTIMIZERS = {
    "stochastic_ingd": lambda: optclip.stochastic_ingd(
        p=1.0, q=10.0, beta=0.9, key=0, weight_decay=5e-4
    ),
    "sgd_momentum": lambda: optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, 0.9)),
    "adam": lambda: optax.chain(optax.add_decayed_weights(5e-4), optax.adam(1e-3)),
}


def evaluation_params(name, params, state):
    return optclip.ingd_iterate(params, state) if name == "stochastic_ingd" else params


def train(name, data, epochs, batch, seed, tx=None):
    """Per-epoch (train accuracy, test accuracy, train cross-entropy) at the evaluation params.

    ``tx`` overrides the optimizer's default settings (``name`` still decides how the
    evaluation params are read from the state).
    """
    (xtr, ytr), (xte, yte) = data
    tx = tx if tx is not None else OPTIMIZERS[name]()
    params = init_mlp(jax.random.key(seed))
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    curve = []
    for _ in range(epochs):
        perm = rng.permutation(len(xtr))
        for i in range(0, len(xtr) - batch + 1, batch):
            idx = perm[i : i + batch]
            params, state = step(params, state, xtr[idx], ytr[idx])
        ev = evaluation_params(name, params, state)
        curve.append((accuracy(ev, xtr, ytr), accuracy(ev, xte, yte), float(loss_fn(ev, xtr, ytr))))
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="out/examples")
    args = ap.parse_args(argv)
    data = load_digits()
    start = time.perf_counter()
    curves = {
        n: [train(n, data, args.epochs, args.batch, s) for s in range(args.seeds)]
        for n in OPTIMIZERS
    }
    print(
        f"ReLU MLP on digits ({len(data[0][0])} train / {len(data[1][0])} test), "
        f"{args.epochs} epochs of batch {args.batch}, {args.seeds} seeds"
    )
    print(f"{'optimizer':<18}{'train acc':>16}{'test acc':>16}")
    for name, runs in curves.items():
        tr = np.array([r[-1][0] for r in runs])
        te = np.array([r[-1][1] for r in runs])
        print(f"{name:<18}{tr.mean():>9.4f} ± {tr.std():.4f}{te.mean():>9.4f} ± {te.std():.4f}")
    print(f"({time.perf_counter() - start:.0f}s)")
    if not available():
        return curves
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for name, runs in curves.items():
        arr = np.array(runs)  # seeds x epochs x (train acc, test acc, train loss)
        for i, label in enumerate(("train accuracy", "test accuracy")):
            axes[i].plot(np.arange(1, args.epochs + 1), arr[:, :, i].mean(0), label=name)
            axes[i].set_xlabel("epoch")
            axes[i].set_ylabel(label)
    axes[1].legend()
    print(f"saved {save(fig, Path(args.out) / 'ingd_relu_mlp.png')}")
    return curves


if __name__ == "__main__":
    main()
