"""optax's own optimizer checks (``optax/_src/alias_test.py``), re-created for optclip.

Every full optimizer must: solve a parabola and the Rosenbrock function in
float32 and complex64 (complex as optax treats it: moduli ``|x|`` and norms
from ``|x|^2``); compile its step once; survive ``optax.tree.map_params``;
accept extra keyword arguments to ``update``; give the same update and state
under :func:`optax.inject_hyperparams`; return updates in the gradients'
dtype; keep every state leaf's dtype through an update, from float16 to
complex128; and give zero updates on the accumulating steps of
:class:`optax.MultiSteps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.conftest import adagc_adam, skip_step_adam, zclip_adam

# A complex leaf cast to a real dtype loses its imaginary part: that is a bug here, not a warning.
pytestmark = pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]

    def make(self) -> optax.GradientTransformation:
        return self.factory(**self.kwargs)

    def __str__(self) -> str:
        return self.name


# One entry per full optimizer, at hyperparameters that solve both targets.
OPTIMIZERS = [
    Optimizer("acclip", optclip.acclip, dict(learning_rate=1e-2, initial_threshold=1.0)),
    Optimizer("acclip_rms", optclip.acclip, dict(learning_rate=1e-2, rms_scale=True)),
    Optimizer("gclip", optclip.gclip, dict(learning_rate=1e-3, threshold=10.0, b1=0.9)),
    Optimizer("cclip", optclip.cclip, dict(learning_rate=1e-3, threshold=10.0, b1=0.9)),
    Optimizer("clipped_gd", optclip.clipped_gd, dict(learning_rate=1e-3, gamma=10.0)),
    Optimizer("normalized_gd", optclip.normalized_gd, dict(learning_rate=1e-2, beta=10.0)),
    Optimizer("normalized_momentum_sgd", optclip.normalized_momentum_sgd, dict(learning_rate=1e-3)),
    Optimizer(
        "clip_momentum_sgd", optclip.clip_momentum_sgd, dict(learning_rate=1e-3, gamma=10.0, nu=0.7)
    ),
    Optimizer("generalized_signsgd", optclip.generalized_signsgd, dict(learning_rate=2e-3)),
    Optimizer(
        "stochastic_ingd",
        optclip.stochastic_ingd,
        dict(p=100.0, q=1000.0, beta=0.9, key=jax.random.key(0)),
    ),
    Optimizer("acclip_robust", optclip.acclip, dict(learning_rate=1e-2, robust=True)),
    Optimizer(
        "acclip_rms_robust", optclip.acclip, dict(learning_rate=1e-2, rms_scale=True, robust=True)
    ),
    # b2 = 0.99: inject_hyperparams stores b2 in float32, and 1 - float32(0.999) is 1.3e-5 off
    # 1 - 0.999, which moves sqrt(v) in the state by 6e-6, past this file's 1e-6.
    Optimizer("spam", optclip.spam, dict(learning_rate=1e-2, b2=0.99)),
    Optimizer("zclip_adam", zclip_adam, dict(learning_rate=1e-2)),
    Optimizer("adagc_adam", adagc_adam, dict(learning_rate=1e-2)),
    Optimizer("skip_step_adam", skip_step_adam, dict(learning_rate=1e-2)),
]


# Three times optax's budget: these methods have no acceleration, and gradient descent at
# its largest stable step (about 1e-3 here) needs ~25k steps along complex Rosenbrock's valley.
STEPS = 30_000


def parabola(dtype):
    start = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    solution = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
    if jnp.iscomplexobj(start):
        solution = solution * (1 + 1j)
    return start, solution, lambda x: jnp.sum(jnp.abs(x - solution) ** 2)


def rosenbrock(dtype):
    a = jnp.asarray(1.0 + 1.0j if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0, dtype)
    start = jnp.zeros(2, dtype)
    solution = jnp.stack([a, a**2])

    def objective(x):
        return jnp.abs(a - x[0]) ** 2 + 100.0 * jnp.abs(x[1] - x[0] ** 2) ** 2

    return start, solution, objective


def make_step(tx, objective, traces: list):
    @jax.jit
    def step(params, state):
        traces.append(1)
        grads = jax.grad(objective)(params)
        # jax's gradient of a real function of complex x is conj(df/dx*): conjugate for descent.
        grads = jax.tree.map(jnp.conj, grads)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["float32", "complex64"])
@pytest.mark.parametrize("target", [parabola, rosenbrock], ids=["parabola", "rosenbrock"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_solves_target_and_compiles_once(opt, target, dtype):
    tx = opt.make()
    params, solution, objective = target(dtype)
    state = optax.tree.map_params(tx, lambda v: v, tx.init(params))
    traces: list = []
    step = make_step(tx, objective, traces)
    for _ in range(2):
        params, state = step(params, state)
    assert len(traces) == 1, "the second step compiled again"

    @jax.jit
    def run(params, state):
        return jax.lax.fori_loop(0, STEPS, lambda _, c: step(*c), (params, state))

    params, state = run(params, state)
    np.testing.assert_allclose(params, solution, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_update_accepts_extra_keyword_arguments(opt):
    tx = opt.make()
    params, _, objective = rosenbrock(jnp.float32)

    @jax.jit
    def step(params, state):
        grads = jax.grad(objective)(params)
        updates, state = tx.update(grads, state, params, an_argument_nobody_expects=1)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(2):
        params, state = step(params, state)
    assert bool(jnp.all(jnp.isfinite(params)))


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_inject_hyperparams_gives_the_same_update_and_state(opt):
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
    plain = opt.make()
    injected = optax.inject_hyperparams(opt.factory)(**opt.kwargs)

    updates, state = jax.jit(plain.update)(grads, jax.jit(plain.init)(params), params)
    updates_i, state_i = jax.jit(injected.update)(grads, jax.jit(injected.init)(params), params)

    np.testing.assert_allclose(updates_i[0], updates[0], rtol=1e-6)
    np.testing.assert_allclose(updates_i[1], updates[1], rtol=1e-6)
    plain_leaves = jax.tree.leaves(optax.tree.unwrap_random_key_data(state))
    inner_leaves = jax.tree.leaves(optax.tree.unwrap_random_key_data(state_i.inner_state))
    assert jax.tree.structure(state_i.inner_state) == jax.tree.structure(state)
    for a, b in zip(inner_leaves, plain_leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_updates_keep_the_gradients_dtype(opt, dtype):
    tx = opt.make()
    params = jnp.array([1.0, 2.0], dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    assert updates.dtype == grads.dtype


DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"]


def _enable_x64(on: bool):
    """jax.enable_x64, or jax.experimental.enable_x64 on jax versions before it."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax.experimental import enable_x64

    return enable_x64(on)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_state_dtypes_survive_an_update(opt, dtype):
    with _enable_x64(dtype in ("float64", "complex128")):
        tx = opt.make()
        params, _, objective = parabola(jnp.dtype(dtype))

        @jax.jit
        def step(params, state):
            grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))
            updates, new_state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), new_state

        state = tx.init(params)
        for _ in range(2):
            params, new_state = step(params, state)
            assert params.dtype == jnp.dtype(dtype)
            old = jax.tree.map(lambda x: (x.shape, x.dtype), state)
            new = jax.tree.map(lambda x: (x.shape, x.dtype), new_state)
            assert new == old
            # lax.cond needs both branches to agree on every leaf's dtype and weak type.
            state = jax.lax.cond(jnp.bool_(True), lambda a, b: a, lambda a, b: b, new_state, state)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=str)
def test_multisteps_accumulating_steps_are_zero(opt, dtype):
    tx = optax.MultiSteps(opt.make(), every_k_schedule=4)
    params = jnp.array([1.0, 2.0], dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    assert updates.dtype == grads.dtype
    np.testing.assert_array_equal(np.asarray(updates, np.float32), 0.0)
