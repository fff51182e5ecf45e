"""group_small_leaves: the packed layout gives the per-leaf results, for every optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.conftest import CASES

# A model-shaped tree: two weight matrices above the default max_size, small bias and norm
# leaves in float32, and a bfloat16 group of its own.
SHAPES = {
    "dense": {"kernel": (300, 256), "bias": (256,)},
    "norm": {"scale": (256,), "bias": (256,)},
    "head": {"kernel": (256, 300), "bias": (300,)},
    "embed": (3, 7),
}


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    tree = jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s), jnp.float32),
        SHAPES,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    tree["norm"]["bias"] = tree["norm"]["bias"].astype(jnp.bfloat16)
    return tree


def _close(want, have):
    # One bfloat16 rounding step where the float32 values it is rounded from differ in the
    # last place; float32 leaves agree to float32 rounding.
    rtol = 1e-2 if want.dtype == jnp.bfloat16 else 2e-5
    np.testing.assert_allclose(np.asarray(have, np.float32), np.asarray(want, np.float32), rtol)


def _run(tx, steps=4):
    params = _tree(0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for t in range(steps):
        grads = _tree(t + 1, scale=10.0 ** (t - 1))  # 0.1 to 100: clipped and not
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_equals_the_per_leaf_optimizer(case):
    expected = _run(case.make())
    got = _run(optclip.group_small_leaves(case.make()))
    for want, have in zip(expected, got, strict=True):
        assert jax.tree.structure(have) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(have), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            # Global norms sum in another order: equal to float32 rounding.
            np.testing.assert_allclose(
                np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=2e-5, atol=2e-6
            )


def test_stochastic_ingd_and_optax_adam_too():
    for make in (lambda: optclip.stochastic_ingd(key=3), lambda: optax.adam(0.1)):
        for want, have in zip(_run(make()), _run(optclip.group_small_leaves(make())), strict=True):
            jax.tree.map(_close, want, have)


def test_state_is_packed_by_dtype():
    state = optclip.group_small_leaves(optclip.acclip(0.1)).init(_tree(0))
    mu = optax.tree.get(state, "mu")
    large, buffers = mu
    assert [x.shape for x in large] == [(300, 256), (256, 300)]  # leaves in tree order
    # float32: dense bias 256, embed 21, head bias 300, norm scale 256; bfloat16: norm bias.
    assert {k: v.shape for k, v in buffers.items()} == {"float32": (833,), "bfloat16": (256,)}
    assert all(v.dtype == jnp.float32 for v in buffers.values())  # acclip's float32 momentum


@pytest.mark.parametrize("max_size", [0, None])
def test_max_size_bounds(max_size):
    tx = optclip.group_small_leaves(optclip.gclip(0.1, 1.0, b1=0.9), max_size=max_size)
    mu = optax.tree.get(tx.init(_tree(0)), "mu")
    large, buffers = mu
    if max_size == 0:  # nothing packed: the per-leaf program exactly
        assert buffers == {} and len(large) == 7
        want = _run(optclip.gclip(0.1, 1.0, b1=0.9))
        jax.tree.map(np.testing.assert_array_equal, want, _run(tx))
    else:  # everything packed, one buffer per dtype
        assert large == () and set(buffers) == {"float32", "bfloat16"}


def test_inside_and_around_inject_hyperparams_and_multisteps():
    params, grads = _tree(0), _tree(1)
    expected, _ = optclip.acclip(0.05).update(grads, optclip.acclip(0.05).init(params), params)
    inner = optax.inject_hyperparams(optclip.acclip)(learning_rate=0.1)
    outer = optax.inject_hyperparams(
        lambda learning_rate: optclip.group_small_leaves(optclip.acclip(learning_rate))
    )(learning_rate=0.1)
    for tx in (optclip.group_small_leaves(inner), outer):
        state = tx.init(params)
        hyper = optax.tree.get(state, "hyperparams")
        hyper["learning_rate"] = jnp.asarray(0.05)
        updates, _ = jax.jit(tx.update)(grads, state, params)
        jax.tree.map(_close, expected, updates)
    # MultiSteps accumulates in the caller's layout and steps the packed optimizer every k.
    tx = optax.MultiSteps(optclip.group_small_leaves(optclip.acclip(0.05)), every_k_schedule=2)
    state = tx.init(params)
    zero, state = tx.update(grads, state, params)
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(zero))
    updates, state = tx.update(grads, state, params)
    jax.tree.map(_close, expected, updates)


def test_bad_max_size():
    with pytest.raises(ValueError, match=r"max_size.*-1"):
        optclip.group_small_leaves(optax.adam(0.1), max_size=-1)
    with pytest.raises(TypeError, match=r"max_size must be an int >= 0 or None, got 1.5"):
        optclip.group_small_leaves(optax.adam(0.1), max_size=1.5)


def test_updates_with_other_dtypes_than_params_are_refused():
    tx = optclip.group_small_leaves(optax.adam(0.1))
    params = _tree(0)
    grads = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    wanted = r"updates\['norm'\]\['bias'\] is float32 where its param is bfloat16"
    with pytest.raises(TypeError, match=wanted):
        tx.update(grads, tx.init(params), params)


def test_split_small_leaf_is_refused_and_large_one_allowed():
    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.skip("needs 2 CPU devices (tests/conftest.py forces 8 host devices)")
    mesh = jax.sharding.Mesh(np.array(devices[:2]), ("data",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = {"w": jax.device_put(jnp.ones((64, 4)), split), "b": jnp.ones(4)}
    params["b"] = jax.device_put(params["b"], whole)
    tx = optclip.group_small_leaves(optax.adam(0.1), max_size=16)
    tx.update(params, tx.init(params), params)  # w (256 entries) is large: not packed
    small = optclip.group_small_leaves(optax.adam(0.1), max_size=1000)
    with pytest.raises(ValueError, match=r"params\['w'\] \(shape \(64, 4\)\) is split"):
        small.init(params)


def test_state_shardings_refuses_the_packed_state():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(TypeError, match="cannot place it"):
        optclip.state_shardings(optclip.group_small_leaves(optax.adam(0.1)), _tree(0), mesh)


def test_flax_nnx_optimizer_trains_like_the_per_leaf_one():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 300, rngs=rngs)
            self.norm = nnx.LayerNorm(300, rngs=rngs)
            self.head = nnx.Linear(300, 1, rngs=rngs)

        def __call__(self, x):
            return self.head(self.norm(jax.nn.relu(self.dense(x))))

    x = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
    y = jnp.sin(x[:, :1])

    def train(tx):
        model = Model(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer)) for _ in range(5)]
        return losses, nnx.state(model, nnx.Param)

    want_losses, want = train(optclip.acclip(1e-2))
    got_losses, got = train(optclip.group_small_leaves(optclip.acclip(1e-2), max_size=1000))
    assert got_losses[-1] < got_losses[0]
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), want, got)
