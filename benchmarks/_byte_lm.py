"""The language model of ``lm_study.py``: a byte-level corpus of the standard library's sources
and a decoder-only transformer in Flax NNX, trained functionally so runs can be vmapped."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import platform
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

VOCAB = 256  # bytes
TEST_DIRS = {"test", "tests", "idle_test"}


@dataclasses.dataclass(frozen=True)
class Size:
    d_model: int
    layers: int
    heads: int
    context: int
    batch: int


SIZES = {
    "quick": Size(d_model=32, layers=1, heads=2, context=32, batch=8),
    "small": Size(d_model=64, layers=2, heads=4, context=64, batch=16),
    "cpu": Size(d_model=128, layers=4, heads=4, context=128, batch=16),
    "gpu": Size(d_model=512, layers=8, heads=8, context=256, batch=64),
}


# ---------------------------------------------------------------------------------------------
# The corpus.


@dataclasses.dataclass(frozen=True)
class Corpus:
    train: np.ndarray
    val: np.ndarray
    description: dict


def stdlib_corpus(max_bytes: int | None = None, root: str | None = None) -> Corpus:
    """The ``.py`` files under the standard library, test packages excluded, in sorted order.

    File ``i`` (in that order) is validation when ``i % 10 == 9``. ``max_bytes`` cuts each split
    to at most that many bytes (train) and a tenth of it (validation).
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in base.rglob("*.py")
        if not TEST_DIRS & set(p.relative_to(base).parts[:-1])
        and "site-packages" not in p.relative_to(base).parts
    )
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    enough = lambda k, cap: max_bytes is not None and sum(map(len, parts[k])) >= cap
    for i, path in enumerate(files):
        if enough("train", max_bytes) and enough("val", (max_bytes or 0) // 10):
            break  # the rest would be cut off
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts["val" if i % 10 == 9 else "train"].append(data)
    splits = {k: b"".join(v) for k, v in parts.items()}
    if max_bytes is not None:
        splits = {"train": splits["train"][:max_bytes], "val": splits["val"][: max_bytes // 10]}
    description = dict(
        root=str(base),
        python=platform.python_version(),
        files=len(files),
        **{
            f"{k}_{what}": value
            for k, v in splits.items()
            for what, value in (("bytes", len(v)), ("sha256", hashlib.sha256(v).hexdigest()))
        },
    )
    arrays = {k: np.frombuffer(v, dtype=np.uint8).astype(np.int32) for k, v in splits.items()}
    return Corpus(arrays["train"], arrays["val"], description)


# ---------------------------------------------------------------------------------------------
# The model.


class Block(nnx.Module):
    """Pre-norm: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` with a GELU MLP of width 4d."""

    def __init__(self, size: Size, dtype, rngs: nnx.Rngs):
        d = size.d_model
        self.heads = size.heads
        dense = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)
        self.ln1, self.ln2 = (nnx.LayerNorm(d, dtype=dtype, rngs=rngs) for _ in range(2))
        self.qkv, self.out = dense(d, 3 * d), dense(d, d)
        self.up, self.down = dense(d, 4 * d), dense(4 * d, d)

    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, -1), 3, axis=2)
        att = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], is_causal=True)
        x = x + self.out(att.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class ByteLM(nnx.Module):
    """Tied embeddings: the logits are the final features times the input embedding."""

    def __init__(self, size: Size, dtype, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, size.d_model, dtype=dtype, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (size.context, size.d_model)))
        self.blocks = nnx.List([Block(size, dtype, rngs) for _ in range(size.layers)])
        self.ln = nnx.LayerNorm(size.d_model, dtype=dtype, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[...][: tokens.shape[-1]].astype(self.embed.dtype)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.ln(x)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Data and loss.


@dataclasses.dataclass
class Study:
    size: Size
    corpus: Corpus
    graphdef: nnx.GraphDef
    dtype: object
    val_starts: np.ndarray

    @classmethod
    def make(cls, size: Size, corpus: Corpus, dtype, val_batches: int) -> Study:
        graphdef, _ = nnx.split(ByteLM(size, dtype, nnx.Rngs(0)), nnx.Param)
        hi = len(corpus.val) - size.context - 1
        starts = np.linspace(0, hi, val_batches * size.batch).astype(np.int32)
        return cls(size, corpus, graphdef, dtype, starts.reshape(val_batches, size.batch))

    def init(self, seed: int):
        return nnx.split(ByteLM(self.size, self.dtype, nnx.Rngs(seed)), nnx.Param)[1]

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.init(0)))

    def loss(self, params, data, starts):
        window = data[starts[:, None] + jnp.arange(self.size.context + 1)[None, :]]
        logits = nnx.merge(self.graphdef, params)(window[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, window[:, 1:]).mean()

    @functools.cached_property
    def validate(self):
        """Jitted mean validation loss of stacked params (runs on the leading axis): one program
        for every optimizer."""
        val, starts = jnp.asarray(self.corpus.val), jnp.asarray(self.val_starts)
        one = lambda p: jax.lax.map(lambda s: self.loss(p, val, s), starts).mean()
        return jax.jit(jax.vmap(one))

    def batch_starts(self, seed: int, steps: int) -> jax.Array:
        hi = len(self.corpus.train) - self.size.context - 1
        return jax.random.randint(jax.random.key(10_000 + seed), (steps, self.size.batch), 0, hi)
