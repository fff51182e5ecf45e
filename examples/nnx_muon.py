"""A small Flax NNX transformer trained with ``optclip.muon``, and each layer's statistics.

The model has every kind of leaf the default norm assignment tells apart: an ``Embed``, fused
attention kernels ``(d_in, heads, head_dim)``, an MLP, ``LayerNorm`` scales and biases, and a
``head``. Muon takes the hidden matrices (attention and MLP), AdamW the embedding, the head and
the vectors (``optclip.default_lmo_norms``). The task: predict the next token of sequences that
count up modulo the vocabulary. ``docs/normalized.md`` explains the family.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optclip

VOCAB, DIM, LENGTH = 16, 32, 12


class Block(nnx.Module):
    def __init__(self, rngs):
        self.ln1 = nnx.LayerNorm(DIM, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(4, DIM, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(DIM, rngs=rngs)
        self.up = nnx.Linear(DIM, 4 * DIM, rngs=rngs)
        self.down = nnx.Linear(4 * DIM, DIM, rngs=rngs)

    def __call__(self, x):
        mask = nnx.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class TinyLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.block = Block(rngs)
        self.head = nnx.Linear(DIM, VOCAB, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.block(self.embed(tokens)))


def batch(key, size=32):
    start = jax.random.randint(key, (size, 1), 0, VOCAB)
    tokens = (start + jnp.arange(LENGTH + 1)) % VOCAB
    return tokens[:, :-1], tokens[:, 1:]


def name(path):
    """A leaf's path as ``block/up/kernel`` (NNX's ``.value`` left out)."""
    return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def lmo_statistics(opt_state):
    """The per-layer statistics of Muon's LMO link: {path: (dual norm, NS residual)}."""
    pure = nnx.as_pure(opt_state) if isinstance(opt_state, nnx.State) else opt_state
    found = [
        s
        for s in jax.tree.leaves(pure, is_leaf=lambda x: isinstance(x, optclip.ScaleByLmoState))
        if isinstance(s, optclip.ScaleByLmoState)
    ]
    (state,) = found
    flat, _ = jax.tree_util.tree_flatten_with_path(state.dual_norm)
    residual = jax.tree.leaves(state.ns_residual)
    return {name(path): (float(d), float(r)) for (path, d), r in zip(flat, residual, strict=True)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)

    model = TinyLM(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    norms, _ = optclip.default_lmo_norms(params)
    for path, norm in jax.tree_util.tree_leaves_with_path(norms):
        print(f"{name(path)}: {norm} -> {'Muon' if norm == 'spectral' else 'AdamW'}")
    tx = optclip.muon(0.02, adam_learning_rate=3e-3)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    key = jax.random.key(1)
    losses = []
    for _ in range(args.steps):
        key, sub = jax.random.split(key)
        losses.append(float(train_step(model, optimizer, *batch(sub))))
    print(f"loss: step 0 {losses[0]:.3f}, step {args.steps - 1} {losses[-1]:.3f}")
    for path, (dual, residual) in sorted(lmo_statistics(optimizer.opt_state).items()):
        print(f"{path}: dual norm {dual:.3g}, NS residual {residual:.3f}")
    return losses


if __name__ == "__main__":
    main()
