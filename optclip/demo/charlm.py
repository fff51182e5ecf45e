"""A small causal character-level transformer, and the text it trains on.

Shared by the demo, the examples and the benchmarks that train a real
attention model on 2 CPU cores. No text needs a download. The default is the
snapshot shipped with the package (:mod:`optclip.demo.corpus`), the same on
every Python version; :func:`stdlib_text` reads the ``.py`` files at the top of
this interpreter's standard library instead (the corpus of the measurements in
``docs/results.md``; it differs between Python versions). The last 10% of the
characters are the validation split.

Training is functional so that seeds can be batched with ``jax.vmap``: the
Flax NNX model is split into a graph definition and a parameter state once,
and the loss merges them inside the traced step.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optclip.demo import corpus

VOCAB = 128  # ASCII; anything else maps to 127


def stdlib_text(max_chars: int = 1_500_000) -> str:
    """The first ``max_chars`` characters of this interpreter's top-level stdlib ``.py`` files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def encode(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    return np.minimum(codes, VOCAB - 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Config:
    d_model: int = 128
    heads: int = 4
    layers: int = 2
    seq: int = 64
    batch: int = 32


class Block(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=cfg.heads, in_features=cfg.d_model, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.up = nnx.Linear(cfg.d_model, 4 * cfg.d_model, rngs=rngs)
        self.down = nnx.Linear(4 * cfg.d_model, cfg.d_model, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class CharTransformer(nnx.Module):
    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, cfg.d_model, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.seq, cfg.d_model)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.ln = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, VOCAB, rngs=rngs)

    def __call__(self, tokens):
        t = tokens.shape[-1]
        x = self.embed(tokens) + self.pos[...][:t]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


@dataclasses.dataclass
class Task:
    cfg: Config
    train: jax.Array
    val: jax.Array
    graphdef: nnx.GraphDef

    @classmethod
    def make(
        cls, cfg: Config = Config(), max_chars: int = 1_500_000, text: str | None = None
    ) -> Task:
        """A task on ``text`` (default: the shipped corpus), cut to ``max_chars`` characters."""
        data = encode((corpus.text() if text is None else text)[:max_chars])
        split = int(0.9 * len(data))
        graphdef, _ = nnx.split(CharTransformer(cfg, nnx.Rngs(0)), nnx.Param)
        return cls(cfg, jnp.asarray(data[:split]), jnp.asarray(data[split:]), graphdef)

    def init_params(self, seed: int):
        _, params = nnx.split(CharTransformer(self.cfg, nnx.Rngs(seed)), nnx.Param)
        return params

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.init_params(0)))

    def windows(self, data: jax.Array, starts: jax.Array):
        offsets = jnp.arange(self.cfg.seq + 1)
        chunk = data[starts[:, None] + offsets[None, :]]
        return chunk[:, :-1], chunk[:, 1:]

    def loss(self, params, data, starts):
        x, y = self.windows(data, starts)
        logits = nnx.merge(self.graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def batch_starts(self, seed: int, steps: int) -> jax.Array:
        key = jax.random.key(10_000 + seed)
        hi = self.train.shape[0] - self.cfg.seq - 1
        return jax.random.randint(key, (steps, self.cfg.batch), 0, hi)

    def val_starts(self, batches: int = 16) -> jax.Array:
        hi = self.val.shape[0] - self.cfg.seq - 1
        return jnp.linspace(0, hi, batches * self.cfg.batch).astype(jnp.int32).reshape(batches, -1)


def train_seeds(
    task: Task,
    tx: optax.GradientTransformation,
    seeds,
    steps: int,
    grad_hook=None,
    track=None,
    grad_scales=None,
):
    """Trains one model per seed (vmapped); returns (val_loss[seeds], train_loss[seeds, steps],
    tracked[seeds, steps]) where ``tracked`` is ``track(opt_state)`` each step (NaN if None).

    ``grad_hook(step, grads)`` may rewrite gradients (e.g. inject spikes); ``grad_scales``, an
    array ``[len(seeds), steps]``, multiplies each run's gradient at each step (spikes that
    differ between runs of the same program).
    """
    params = [task.init_params(s) for s in seeds]
    params = jax.tree.map(lambda *x: jnp.stack(x), *params)
    starts = jnp.stack([task.batch_starts(s, steps) for s in seeds])
    val_starts = task.val_starts()
    scales = jnp.ones((len(seeds), steps)) if grad_scales is None else jnp.asarray(grad_scales)

    def one(params, starts, scales):
        opt_state = tx.init(params)

        def step(carry, inp):
            params, opt_state = carry
            k, s, scale = inp
            loss, grads = jax.value_and_grad(task.loss)(params, task.train, s)
            if grad_scales is not None:
                grads = jax.tree.map(lambda g: g * scale, grads)
            if grad_hook is not None:
                grads = grad_hook(k, grads)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            stat = track(opt_state) if track is not None else jnp.float32(jnp.nan)
            return (params, opt_state), (loss, stat)

        (params, _), (losses, stats) = jax.lax.scan(
            step, (params, opt_state), (jnp.arange(steps), starts, scales)
        )
        val = jax.lax.map(lambda s: task.loss(params, task.val, s), val_starts).mean()
        return val, losses, stats

    val, losses, stats = jax.jit(jax.vmap(one))(params, starts, scales)
    val = np.asarray(val)
    return np.where(np.isfinite(val), val, np.inf), np.asarray(losses), np.asarray(stats)
