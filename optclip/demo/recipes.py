"""The character transformer's optimizers in the demo, each at its rate for this model."""

from __future__ import annotations

from collections.abc import Callable

import optax

import optclip

TRANSFORMER_OPTIMIZERS: dict[str, tuple[Callable[[float], optax.GradientTransformation], float]] = {
    # Best rates for this architecture on stdlib text (docs/results.md, E4); clips + Adam: Adam's.
    "adam": (lambda lr: optax.adam(lr), 3e-3),
    "clip+adam": (lambda lr: optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(lr)), 3e-3),
    "zclip+adam": (lambda lr: optax.chain(optclip.zclip(), optax.adam(lr)), 3e-3),
    "adagc+adam": (lambda lr: optax.chain(optclip.adagc(), optax.adam(lr)), 3e-3),
    "agc+adam": (lambda lr: optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(lr)), 3e-3),
    # lr: the AdamW leaves' (embeddings, head, vectors); the hidden matrices take ten times it.
    # Best of {1e-3, 3e-3, 1e-2} on this model, 200 steps, 2 seeds (docs/choosing.md).
    "clip+muon": (
        lambda lr: optax.chain(
            optclip.clip_by_global_norm(1.0), optclip.muon(10 * lr, adam_learning_rate=lr)
        ),
        3e-3,
    ),
    "acclip": (lambda lr: optclip.acclip(lr, rms_scale=True), 3e-3),
    "acclip_robust": (lambda lr: optclip.acclip(lr, rms_scale=True, robust=True), 3e-3),
    "sgd_momentum": (
        lambda lr: optax.chain(optclip.ema_momentum(0.9), optax.scale_by_learning_rate(lr)),
        1.0,
    ),
    # tau = 0.3 clips ~4% of steps on this model (the early ones); 1.0 never binds.
    "gclip": (lambda lr: optclip.gclip(lr, threshold=0.3, b1=0.9), 1.0),
    "acclip_printed": (lambda lr: optclip.acclip(lr), 1.0),
}
# docs/choosing.md: the recommendation for a transformer (optclip's Muon behind a clip) beside
# the Adam chain it replaced.
RECOMMENDED = "clip+muon"
PREVIOUS = "agc+adam"
DEFAULT_TRANSFORMER = f"adam,clip+adam,{PREVIOUS},{RECOMMENDED}"
