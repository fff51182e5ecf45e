"""Compatibility matrix: every optimizer with optax's wrappers, Flax, SPMD sharding and orbax."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optclip
from tests.conftest import CASES, Case, heavy_tailed_grads, initial_params

INGD = Case("stochastic_ingd", optclip.stochastic_ingd, dict(key=0), "p")
ALL = [*CASES, INGD]
STEPS = 6


def has_lr(case):
    return "learning_rate" in case.kwargs


def _grads(steps=STEPS, seed=0, spike=10.0):
    return [jax.tree.map(jnp.asarray, g) for g in heavy_tailed_grads(steps, seed=seed, spike=spike)]


def _run(tx, params, grads, **extra):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params, **extra)
        params = optax.apply_updates(params, u)
    return params, state


def _params():
    return jax.tree.map(jnp.asarray, initial_params())


def _finite(tree):
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    )


@pytest.mark.parametrize("case", ALL, ids=str)
class TestOptaxWrappers:
    def test_chain_with_clipping_schedule_and_weight_decay(self, case):
        kw = dict(case.kwargs)
        if has_lr(case):
            kw["learning_rate"] = optax.linear_schedule(kw["learning_rate"], 0.0, 20)
        tx = optax.chain(
            optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-3), case.factory(**kw)
        )
        params, _ = _run(tx, _params(), _grads())
        assert _finite(params)
        assert not np.allclose(params["w"], _params()["w"])

    def test_inject_every_numeric_hyperparameter_under_jit(self, case):
        injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
        params_i, state = _run(injected, _params(), _grads())
        params_p, _ = _run(case.make(), _params(), _grads())
        chex.assert_trees_all_close(params_i, params_p, rtol=2e-5, atol=1e-6)
        sig = inspect.signature(case.factory)
        numeric = {
            n
            for n, p in sig.parameters.items()
            if isinstance(case.kwargs.get(n, p.default), int | float)
            and not isinstance(case.kwargs.get(n, p.default), bool)
        }
        assert numeric <= set(state.hyperparams), numeric - set(state.hyperparams)

    def test_multisteps_averages_before_stepping(self, case):
        g1, g2 = _grads(2)
        multi = optax.MultiSteps(case.make(), every_k_schedule=2)
        params, _ = _run(multi, _params(), [g1, g2])
        mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
        want, _ = _run(case.make(), _params(), [mean])
        chex.assert_trees_all_close(params, want, rtol=1e-5, atol=1e-6)

    def test_masked_and_multi_transform(self, case):
        masked = optax.masked(case.make(), {"w": True, "b": False, "s": False})
        g = _grads(1)[0]
        u, _ = masked.update(g, masked.init(_params()), _params())
        # optax.masked passes masked-out leaves through unchanged.
        np.testing.assert_array_equal(u["b"], g["b"])
        want, _ = case.make().update(
            {"w": g["w"]}, case.make().init({"w": _params()["w"]}), {"w": _params()["w"]}
        )
        chex.assert_trees_all_close(u["w"], want["w"], rtol=1e-6)
        labels = {"w": "ours", "b": "adam", "s": "adam"}
        tx = optax.multi_transform({"ours": case.make(), "adam": optax.adam(1e-2)}, labels)
        params, _ = _run(tx, _params(), _grads())
        alone, _ = _run(case.make(), {"w": _params()["w"]}, [{"w": g["w"]} for g in _grads()])
        chex.assert_trees_all_close(params["w"], alone["w"], rtol=1e-5, atol=1e-6)

    def test_tree_map_params_over_the_state(self, case):
        tx = case.make()
        state = tx.init(_params())
        zeroed = optax.tree_map_params(tx, lambda p: jnp.full_like(p, 7.0), state)
        assert jax.tree.structure(zeroed) == jax.tree.structure(state)
        n_params = sum(1 for _ in jax.tree.leaves(_params()))
        mirrored = [x for x in jax.tree.leaves(zeroed) if x.size > 1 and bool(jnp.all(x == 7.0))]
        assert len(mirrored) >= n_params - 1 or not any(x.size > 1 for x in jax.tree.leaves(state))

    def test_extra_keyword_arguments_pass_through_chain(self, case):
        tx = optax.chain(case.make(), optax.identity())
        params, _ = _run(tx, _params(), _grads(2), some_extra_arg=3)
        assert _finite(params)

    def test_flax_nnx_optimizer_trains(self, case):
        from flax import nnx

        model = nnx.Sequential(
            nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1))
        )
        opt = nnx.Optimizer(model, case.make(), wrt=nnx.Param)
        x = jax.random.normal(jax.random.key(0), (32, 4))
        y = jnp.sin(x[:, :1])
        loss = lambda m: jnp.mean((m(x) - y) ** 2)

        @nnx.jit
        def step(model, opt):
            opt.update(model, nnx.grad(loss)(model))

        before = float(loss(model))
        for _ in range(60):
            step(model, opt)
        assert float(loss(model)) < 0.9 * before

    def test_flax_linen_train_state(self, case):
        import flax.linen as nn
        from flax.training import train_state

        model = nn.Dense(1)
        x = jax.random.normal(jax.random.key(0), (32, 4))
        y = x @ jnp.array([[1.0], [-1.0], [0.5], [0.0]])
        params = model.init(jax.random.key(1), x)["params"]
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=case.make())

        @jax.jit
        def step(state):
            grads = jax.grad(lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(
                state.params
            )
            return state.apply_gradients(grads=grads)

        loss = lambda s: float(jnp.mean((s.apply_fn({"params": s.params}, x) - y) ** 2))
        before = loss(state)
        for _ in range(60):
            state = step(state)
        assert loss(state) < 0.9 * before


# ---------------------------------------------------------------------------
# SPMD: 8 simulated CPU devices (conftest sets the XLA flag)
# ---------------------------------------------------------------------------

SPEC = {"w": P("data", "model"), "b": P("model"), "s": P()}


def _mesh(shape):
    return jax.make_mesh(shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _sharded_params(mesh):
    rng = np.random.default_rng(3)
    host = {
        "w": rng.normal(size=(8, 12)).astype(np.float32),
        "b": rng.normal(size=(12,)).astype(np.float32),
        "s": np.float32(0.5),
    }
    return host, {k: jax.device_put(v, NamedSharding(mesh, SPEC[k])) for k, v in host.items()}


def _sharded_grads(steps, mesh):
    rng = np.random.default_rng(4)
    out = []
    for _ in range(steps):
        g = {
            "w": rng.standard_t(1.5, (8, 12)).astype(np.float32),
            "b": rng.standard_t(1.5, (12,)).astype(np.float32),
            "s": np.float32(rng.standard_t(1.5)),
        }
        out.append((g, {k: jax.device_put(v, NamedSharding(mesh, SPEC[k])) for k, v in g.items()}))
    return out


def _state_shardings(tx, params, mesh):
    """State shardings that follow the params; scalars and counts are replicated."""
    return optclip.state_shardings(tx, params, mesh, data_axis=None)


def _sharded_step(tx, params, mesh):
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    state_sh = _state_shardings(tx, params, mesh)
    init = jax.jit(tx.init, out_shardings=state_sh)

    def step(params, state, grads):
        u, state = tx.update(grads, state, params)
        return optax.apply_updates(params, u), state

    return init, jax.jit(step, out_shardings=(param_sh, state_sh), donate_argnums=(0, 1))


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices from conftest")
@pytest.mark.parametrize("case", ALL, ids=str)
def test_sharded_run_equals_single_device_and_state_follows_params(case):
    mesh = _mesh((2, 4))
    tx = case.make()
    host, params = _sharded_params(mesh)
    grads = _sharded_grads(STEPS, mesh)
    init, step = _sharded_step(tx, params, mesh)
    state = init(params)
    # Each state leaf that mirrors a parameter has that parameter's sharding and
    # holds 1/shards of its bytes per device (no silent replication).
    pairs = []
    optax.tree_map_params(
        tx, lambda s, p: pairs.append((s, p)) or s, state, params, transform_non_params=lambda x: x
    )
    for s, p in pairs:
        assert s.sharding.is_equivalent_to(p.sharding, s.ndim)
        per_device = s.nbytes * p.addressable_shards[0].data.size // p.size
        assert s.addressable_shards[0].data.nbytes == per_device
    ref_params = jax.tree.map(jnp.asarray, host)
    ref_state = tx.init(ref_params)
    ref_update = jax.jit(tx.update)
    for g_host, g in grads:
        params, state = step(params, state, g)
        u, ref_state = ref_update(jax.tree.map(jnp.asarray, g_host), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, u)
    for k in host:
        np.testing.assert_allclose(
            np.asarray(params[k]), np.asarray(ref_params[k]), rtol=1e-5, atol=1e-5
        )
    if any(x.size > 1 for x in jax.tree.leaves(state)):
        assert len(pairs) >= 2  # the mirrored leaves were found and checked


# ---------------------------------------------------------------------------
# Orbax checkpoints
# ---------------------------------------------------------------------------

ocp = pytest.importorskip("orbax.checkpoint")
CKPT_CASES = [
    *ALL,
    Case(
        "track_statistics(acclip)",
        lambda **kw: optclip.diagnostics.track_statistics(optclip.acclip(**kw)),
        dict(learning_rate=0.1),
        None,
    ),
]


@pytest.mark.parametrize("case", CKPT_CASES, ids=str)
def test_checkpoint_resume_is_bitwise_identical(case, tmp_path):
    tx = case.make()
    grads = _grads(10, seed=5)
    update = jax.jit(tx.update)

    def steps(params, state, gs):
        for g in gs:
            u, state = update(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state

    p0 = _params()
    full_p, full_s = steps(p0, tx.init(p0), grads)
    mid_p, mid_s = steps(p0, tx.init(p0), grads[:5])
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ckpt", {"params": mid_p, "opt_state": mid_s})
    ckpt.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": mid_p, "opt_state": mid_s})
    restored = ckpt.restore(tmp_path / "ckpt", target)
    r_state = jax.tree.unflatten(jax.tree.structure(mid_s), jax.tree.leaves(restored["opt_state"]))
    res_p, res_s = steps(restored["params"], r_state, grads[5:])
    chex.assert_trees_all_equal(res_p, full_p)
    chex.assert_trees_all_equal(res_s, full_s)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices from conftest")
def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    tx = optclip.acclip(0.1)
    mesh_a, mesh_b = _mesh((2, 4)), _mesh((4, 2))
    host, params = _sharded_params(mesh_a)
    init, step = _sharded_step(tx, params, mesh_a)
    state = init(params)
    grads = _sharded_grads(6, mesh_a)
    for _, g in grads[:3]:
        params, state = step(params, state, g)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "c", {"params": params, "opt_state": state})
    ckpt.wait_until_finished()
    _, params_b = _sharded_params(mesh_b)
    init_b, step_b = _sharded_step(tx, params_b, mesh_b)
    abstract_state = jax.eval_shape(init_b, params_b)
    state_sh = _state_shardings(tx, params_b, mesh_b)
    target = {
        "params": jax.tree.map(
            lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params_b
        ),
        "opt_state": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            state_sh,
        ),
    }
    restored = ckpt.restore(tmp_path / "c", target)
    pb = restored["params"]
    sb = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(restored["opt_state"]))
    assert pb["w"].sharding.is_equivalent_to(NamedSharding(mesh_b, SPEC["w"]), 2)
    for g_host, g in grads[3:]:
        g_b = {k: jax.device_put(v, NamedSharding(mesh_b, SPEC[k])) for k, v in g_host.items()}
        params, state = step(params, state, g)
        pb, sb = step_b(pb, sb, g_b)
    for k in host:
        np.testing.assert_allclose(np.asarray(pb[k]), np.asarray(params[k]), rtol=1e-5, atol=1e-6)
