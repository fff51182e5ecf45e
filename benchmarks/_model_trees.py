"""Parameter trees shaped like real models, for the step-time benchmark.

Each builder returns ``{path: shape}`` for a model's trainable parameters, with the layer
structure (and so the leaf count) of the real model and every width multiplied by ``scale``:
``scale=1`` is the published model, ``scale=0.25`` keeps every leaf but has about 1/16 of the
parameters, so a run fits a few CPU cores. Leaf names follow Flax's conventions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _w(width: int, scale: float) -> int:
    return max(1, round(width * scale))


def gpt2_small(scale: float = 1.0) -> dict[str, tuple[int, ...]]:
    """GPT-2 small: 12 blocks of width 768, vocabulary 50257, context 1024 (148 leaves)."""
    d, vocab, ctx = _w(768, scale), _w(50257, scale), _w(1024, scale)
    shapes = {"wte": (vocab, d), "wpe": (ctx, d)}
    for i in range(12):
        b = f"h_{i}"
        shapes |= {
            f"{b}/ln_1/scale": (d,),
            f"{b}/ln_1/bias": (d,),
            f"{b}/attn/c_attn/kernel": (d, 3 * d),
            f"{b}/attn/c_attn/bias": (3 * d,),
            f"{b}/attn/c_proj/kernel": (d, d),
            f"{b}/attn/c_proj/bias": (d,),
            f"{b}/ln_2/scale": (d,),
            f"{b}/ln_2/bias": (d,),
            f"{b}/mlp/c_fc/kernel": (d, 4 * d),
            f"{b}/mlp/c_fc/bias": (4 * d,),
            f"{b}/mlp/c_proj/kernel": (4 * d, d),
            f"{b}/mlp/c_proj/bias": (d,),
        }
    return shapes | {"ln_f/scale": (d,), "ln_f/bias": (d,)}


def resnet50(scale: float = 1.0) -> dict[str, tuple[int, ...]]:
    """ResNet-50: bottleneck stages of 3, 4, 6, 3 blocks, batch norm everywhere (161 leaves)."""
    stem = _w(64, scale)
    shapes = {"conv_init/kernel": (7, 7, 3, stem)}
    shapes |= {"bn_init/scale": (stem,), "bn_init/bias": (stem,)}
    width_in = stem
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        f = _w(width, scale)
        for j in range(blocks):
            b = f"stage{stage + 1}_block{j + 1}"
            convs = [("conv1", (1, 1, width_in, f)), ("conv2", (3, 3, f, f))]
            convs.append(("conv3", (1, 1, f, 4 * f)))
            if j == 0:  # the projection shortcut
                convs.append(("proj_conv", (1, 1, width_in, 4 * f)))
            for name, kernel in convs:
                norm = name.replace("conv", "bn")
                shapes |= {f"{b}/{name}/kernel": kernel}
                shapes |= {f"{b}/{norm}/scale": (kernel[-1],), f"{b}/{norm}/bias": (kernel[-1],)}
            width_in = 4 * f
    return shapes | {"fc/kernel": (width_in, 1000), "fc/bias": (1000,)}


def vit_b16(scale: float = 1.0) -> dict[str, tuple[int, ...]]:
    """ViT-B/16 at 224x224: 12 blocks of width 768, 12 heads, MLP 3072 (200 leaves)."""
    d, mlp = _w(768, scale), _w(3072, scale)
    heads = 12
    head_dim = max(1, d // heads)
    shapes = {"embedding/kernel": (16, 16, 3, d), "embedding/bias": (d,)}
    shapes |= {"cls": (1, 1, d), "pos_embedding": (1, 197, d)}
    for i in range(12):
        b = f"encoderblock_{i}"
        shapes |= {f"{b}/ln_1/scale": (d,), f"{b}/ln_1/bias": (d,)}
        for proj in ("query", "key", "value"):
            shapes |= {f"{b}/attn/{proj}/kernel": (d, heads, head_dim)}
            shapes |= {f"{b}/attn/{proj}/bias": (heads, head_dim)}
        shapes |= {f"{b}/attn/out/kernel": (heads, head_dim, d), f"{b}/attn/out/bias": (d,)}
        shapes |= {f"{b}/ln_2/scale": (d,), f"{b}/ln_2/bias": (d,)}
        shapes |= {f"{b}/mlp/dense_1/kernel": (d, mlp), f"{b}/mlp/dense_1/bias": (mlp,)}
        shapes |= {f"{b}/mlp/dense_2/kernel": (mlp, d), f"{b}/mlp/dense_2/bias": (d,)}
    shapes |= {"encoder_norm/scale": (d,), "encoder_norm/bias": (d,)}
    return shapes | {"head/kernel": (d, 1000), "head/bias": (1000,)}


MODELS = {"GPT-2 small": gpt2_small, "ResNet-50": resnet50, "ViT-B/16": vit_b16}


def size(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def materialize(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype=jnp.float32) -> dict:
    """Random float arrays of the given shapes (a flat ``{path: array}`` dict)."""
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {
        name: jax.random.normal(k, shape, dtype)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
