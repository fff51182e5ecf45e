"""Stochastic INGD (thesis ch. 5, Algorithm 3) as an optax transformation."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optclip

# ---------------------------------------------------------------------------
# Stochastic INGD
# ---------------------------------------------------------------------------


def _reference_trajectory(grad_fn, x1, p, q, beta, us):
    """Algorithm 3 in NumPy (float64), given the interpolation draws u_t."""
    x = np.asarray(x1, np.float64)
    y = x.copy()
    m = None
    xs, ys = [], []
    for u in us:
        g = grad_fn(y)
        m = g if m is None else beta * m + (1 - beta) * g
        x_next = x - m / (p * np.linalg.norm(m) + q)
        y = x + u * (x_next - x)
        x = x_next
        xs.append(x.copy())
        ys.append(y.copy())
    return np.array(xs), np.array(ys)


def test_stochastic_ingd_matches_numpy_reference():
    p, q, beta, steps = 2.0, 1.0, 0.8, 40
    key = jax.random.key(7)
    us = [float(jax.random.uniform(jax.random.fold_in(key, t))) for t in range(steps)]
    target = np.array([0.5, -1.0, 2.0])
    grad_np = lambda y: np.sign(y - target) + 0.3 * (y - target)
    xs_ref, ys_ref = _reference_trajectory(grad_np, np.zeros(3), p, q, beta, us)

    tx = optclip.stochastic_ingd(p, q, beta, key=key)
    params = jnp.zeros(3)
    state = tx.init(params)
    for t in range(steps):
        g = jnp.sign(params - target) + 0.3 * (params - target)
        u, state = jax.jit(tx.update)(g, state, params)
        params = optax.apply_updates(params, u)
        np.testing.assert_allclose(params, ys_ref[t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            optclip.ingd_iterate(params, state), xs_ref[t], rtol=1e-5, atol=1e-5
        )


_PARAMS = {"a": jnp.ones(3), "b": -jnp.ones(2)}


@jax.jit
def _iterates(hparams, grads):
    """x_0, ..., x_5 of Stochastic INGD from ``_PARAMS`` along ``grads`` (5 steps stacked). The
    hyperparameters are injected, so every example runs one compiled program."""
    tx = optax.inject_hyperparams(optclip.stochastic_ingd)(**hparams, key=1)

    def step(carry, g):
        params, state = carry
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        return (params, state), optclip.ingd_iterate(params, state)

    state = tx.init(_PARAMS)
    _, xs = jax.lax.scan(step, (_PARAMS, state), grads)
    x0 = optclip.ingd_iterate(_PARAMS, state)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), x0, xs)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.floats(0.1, 10.0),
    st.floats(0.0, 20.0),
    st.floats(0.0, 0.99),
    st.sampled_from([1e-6, 1.0, 1e3, 1e20]),
)
def test_iterates_move_at_most_one_over_p(p, q, beta, scale):
    rng = np.random.default_rng(0)
    grads = {k: rng.standard_t(1.5, (5, *v.shape)) * scale for k, v in _PARAMS.items()}
    hparams = {"p": p, "q": q, "beta": beta}
    xs = _iterates({k: np.float32(v) for k, v in hparams.items()}, jax.tree.map(np.float32, grads))
    # ||x_t - x_{t-1}|| over the whole tree, in float64.
    diffs = [np.diff(np.asarray(x, np.float64), axis=0) for x in jax.tree.leaves(xs)]
    steps = np.sqrt(sum(np.sum(d**2, axis=1) for d in diffs))
    assert np.all(steps <= (1 / p) * (1 + 1e-5) + 1e-6), steps


def _noisy_l1_run(tx, steps, seed=0, d=10):
    rng = np.random.default_rng(seed)
    noise = jnp.asarray(rng.normal(scale=0.5, size=(steps, d)), jnp.float32)
    x0 = jnp.asarray(rng.normal(scale=3.0, size=d), jnp.float32)

    def step(carry, xi):
        params, state = carry
        g = jnp.sign(params) + xi  # noisy subgradient of ||x||_1
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        return (params, state), (
            optax.tree.get(state, "momentum_norm"),
            jnp.sum(jnp.abs(optclip.ingd_iterate(params, state))),
        )

    _, (m_norms, f_vals) = jax.jit(lambda: jax.lax.scan(step, (x0, tx.init(x0)), noise))()
    return np.asarray(m_norms), np.asarray(f_vals), float(jnp.sum(jnp.abs(x0)))


def test_reaches_small_momentum_on_noisy_l1():
    m_norms, f_vals, f0 = _noisy_l1_run(optclip.stochastic_ingd(p=1.0, q=10.0, beta=0.99), 3000)
    assert f_vals[-1] < 0.2 * f0
    # (delta, eps)-stationarity shows up as a small running momentum near the kink.
    hit = np.argmax(m_norms < 0.5)
    assert m_norms[hit] < 0.5 and hit < 3000


def test_relu_regression_with_noisy_gradients():
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(256, 3)), jnp.float32)
    ys = jax.nn.relu(xs @ jnp.array([1.0, -2.0, 0.5]))
    params = {"w": jnp.asarray(rng.normal(size=(3, 8)) * 0.5, jnp.float32), "v": jnp.ones(8) * 0.1}

    def loss(p, idx):
        pred = jax.nn.relu(xs[idx] @ p["w"]) @ p["v"]
        return jnp.mean(jnp.abs(pred - ys[idx]))

    tx = optclip.stochastic_ingd(p=1.0, q=5.0, beta=0.9, key=0)
    idx = jnp.asarray(rng.integers(0, 256, size=(1500, 16)))

    def step(carry, i):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p, i), s, p)
        return (optax.apply_updates(p, u), s), optax.tree.get(s, "momentum_norm")

    (p_end, s_end), m_norms = jax.jit(lambda: jax.lax.scan(step, (params, tx.init(params)), idx))()
    full = jnp.arange(256)
    assert float(loss(optclip.ingd_iterate(p_end, s_end), full)) < 0.5 * float(loss(params, full))
    assert float(np.min(np.asarray(m_norms))) < 0.5 * float(np.asarray(m_norms)[0])


def _trajectory(tx, steps=20, jit=True):
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for t in range(steps):
        g = jax.tree.map(lambda x, t=t: jnp.sign(x) + 0.1 * t, params)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(params)
    return out, state


def test_same_key_same_trajectory_any_key_form_and_jit():
    a, _ = _trajectory(optclip.stochastic_ingd(key=jax.random.key(5)))
    b, _ = _trajectory(optclip.stochastic_ingd(key=jax.random.PRNGKey(5)))
    c, _ = _trajectory(optclip.stochastic_ingd(key=5))
    with chex.fake_jit():
        d, _ = _trajectory(optclip.stochastic_ingd(key=jax.random.key(5)))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(a, c)
    chex.assert_trees_all_close(a, d, rtol=1e-6)
    e, _ = _trajectory(optclip.stochastic_ingd(key=6))
    assert not np.allclose(np.asarray(a[-1]["a"]), np.asarray(e[-1]["a"]))


def test_inject_hyperparams_and_multisteps():
    plain, _ = _trajectory(optclip.stochastic_ingd(p=2.0, q=3.0, beta=0.8, key=1))
    inj, state = _trajectory(
        optax.inject_hyperparams(optclip.stochastic_ingd)(p=2.0, q=3.0, beta=0.8, key=1)
    )
    chex.assert_trees_all_close(plain, inj, rtol=1e-6)
    assert set(state.hyperparams) >= {"p", "q", "beta"}
    multi, _ = _trajectory(optax.MultiSteps(optclip.stochastic_ingd(key=1), every_k_schedule=1))
    single, _ = _trajectory(optclip.stochastic_ingd(key=1))
    chex.assert_trees_all_close(multi, single, rtol=1e-6)


def test_chains_after_weight_decay_and_other_transforms():
    params = {"w": jnp.array([1.0, -1.0])}
    g = {"w": jnp.array([0.0, 0.0])}
    tx = optclip.stochastic_ingd(p=1.0, q=0.0, key=0, weight_decay=0.5)
    u, state = tx.update(g, tx.init(params), params)
    # m_1 = 0.5 * w: the step is -m/||m|| times u, towards the origin.
    assert float(optax.tree.get(state, "momentum_norm")) == pytest.approx(0.5 * 2**0.5, rel=1e-6)
    x = optclip.ingd_iterate(optax.apply_updates(params, u), state)
    np.testing.assert_allclose(x["w"], np.array([1.0, -1.0]) * (1 - 1 / 2**0.5), rtol=1e-6)
    clipped = optax.chain(optclip.clip_by_global_norm(1.0), optclip.stochastic_ingd(key=0))
    _trajectory(clipped)


def test_flax_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optclip.stochastic_ingd(key=0), wrt=nnx.Param)
    x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))
    loss = lambda m: jnp.mean(jnp.abs(m(x) - y))
    before = float(loss(model))
    for _ in range(50):
        opt.update(model, nnx.grad(loss)(model))
    assert float(loss(model)) < before


def test_state_survives_flatten_and_orbax_round_trip(tmp_path):
    tx = optclip.stochastic_ingd(key=jax.random.key(2))
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    full, _ = _trajectory(tx, 20)
    first, state = _trajectory(tx, 10)
    leaves, treedef = jax.tree.flatten(state)
    state = jax.tree.unflatten(treedef, leaves)
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        ocp = None
    if ocp is not None:
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp_path / "s", {"params": first[-1], "state": state})
        ckpt.wait_until_finished()
        target = jax.tree.map(
            ocp.utils.to_shape_dtype_struct, {"params": first[-1], "state": state}
        )
        restored = ckpt.restore(tmp_path / "s", target)
        params, state = restored["params"], restored["state"]
        assert (
            isinstance(state, optclip.StochasticIngdState) or jax.tree.structure(state) == treedef
        )
        state = jax.tree.unflatten(treedef, jax.tree.leaves(state))
    else:
        params = first[-1]
    update = jax.jit(tx.update)
    for t in range(10, 20):
        g = jax.tree.map(lambda x, t=t: jnp.sign(x) + 0.1 * t, params)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    chex.assert_trees_all_equal(params, full[-1])


def test_output_index_rule():
    idx = [int(optclip.ingd_output_index(k, 100, 10)) for k in range(200)]
    assert min(idx) >= 1 and max(idx) <= 90
    assert sum(i == 1 for i in idx) >= 5  # max(i - K, 1) piles up at 1
    with pytest.raises(ValueError, match="num_steps"):
        optclip.ingd_output_index(0, 0, 1)


@pytest.mark.parametrize(
    "kwargs,arg", [(dict(p=0.0), "p"), (dict(q=-1.0), "q"), (dict(beta=1.0), "beta")]
)
def test_stochastic_ingd_bad_input(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        optclip.stochastic_ingd(**kwargs)


def test_oracle_bound_formula():
    got = optclip.ingd_oracle_bound(0.1, 0.2, 2.0, 5.0, failure_probability=0.1)
    want = 192 * 5.0 * 4.0 / (0.2**3 * 0.1) * math.log(4 * 5.0 / (0.1 * 0.1 * 0.2))
    assert got == pytest.approx(want)
