"""PyTorch's fused Adam on the same parameter shapes: the bar a PyTorch user holds a step to.

Timed only where torch is importable; on a CUDA device by default (``fused=True`` on CPU is
supported by recent torch, which the tests use). Each sample times ``inner`` consecutive steps
and synchronizes once, like the JAX variants.
"""

from __future__ import annotations

import statistics
import time

ADAM = "torch Adam(fused)"
CLIP_ADAM = "torch clip_grad_norm_+Adam(fused)"


def available(device: str) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return device != "cuda" or torch.cuda.is_available()


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_torch(shapes: dict, reps: int, inner: int, device: str, lr: float = 1e-3) -> dict:
    """Median device ms per step of fused Adam and of ``clip_grad_norm_(foreach=True)`` + it."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    variants = {ADAM: False, CLIP_ADAM: True}
    runs = {}
    for name, clip in variants.items():
        params = [
            torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes.values()
        ]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opt = torch.optim.Adam(params, lr=lr, fused=True)
        runs[name] = (params, opt, clip, [])

    def step(params, opt, clip):
        if clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()

    for params, opt, clip, _ in runs.values():  # warm-up: state allocation, kernel caches
        for _ in range(2):
            step(params, opt, clip)
    _sync(torch, device)
    for _ in range(reps):
        for params, opt, clip, times in runs.values():
            t0 = time.perf_counter()
            for _ in range(inner):
                step(params, opt, clip)
            _sync(torch, device)
            times.append((time.perf_counter() - t0) / inner)
    return {
        # Eager steps launch asynchronously, so ``inner`` of them in a row keep the device busy:
        # the device time a JAX variant's jitted loop measures.
        name: dict(device_ms=1e3 * statistics.median(times), torch=torch.__version__)
        for name, (_, _, _, times) in runs.items()
    }
