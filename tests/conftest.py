"""Shared fixtures: the optimizer registry and heavy-tailed gradient streams."""

from __future__ import annotations

import os

# Eight simulated CPU devices for the sharding tests; must be set before jax starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip


@dataclasses.dataclass(frozen=True)
class Case:
    """One optimizer configuration used across the parametrised tests."""

    name: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    # The hyperparameter besides the learning rate that tests inject.
    main_hparam: str | None

    def make(self, **overrides):
        return self.factory(**{**self.kwargs, **overrides})

    def __str__(self):
        return self.name


# The spike-robust clips in front of Adam, and skip-step around it, as factories with the
# learning rate first, like the package's full optimizers (every numeric argument injectable).
# optax's default eps (1e-8) is zero in float16, where Adam's step on a zero gradient is 0/0:
# with 1e-6 the float16 checks test the clips, not optax.
ADAM_EPS = 1e-6


def _adam(learning_rate):
    return optax.adam(learning_rate, eps=ADAM_EPS)


def zclip_adam(learning_rate, alpha=0.97, z_thresh=2.5, warmup_steps=5, max_grad_norm=100.0):
    clip = optclip.zclip(alpha, z_thresh, max_grad_norm, warmup_steps=warmup_steps)
    return optax.chain(clip, _adam(learning_rate))


def adagc_adam(learning_rate, lambda_abs=1.0, lambda_rel=1.05, beta=0.98, warmup_steps=5):
    clip = optclip.adagc(lambda_abs, lambda_rel, beta, warmup_steps)
    return optax.chain(clip, _adam(learning_rate))


def skip_step_adam(learning_rate, sigma_factor=3.0):
    # The window sizes the state, so it is fixed here rather than injected.
    return optclip.skip_step(_adam(learning_rate), 8, sigma_factor, min_history=4)


CASES = [
    Case("acclip", optclip.acclip, dict(learning_rate=0.1), "b2"),
    Case(
        "acclip_alpha2",
        optclip.acclip,
        dict(learning_rate=0.1, alpha=2.0, initial_threshold=1.0),
        "alpha",
    ),
    Case(
        "acclip_rms",
        optclip.acclip,
        dict(learning_rate=0.01, rms_scale=True, initial_threshold=0.0),
        "b1",
    ),
    Case(
        "acclip_wd_seeded",
        optclip.acclip,
        dict(learning_rate=0.1, weight_decay=1e-2, alpha=1.5, initial_threshold=None),
        "eps",
    ),
    Case("gclip", optclip.gclip, dict(learning_rate=0.1, threshold=1.0), "threshold"),
    Case("gclip_momentum", optclip.gclip, dict(learning_rate=0.1, threshold=1.0, b1=0.9), "b1"),
    Case("cclip", optclip.cclip, dict(learning_rate=0.1, threshold=0.5, b1=0.9), "threshold"),
    Case("clipped_gd", optclip.clipped_gd, dict(learning_rate=0.1, gamma=1.0), "gamma"),
    Case("normalized_gd", optclip.normalized_gd, dict(learning_rate=0.1, beta=1.0), "beta"),
    Case(
        "normalized_momentum_sgd",
        optclip.normalized_momentum_sgd,
        dict(learning_rate=0.1),
        "b1",
    ),
    Case(
        "clip_momentum_sgd",
        optclip.clip_momentum_sgd,
        dict(learning_rate=0.1, gamma=0.2, nu=0.7),
        "nu",
    ),
    Case("generalized_signsgd", optclip.generalized_signsgd, dict(learning_rate=0.01), "b2"),
    Case("signum", optclip.generalized_signsgd, dict(learning_rate=0.01, b2=0.0), "b1"),
    Case("acclip_robust", optclip.acclip, dict(learning_rate=0.1, robust=True), "spike_factor"),
    Case(
        "acclip_robust_rms_seeded",
        optclip.acclip,
        dict(learning_rate=0.01, rms_scale=True, robust=True, initial_threshold=None),
        "b2",
    ),
    Case(
        "acclip_robust_tau1",
        optclip.acclip,
        dict(learning_rate=0.1, robust=True, initial_threshold=1.0, spike_factor=2.0),
        "spike_factor",
    ),
    Case("zclip_adam", zclip_adam, dict(learning_rate=0.01), "z_thresh"),
    Case("adagc_adam", adagc_adam, dict(learning_rate=0.01), "lambda_rel"),
    Case(
        "spam",
        optclip.spam,
        dict(learning_rate=0.01, interval=10, warmup_steps=4, spike_free_steps=2),
        "threshold",
    ),
    Case(
        "spam_wd",
        optclip.spam,
        dict(
            learning_rate=0.01,
            weight_decay=0.1,
            threshold=10.0,
            interval=10,
            warmup_steps=4,
            spike_free_steps=2,
        ),
        "b1",
    ),
    Case("skip_step_adam", skip_step_adam, dict(learning_rate=0.01), "sigma_factor"),
]


# Further configurations of an optimizer whose default configuration runs in every shared test:
# every test that takes one of these cases runs in the slow tier (CI runs it too), which keeps the
# default tier within 5 minutes on 2 cores.
SLOW_CASES = {"acclip_robust_rms_seeded", "acclip_robust_tau1", "spam_wd"}


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, Case) and v.name in SLOW_CASES for v in params.values()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=CASES, ids=str)
def case(request) -> Case:
    return request.param


SHAPES = {"w": (4, 3), "b": (3,), "s": ()}


def heavy_tailed_grads(
    steps: int = 32,
    seed: int = 0,
    df: float = 1.5,
    spike_at: int = 7,
    zero_at: int = 3,
    spike: float = 1e6,
) -> list[dict[str, np.ndarray]]:
    """Student-t (df 1.5, infinite variance) gradients on a multi-leaf tree.

    One step is all zeros and one step is a ``spike``-times copy of its neighbour.
    """
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        g = {k: rng.standard_t(df, size=s).astype(np.float32) for k, s in SHAPES.items()}
        if t == zero_at:
            g = {k: np.zeros_like(v) for k, v in g.items()}
        if t == spike_at:
            g = {k: v * np.float32(spike) for k, v in g.items()}
        out.append(g)
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child Python, with the checkout first on its path, so
    an example or worker imports this optclip whether or not it is pip-installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else ""), **overrides}


def initial_params(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _persistent_compilation_cache() -> None:
    """Compiled programs shared between tests and pytest-xdist workers: many tests build the
    same optimizer on the same tree, a program JAX's in-memory cache does not see as equal
    (a new closure each time) but XLA's persistent cache does (same HLO). ``off`` in
    ``OPTCLIP_TEST_COMPILATION_CACHE`` turns it off; a path moves it."""
    import tempfile

    import jax

    from optclip._requirements import release

    folder = os.environ.get("OPTCLIP_TEST_COMPILATION_CACHE")
    # On jax 0.6.0 the cache handed INGD's while loop another program's executable (its tests
    # failed with it and passed without); it is used where the suite passed with it, cold and
    # warm: jax 0.10 (what pip gives Python 3.11) and 0.12.
    if folder == "off" or release(jax.__version__) < (0, 10):
        return
    folder = folder or os.path.join(
        tempfile.gettempdir(), f"optclip-test-xla-cache-{jax.__version__}"
    )
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_persistent_compilation_cache()


def unset_gamma_as_zero(tree):
    """``tree`` with AdaGC's ``gamma = +inf`` entries (a leaf with no nonzero norm yet, no
    threshold: its value at init, docs/numerics.md) as 0, for checks that a state is finite."""

    def fix(x):
        if isinstance(x, optclip.AdaGCState):
            return x._replace(gamma=jnp.where(jnp.isposinf(x.gamma), 0.0, x.gamma))
        return x

    return jax.tree.map(fix, tree, is_leaf=lambda x: isinstance(x, optclip.AdaGCState))
