"""`optclip.record_norms`: per-leaf norms in and out of any chain, the updates untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip

_PARAMS = {"layers": [{"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}], "out": jnp.zeros(3)}
_PATHS = ("layers.0.bias", "layers.0.kernel", "out")  # the tree's leaf order, dotted


def _grads(rng, scale=1.0):
    return jax.tree.map(
        lambda p: jnp.asarray(scale * rng.standard_t(2.0, p.shape), jnp.float32), _PARAMS
    )


def _by_path(tree):
    leaves = jax.tree.leaves(tree)
    return {path: np.asarray(leaf, np.float64) for path, leaf in zip(_PATHS, leaves, strict=True)}


def _norms(tree):  # the Euclidean norm of each leaf, in float64, from the definition
    return {path: float(np.sqrt(np.sum(np.square(x)))) for path, x in _by_path(tree).items()}


_CHAINS = {  # the links of each chain
    "agc_adam": lambda: [optax.adaptive_grad_clip(0.01), optax.adam(1e-2)],
    "gclip_acclip": lambda: [optclip.clip_by_global_norm(1.0), optclip.acclip(0.1)],
    "adagc_adam": lambda: [optclip.adagc(warmup_steps=2), optax.adam(1e-2)],
}


@pytest.mark.parametrize("name", sorted(_CHAINS))
@pytest.mark.parametrize("where", ["whole", "first_link"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_updates_are_bit_identical_and_norms_are_each_leafs(name, where, jit):
    plain = optax.chain(*_CHAINS[name]())
    first, *rest = _CHAINS[name]()
    if where == "whole":
        watched = optclip.record_norms(optax.chain(first, *rest))
        seen = plain  # what the watched part puts out: the whole chain's update
    else:
        watched = optax.chain(optclip.record_norms(first), *rest)
        seen = _CHAINS[name]()[0]  # the first link alone, fed the same gradients
    wrap = jax.jit if jit else lambda f: f
    # Eager, every op runs alone: bit for bit. Jitted, the norms add readers of the watched
    # output, which may change how XLA fuses it with the next link (multiply-adds contracted or
    # not); wrapping the whole chain left XLA:CPU's program for the update unchanged.
    exact = not jit or (where == "whole" and jax.default_backend() == "cpu")
    plain_update, watched_update = wrap(plain.update), wrap(watched.update)
    p_state, w_state, s_state = plain.init(_PARAMS), watched.init(_PARAMS), seen.init(_PARAMS)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = _grads(rng)
        p_out, p_state = plain_update(grads, p_state, _PARAMS)
        w_out, w_state = watched_update(grads, w_state, _PARAMS)
        s_out, s_state = seen.update(grads, s_state, _PARAMS)
        for a, b in zip(jax.tree.leaves(p_out), jax.tree.leaves(w_out), strict=True):
            if exact:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            else:  # float rounding, as much as jit moves the plain chain from eager (measured)
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
        stats = optclip.statistics(w_state)
        g_norms, u_norms = _norms(grads), _norms(s_out)
        for path in _PATHS:
            grad_norm = float(stats[f"record_norms/grad_norm/{path}"])
            update_norm = float(stats[f"record_norms/update_norm/{path}"])
            assert grad_norm == pytest.approx(g_norms[path], rel=1e-5)
            assert update_norm == pytest.approx(u_norms[path], rel=1e-5)
            removed = float(stats[f"record_norms/removed/{path}"])
            assert removed == pytest.approx(1.0 - u_norms[path] / g_norms[path], abs=1e-5)


def test_the_recommended_chain_reports_what_agc_removed_per_tensor():
    # AGC clips a leaf to 0.01 of its parameter norm (optax's unit-wise rule, here one unit
    # per leaf row); at these parameters and gradients it removes most of the large leaf.
    params = {"big": jnp.ones((2, 2)), "small": jnp.ones((2, 2))}
    grads = {"big": jnp.full((2, 2), 10.0), "small": jnp.full((2, 2), 1e-3)}
    tx = optax.chain(optclip.record_norms(optax.adaptive_grad_clip(0.01)), optax.adam(1e-3))
    _, state = tx.update(grads, tx.init(params), params)
    stats = jax.device_get(optclip.statistics(state))
    assert set(stats) == {
        f"record_norms/{k}/{leaf}"
        for k in ("grad_norm", "update_norm", "removed")
        for leaf in ("big", "small")
    } | {"scale_by_adam/count"}
    # optax's AGC works per output unit of a 2-D leaf (each column): unit norm sqrt(2), so each
    # unit's gradient (norm 10 sqrt(2)) becomes 0.01 sqrt(2): the leaf keeps 0.001 of its norm.
    assert stats["record_norms/grad_norm/big"] == pytest.approx(20.0)
    assert stats["record_norms/removed/big"] == pytest.approx(1.0 - 1e-3, rel=1e-5)
    assert stats["record_norms/removed/small"] == 0.0  # under the limit: untouched


def test_state_is_scalars_per_leaf_and_keeps_its_dtypes_through_a_loop():
    tx = optclip.record_norms(optax.adam(1e-2))
    grads = jax.tree.map(lambda p: jnp.ones_like(p, jnp.bfloat16), _PARAMS)
    state = tx.init(_PARAMS)
    for field in ("grad_norm", "update_norm", "removed"):
        leaves = jax.tree.leaves(getattr(state, field))
        assert len(leaves) == len(_PATHS)
        assert all(x.shape == () and x.dtype == jnp.float32 for x in leaves), field
        assert all(float(x) == 0.0 for x in leaves), field  # zero before the first step
    # fori_loop needs the state's tree, shapes and dtypes unchanged by a step.
    body = lambda _, s: tx.update(grads, s, _PARAMS)[1]
    looped = jax.lax.fori_loop(0, 3, body, state)
    assert jax.tree.structure(looped) == jax.tree.structure(state)
    assert float(optclip.statistics(looped)["record_norms/grad_norm/out"]) == pytest.approx(
        np.sqrt(3.0)
    )


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_zero_tiny_and_huge_gradients_give_finite_norms(scale):
    tx = optclip.record_norms()  # the identity: nothing removed
    grads = jax.tree.map(lambda p: jnp.full(p.shape, scale, jnp.float32), _PARAMS)
    _, state = jax.jit(tx.update)(grads, tx.init(_PARAMS))
    stats = optclip.statistics(state)
    for path, x in _by_path(grads).items():
        expected = float(np.sqrt(x.size)) * scale
        assert float(stats[f"record_norms/grad_norm/{path}"]) == pytest.approx(expected, rel=1e-5)
        assert float(stats[f"record_norms/removed/{path}"]) == 0.0


def test_a_nan_leaf_shows_as_that_leafs_nan_norm_outside_apply_if_finite():
    grads = _grads(np.random.default_rng(1))
    grads["out"] = grads["out"].at[1].set(jnp.nan)
    tx = optclip.record_norms(optax.apply_if_finite(optax.adam(1e-2), max_consecutive_errors=3))
    out, state = tx.update(grads, tx.init(_PARAMS), _PARAMS)
    stats = optclip.statistics(state)
    assert np.isnan(float(stats["record_norms/grad_norm/out"]))
    assert np.isfinite(float(stats["record_norms/grad_norm/layers.0.kernel"]))
    assert float(stats["apply_if_finite/notfinite_count"]) == 1.0
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(out))  # skipped
    # Inside apply_if_finite the skipped step's norms are dropped with the inner state.
    tx = optax.apply_if_finite(optclip.record_norms(optax.adam(1e-2)), max_consecutive_errors=3)
    _, state = tx.update(grads, tx.init(_PARAMS), _PARAMS)
    assert float(optclip.statistics(state)["record_norms/grad_norm/out"]) == 0.0
    # Without a guard, the NaN reaches the update and the norms (never hidden).
    tx = optclip.record_norms(optax.adam(1e-2))
    out, state = tx.update(grads, tx.init(_PARAMS), _PARAMS)
    assert np.isnan(np.asarray(out["out"])).any()
    assert np.isnan(float(optclip.statistics(state)["record_norms/update_norm/out"]))


def test_works_under_inject_hyperparams_multi_steps_and_forwards_extra_args():
    make = lambda learning_rate: optax.chain(
        optclip.record_norms(optax.adaptive_grad_clip(0.01)), optax.adam(learning_rate)
    )
    tx = optax.MultiSteps(optax.inject_hyperparams(make)(learning_rate=1e-2), every_k_schedule=2)
    plain = optax.MultiSteps(optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(1e-2)), 2)
    rng = np.random.default_rng(2)
    state, p_state = tx.init(_PARAMS), plain.init(_PARAMS)
    for _ in range(4):
        grads = _grads(rng)
        out, state = jax.jit(tx.update)(grads, state, _PARAMS)
        p_out, p_state = plain.update(grads, p_state, _PARAMS)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(p_out), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    stats = optclip.statistics(state)
    assert float(stats["hyperparams/learning_rate"]) == pytest.approx(1e-2)
    assert int(stats["multi_steps/gradient_step"]) == 2
    assert {f"record_norms/grad_norm/{p}" for p in _PATHS} <= set(stats)
    # skip_step reads the loss from `value`: the wrapper passes it on.
    tx = optclip.record_norms(optclip.skip_step(optax.sgd(0.1)))
    _, state = tx.update(_grads(rng), tx.init(_PARAMS), _PARAMS, value=jnp.float32(1.0))
    assert int(optclip.statistics(state)["skip_step/losses_seen"]) == 1


def test_flax_nnx_optimizer_names_leaves_by_their_module_path():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            # nnx.List is new in flax 0.12; flax 0.11 takes a plain list of modules.
            layers = getattr(nnx, "List", list)
            self.layers = layers([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](jax.nn.relu(self.layers[0](x)))

    model = Model(nnx.Rngs(0))
    make = lambda: optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(1e-2))
    optimizer = nnx.Optimizer(model, optclip.record_norms(make()), wrt=nnx.Param)
    x = jnp.ones((5, 3))
    loss = lambda m: jnp.mean(m(x) ** 2)
    params = nnx.state(model, nnx.Param)
    grads = nnx.grad(loss)(model)
    expected, _ = make().update(grads, make().init(params), params)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(loss)(model))
        return optclip.statistics(optimizer.opt_state)

    stats = step(model, optimizer)
    paths = [f"layers.{i}.{name}" for i in (0, 1) for name in ("bias", "kernel")]
    assert {
        k.removeprefix("record_norms/update_norm/") for k in stats if "update_norm" in k
    } == set(paths)
    for path in paths:
        i, name = path.split(".")[1:]
        want = float(jnp.linalg.norm(expected["layers"][int(i)][name][...].ravel()))
        got = float(stats[f"record_norms/update_norm/{path}"])
        assert got == pytest.approx(want, rel=1e-5), path


def test_a_function_in_place_of_a_transformation_raises_naming_inner():
    with pytest.raises(TypeError, match=r"`inner` must be an optax\.GradientTransformation"):
        optclip.record_norms(optax.adam)


def test_inside_a_label_only_that_labels_leaves_are_recorded_under_the_label():
    labels = {"layers": [{"kernel": "x", "bias": "y"}], "out": "x"}
    tx = optax.multi_transform({"x": optclip.record_norms(), "y": optax.sgd(0.1)}, labels)
    grads = _grads(np.random.default_rng(3))
    _, state = jax.jit(tx.update)(grads, tx.init(_PARAMS), _PARAMS)
    stats = optclip.statistics(state)
    assert set(stats) == {
        f"x/record_norms/{field}/{path}"
        for field in ("grad_norm", "update_norm", "removed")
        for path in ("layers.0.kernel", "out")
    }
    expected = _norms(grads)
    for path in ("layers.0.kernel", "out"):
        got = float(stats[f"x/record_norms/grad_norm/{path}"])
        assert got == pytest.approx(expected[path], rel=1e-5)


def test_the_state_can_be_donated():
    """No buffer appears twice in the state: a donated step would give it away twice."""
    params = {"b": jnp.zeros(3), "w": jnp.ones((3, 2))}
    tx = optax.chain(optclip.record_norms(optax.adaptive_grad_clip(0.01)), optax.adam(1e-2))
    step = jax.jit(lambda s, g, p: tx.update(g, s, p)[1], donate_argnums=0)
    grads = jax.tree.map(jnp.ones_like, params)
    step(step(tx.init(params), grads, params), grads, params)
