"""Convergence smoke test: every method reduces a quadratic under infinite-variance
noise, and SGD with the same step does markedly worse (Remark 4.4.1 of the thesis:
SGD's expected error is unbounded when the noise has no variance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip

D, T, SEEDS = 100, 400, 8
_rng = np.random.default_rng(0)
TARGETS = jnp.asarray(3.0 * _rng.normal(size=(SEEDS, D)), jnp.float32)
NOISE = jnp.asarray(_rng.standard_t(1.5, size=(SEEDS, T, D)), jnp.float32)
INITIAL_ERROR = float(np.mean(np.sum(np.asarray(TARGETS) ** 2, axis=1)))


def mean_final_error(tx) -> float:
    """Mean over seeds of the average ||x - a||^2 over the last 100 of 400 steps."""

    def one(a, noise):
        x = jnp.zeros(D)

        def step(carry, xi):
            x, s = carry
            u, s = tx.update(x - a + xi, s, x)
            x = optax.apply_updates(x, u)
            return (x, s), jnp.sum((x - a) ** 2)

        _, err = jax.lax.scan(step, (x, tx.init(x)), noise)
        return jnp.mean(err[-100:])

    return float(jnp.mean(jax.jit(jax.vmap(one))(TARGETS, NOISE)))


METHODS = {
    "acclip": (lambda lr: optclip.acclip(lr), 0.1),
    "acclip_rms": (lambda lr: optclip.acclip(lr, rms_scale=True), 0.03),
    "gclip": (lambda lr: optclip.gclip(lr, 2.0), 0.1),
    "gclip_momentum": (lambda lr: optclip.gclip(lr, 2.0, b1=0.9), 0.1),
    "cclip": (lambda lr: optclip.cclip(lr, 0.5, b1=0.9), 0.1),
    "clipped_gd": (lambda lr: optclip.clipped_gd(lr, 2.0), 0.1),
    "normalized_gd": (lambda lr: optclip.normalized_gd(lr, 1.0), 0.1),
    "normalized_momentum_sgd": (lambda lr: optclip.normalized_momentum_sgd(lr), 0.1),
    "clip_momentum_sgd": (lambda lr: optclip.clip_momentum_sgd(lr, 0.2), 0.1),
    "generalized_signsgd": (lambda lr: optclip.generalized_signsgd(lr), 0.03),
    "signum": (lambda lr: optclip.generalized_signsgd(lr, b2=0.0), 0.03),
}

_SGD = {}


def _sgd_error(lr):
    if lr not in _SGD:
        _SGD[lr] = mean_final_error(optax.sgd(lr))
    return _SGD[lr]


@pytest.mark.parametrize("name", list(METHODS))
def test_reduces_heavy_tailed_quadratic_where_sgd_does_not(name):
    make, lr = METHODS[name]
    err = mean_final_error(make(lr))
    sgd = _sgd_error(lr)
    assert err < INITIAL_ERROR / 4, (
        f"{name} did not reduce the error: {err:.1f} vs {INITIAL_ERROR:.1f}"
    )
    assert sgd > 2.5 * err, f"{name} is not clearly better than SGD: {err:.1f} vs SGD {sgd:.1f}"
