"""What counts as a known value: zero in every numeric form, and state structures that do not
depend on how a hyperparameter was passed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import _checks

ZEROS = [0, 0.0, np.float32(0), np.float64(0), np.array(0.0), jnp.float32(0), jnp.array(0)]


@pytest.mark.parametrize("zero", ZEROS, ids=lambda z: type(z).__name__)
def test_zero_is_zero_in_every_numeric_form(zero):
    assert _checks.is_static_zero(zero)
    assert not _checks.is_static_zero(1e-30)
    assert not _checks.is_static_zero(False)  # a bool is no hyperparameter
    assert _checks.static_value(zero) == 0.0


def test_a_traced_value_is_never_static():
    seen = []
    jax.jit(lambda x: seen.append(_checks.static_value(x)) or x)(jnp.float32(0))
    assert seen == [None]


@pytest.mark.parametrize("zero", ZEROS, ids=lambda z: type(z).__name__)
@pytest.mark.parametrize(
    "factory",
    [
        lambda wd: optclip.acclip(0.1, weight_decay=wd),
        lambda wd: optclip.gclip(0.1, 1.0, weight_decay=wd),
        lambda wd: optclip.stochastic_ingd(key=0, weight_decay=wd),
    ],
    ids=["acclip", "gclip", "stochastic_ingd"],
)
def test_zero_weight_decay_needs_no_params(factory, zero):
    tx = factory(zero)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params))  # no params passed
    decayed, _ = factory(0.5).update({"w": jnp.ones(3)}, factory(0.5).init(params), params)
    assert not np.allclose(updates["w"], decayed["w"])  # the decay is really gone at zero


@pytest.mark.parametrize(
    "factory,kwargs",
    [
        (optclip.acclip, dict(learning_rate=0.1, weight_decay=0.0)),
        (optclip.acclip, dict(learning_rate=0.1, weight_decay=0.1)),
        (optclip.gclip, dict(learning_rate=0.1, threshold=1.0, b1=0.9)),
        (optclip.generalized_signsgd, dict(learning_rate=0.1)),
        (optclip.stochastic_ingd, dict(key=0)),
    ],
    ids=["acclip", "acclip_wd", "gclip", "generalized_signsgd", "stochastic_ingd"],
)
def test_state_structure_is_the_same_with_and_without_inject_hyperparams(factory, kwargs):
    params = {"w": jnp.ones(3)}
    plain = factory(**kwargs).init(params)
    injected = optax.inject_hyperparams(factory)(**kwargs)
    state = injected.init(params)
    assert jax.tree.structure(state.inner_state) == jax.tree.structure(plain)
    # ... and a jitted update (hyperparameters traced) keeps it.
    _, new = jax.jit(injected.update)({"w": jnp.ones(3)}, state, params)
    assert jax.tree.structure(new) == jax.tree.structure(state)


def test_python_zero_may_drop_state_but_an_array_zero_keeps_it():
    params = {"w": jnp.ones(3)}
    # b1 = 0 as a Python number: clipped SGD, no momentum buffer.
    shapes = lambda tx: [x.shape for x in jax.tree.leaves(tx.init(params))]
    assert (3,) not in shapes(optclip.gclip(0.1, 1.0, b1=0.0))
    # As an array it may be traced later (inject_hyperparams), so the buffer stays.
    assert (3,) in shapes(optclip.gclip(0.1, 1.0, b1=jnp.float32(0)))
    a, _ = optclip.gclip(0.1, 1.0, b1=0.0).update(
        {"w": jnp.ones(3)}, optclip.gclip(0.1, 1.0, b1=0.0).init(params)
    )
    tx = optclip.gclip(0.1, 1.0, b1=jnp.float32(0))
    b, _ = tx.update({"w": jnp.ones(3)}, tx.init(params))
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)  # same updates either way


@pytest.mark.parametrize("bad", ["float99", "int32", object()], ids=["float99", "int32", "object"])
def test_mu_dtype_is_checked_by_name(bad):
    with pytest.raises(TypeError, match="`mu_dtype` must be a floating dtype"):
        optclip.acclip(0.1, mu_dtype=bad)


# Every hyperparameter for which 0 is valid, on its optimizer.
ZERO_VALID = [
    (optclip.acclip, dict(learning_rate=0.1), arg)
    for arg in ("learning_rate", "b1", "b2", "eps", "initial_threshold", "weight_decay")
] + [
    (optclip.acclip, dict(learning_rate=0.01, rms_scale=True), "b2"),
    (optclip.gclip, dict(learning_rate=0.1, threshold=1.0, b1=0.9), "threshold"),
    (optclip.gclip, dict(learning_rate=0.1, threshold=1.0, b1=0.9), "b1"),
    (optclip.cclip, dict(learning_rate=0.1, threshold=0.5, b1=0.9), "threshold"),
    (optclip.cclip, dict(learning_rate=0.1, threshold=0.5, b1=0.9), "b1"),
    (optclip.generalized_signsgd, dict(learning_rate=0.01), "b1"),
    (optclip.generalized_signsgd, dict(learning_rate=0.01), "b2"),
    (optclip.generalized_signsgd, dict(learning_rate=0.01, eps=1e-3), "eps"),
    (optclip.normalized_momentum_sgd, dict(learning_rate=0.1), "b1"),
    (optclip.clip_momentum_sgd, dict(learning_rate=0.1, gamma=0.2, nu=0.7), "nu"),
    (optclip.clip_momentum_sgd, dict(learning_rate=0.1, gamma=0.2, nu=0.7), "b1"),
    (optclip.stochastic_ingd, dict(), "q"),
    (optclip.stochastic_ingd, dict(), "beta"),
    (optclip.stochastic_ingd, dict(weight_decay=1e-2), "weight_decay"),
]


@pytest.mark.parametrize(
    "factory,kwargs,arg", ZERO_VALID, ids=[f"{f.__name__}-{a}" for f, _, a in ZERO_VALID]
)
def test_every_form_of_zero_gives_the_same_updates(factory, kwargs, arg):
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = [jax.tree.map(lambda p, k=k: p * (k - 1.5), params) for k in range(3)]

    def run(zero):
        tx = factory(**{**kwargs, arg: zero})
        state, p, out = tx.init(params), params, []
        for g in grads:
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
            out.append(p)
        return out

    reference = run(0)
    for zero in (0.0, np.float32(0), np.int64(0), jnp.float32(0)):
        for a, b in zip(run(zero), reference, strict=True):
            np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, err_msg=repr(zero))
            np.testing.assert_allclose(a["b"], b["b"], rtol=1e-6, err_msg=repr(zero))
