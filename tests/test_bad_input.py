"""Wrong input gets an error that names what the user wrote, the valid range and the value.

One table per kind of input (docs/validation.md states the rule these tests hold):
hyperparameters at construction, the same under ``optax.inject_hyperparams``,
and gradients whose dtype, shape or tree does not fit the state.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.conftest import CASES

# (factory call, exception, fragments the message must hold, in order)
CONSTRUCTION = [
    # Decays live in [0, 1).
    (lambda: optclip.acclip(0.1, b1=1.0), ValueError, ["`b1`", "[0, 1)", "1.0"]),
    (lambda: optclip.acclip(0.1, b1=-0.1), ValueError, ["`b1`", "[0, 1)", "-0.1"]),
    (lambda: optclip.acclip(0.1, b2=1.5), ValueError, ["`b2`", "[0, 1)", "1.5"]),
    (lambda: optclip.acclip(0.1, b1=float("nan")), ValueError, ["`b1`", "[0, 1)", "nan"]),
    (lambda: optclip.gclip(0.1, 1.0, b1=np.float32(1.0)), ValueError, ["`b1`", "[0, 1)", "1.0"]),
    (lambda: optclip.cclip(0.1, 1.0, b1=2), ValueError, ["`b1`", "[0, 1)", "2"]),
    (lambda: optclip.normalized_momentum_sgd(0.1, b1=1.0), ValueError, ["`b1`", "[0, 1)"]),
    (lambda: optclip.generalized_signsgd(0.1, b2=1.0), ValueError, ["`b2`", "[0, 1)", "1.0"]),
    (lambda: optclip.stochastic_ingd(beta=1.0), ValueError, ["`beta`", "[0, 1)", "1.0"]),
    (lambda: optclip.ema_momentum(decay=-0.5), ValueError, ["`decay`", "[0, 1)", "-0.5"]),
    # ACClip's moment order: the papers' alpha-moment lives in (1, 2]; 1 is their default.
    (lambda: optclip.acclip(0.1, alpha=0.5), ValueError, ["`alpha`", "[1, 2]", "0.5"]),
    (lambda: optclip.acclip(0.1, alpha=3.0), ValueError, ["`alpha`", "[1, 2]", "3.0"]),
    (lambda: optclip.acclip(0.1, alpha=0.0), ValueError, ["`alpha`", "[1, 2]", "0.0"]),
    (
        lambda: optclip.estimate_alpha_moment_threshold(alpha=2.5),
        ValueError,
        ["`alpha`", "[1, 2]", "2.5"],
    ),
    # Nonnegative and positive scalars.
    (lambda: optclip.acclip(0.1, eps=-1e-8), ValueError, ["`eps`", "[0, inf)", "-1e-08"]),
    (lambda: optclip.acclip(-0.1), ValueError, ["`learning_rate`", "[0, inf)", "-0.1"]),
    (lambda: optclip.acclip(0.1, weight_decay=-1.0), ValueError, ["`weight_decay`", "[0, inf)"]),
    (lambda: optclip.clipped_gd(0.1, gamma=-1.0), ValueError, ["`gamma`", "(0, inf)", "-1.0"]),
    (lambda: optclip.clip_momentum_sgd(0.1, gamma=0.0), ValueError, ["`gamma`", "(0, inf)"]),
    (lambda: optclip.clip_momentum_sgd(0.1, 1.0, nu=1.5), ValueError, ["`nu`", "[0, 1]", "1.5"]),
    (lambda: optclip.normalized_gd(0.1, beta=0.0), ValueError, ["`beta`", "(0, inf)", "0.0"]),
    (lambda: optclip.generalized_signsgd(0.1, eps=-1.0), ValueError, ["`eps`", "[0, inf)"]),
    (lambda: optclip.stochastic_ingd(p=0.0), ValueError, ["`p`", "(0, inf)", "0.0"]),
    (lambda: optclip.stochastic_ingd(q=-1.0), ValueError, ["`q`", "[0, inf)", "-1.0"]),
    (lambda: optclip.adam_as_clipping(0.0, 0.99, 1e-8, {}), ValueError, ["`learning_rate`"]),
    # Thresholds: the name the user wrote, not the inner transform's.
    (lambda: optclip.gclip(0.1, threshold=-1.0), ValueError, ["`threshold`", "[0, inf)", "-1.0"]),
    (lambda: optclip.gclip(0.1, threshold=float("inf")), ValueError, ["`threshold`", "inf"]),
    (lambda: optclip.gclip(0.1, threshold=float("nan")), ValueError, ["`threshold`", "nan"]),
    (lambda: optclip.clip_by_global_norm(-2.0), ValueError, ["`max_norm`", "[0, inf)", "-2.0"]),
    (
        lambda: optclip.cclip(0.1, threshold={"w": np.array([1.0, -2.0])}),
        ValueError,
        ["`threshold`", ">= 0", "-2."],
    ),
    (lambda: optclip.acclip(0.1, initial_threshold=-1.0), ValueError, ["`initial_threshold`"]),
    # Types.
    (lambda: optclip.acclip("a"), TypeError, ["`learning_rate`", "real number", "'a'", "str"]),
    (lambda: optclip.acclip(None), TypeError, ["`learning_rate`", "None"]),
    (lambda: optclip.acclip(0.1, b1="0.9"), TypeError, ["`b1`", "real number", "'0.9'"]),
    (lambda: optclip.acclip(0.1, b1=True), TypeError, ["`b1`", "True", "bool"]),
    (lambda: optclip.acclip(0.1, alpha=[1.0]), TypeError, ["`alpha`", "[1.0]", "list"]),
    (lambda: optclip.acclip(0.1, eps=1j), TypeError, ["`eps`", "1j", "complex"]),
    (lambda: optclip.acclip(0.1, b2=np.array([0.9, 0.9])), TypeError, ["`b2`", "0-d"]),
    (lambda: optclip.acclip(0.1, rms_scale="yes"), TypeError, ["`rms_scale`", "True or False"]),
    (lambda: optclip.acclip(0.1, mu_dtype="float99"), TypeError, ["`mu_dtype`", "'float99'"]),
    (lambda: optclip.acclip(0.1, mu_dtype=jnp.int32), TypeError, ["`mu_dtype`", "floating"]),
    (lambda: optclip.gclip(0.1, threshold=None), TypeError, ["`threshold`", "None"]),
    (lambda: optclip.gclip(0.1, threshold="1"), TypeError, ["`threshold`", "'1'", "str"]),
    (lambda: optclip.cclip(0.1, threshold={"w": "x"}), TypeError, ["`threshold`", "'x'"]),
    (lambda: optclip.clipped_gd(0.1, gamma=lambda k: 1.0), TypeError, ["`gamma`", "function"]),
    (lambda: optclip.cclip(0.1, 1.0, track_clip_fraction=1), TypeError, ["`track_clip_fraction`"]),
    # Spike-robust clipping: every argument, by the name the user wrote.
    (lambda: optclip.zclip(alpha=1.0), ValueError, ["`alpha`", "[0, 1)", "1.0"]),
    (lambda: optclip.zclip(z_thresh=0.0), ValueError, ["`z_thresh`", "(0, inf)", "0.0"]),
    (lambda: optclip.zclip(max_grad_norm=-1.0), ValueError, ["`max_grad_norm`", "[0, inf)"]),
    (lambda: optclip.zclip(eps=-1e-6), ValueError, ["`eps`", "[0, inf)", "-1e-06"]),
    (lambda: optclip.zclip(warmup_steps=0), ValueError, ["`warmup_steps`", "[1, inf)", "0"]),
    (lambda: optclip.zclip(warmup_steps=2.5), TypeError, ["`warmup_steps`", "integer", "2.5"]),
    (lambda: optclip.zclip(mode="z"), ValueError, ["`mode`", "'zscore', 'percentile'", "'z'"]),
    (lambda: optclip.zclip(clip_option="max"), ValueError, ["`clip_option`", "'max'"]),
    (lambda: optclip.zclip(clip_factor=0.0), ValueError, ["`clip_factor`", "(0, inf)"]),
    (lambda: optclip.zclip(skip_update_on_spike=1), TypeError, ["`skip_update_on_spike`"]),
    (lambda: optclip.adagc(lambda_abs=0.0), ValueError, ["`lambda_abs`", "(0, inf)", "0.0"]),
    (lambda: optclip.adagc(lambda_rel=1.0), ValueError, ["`lambda_rel`", "(1, inf)", "1.0"]),
    (lambda: optclip.adagc(beta=1.0), ValueError, ["`beta`", "[0, 1)", "1.0"]),
    (lambda: optclip.adagc(warmup_steps=-1), ValueError, ["`warmup_steps`", "[1, inf)", "-1"]),
    (lambda: optclip.spam(1e-3, b1=1.0), ValueError, ["`b1`", "[0, 1)"]),
    (lambda: optclip.spam(1e-3, b2=-0.1), ValueError, ["`b2`", "[0, 1)"]),
    (lambda: optclip.spam(1e-3, eps=-1.0), ValueError, ["`eps`", "[0, inf)"]),
    (lambda: optclip.spam(-1e-3), ValueError, ["`learning_rate`", "[0, inf)", "-0.001"]),
    (lambda: optclip.spam(1e-3, weight_decay=-1.0), ValueError, ["`weight_decay`", "[0, inf)"]),
    (lambda: optclip.spam(1e-3, threshold=-1.0), ValueError, ["`threshold`", "[0, inf)"]),
    (lambda: optclip.spam(1e-3, interval=0), ValueError, ["`interval`", "[1, inf)", "0"]),
    (lambda: optclip.spam(1e-3, warmup_steps=-1), ValueError, ["`warmup_steps`", "[0, inf)"]),
    (lambda: optclip.spam(1e-3, spike_free_steps=1.5), TypeError, ["`spike_free_steps`", "1.5"]),
    (
        lambda: optclip.spam(1e-3, interval=100),  # the default warm-up, 150, outlasts it
        ValueError,
        ["`warmup_steps`", "[0, 99]", "150"],
    ),
    (
        lambda: optclip.scale_by_spam(interval=10, warmup_steps=2, spike_free_steps=10),
        ValueError,
        ["`spike_free_steps`", "[0, 9]", "10"],
    ),
    (
        lambda: optclip.clip_by_second_moment(interval=5, spike_free_steps=7),
        ValueError,
        ["`spike_free_steps`", "[0, 4]", "7"],
    ),
    (
        lambda: optclip.scale_by_reset_warmup(interval=5, warmup_steps=5),
        ValueError,
        ["`warmup_steps`", "[0, 4]", "5"],
    ),
    (
        lambda: optclip.spam(1e-3, mu_dtype=jnp.int8),
        TypeError,
        ["`mu_dtype`", "a floating dtype", "int8"],
    ),
    (lambda: optclip.clip_by_second_moment(b2=1.0), ValueError, ["`b2`", "[0, 1)"]),
    (lambda: optclip.reset_periodically(optax.adam(0.1), 0), ValueError, ["`interval`", "0"]),
    (lambda: optclip.scale_by_reset_warmup(warmup_steps="5"), TypeError, ["`warmup_steps`"]),
    (lambda: optclip.skip_step(optax.adam(0.1), window=1), ValueError, ["`window`", "[2, inf)"]),
    (lambda: optclip.skip_step(optax.adam(0.1), sigma_factor=0), ValueError, ["`sigma_factor`"]),
    (lambda: optclip.skip_step(optax.adam(0.1), min_history=1), ValueError, ["`min_history`"]),
    (lambda: optclip.acclip(0.1, robust="yes"), TypeError, ["`robust`", "True or False"]),
    (lambda: optclip.acclip(0.1, spike_factor=0.5), ValueError, ["`spike_factor`", "[1, inf]"]),
    # The LMO family.
    (lambda: optclip.muon(0.02, beta=1.0), ValueError, ["`beta`", "[0, 1)", "1.0"]),
    (lambda: optclip.muon(0.02, adam_eps=-1.0), ValueError, ["`adam_eps`", "[0, inf)"]),
    (lambda: optclip.muon(0.02, ns_steps=2.5), TypeError, ["`ns_steps`", "2.5"]),
    (lambda: optclip.scion(2.0), ValueError, ["`learning_rate`", "[0, 1]", "2.0"]),
    (lambda: optclip.scion(0.1, alpha=1.5), ValueError, ["`alpha`", "(0, 1]", "1.5"]),
    (lambda: optclip.gluon(1.0, -2.0), ValueError, ["`l1`", "[0, inf)", "-2.0"]),
    (
        lambda: optclip.scale_by_lmo(norms="nuclear").init({"w": jnp.ones(2)}),
        ValueError,
        ["`norms`"],
    ),
]


def _assert_message(err: BaseException, fragments: list[str]) -> None:
    message = str(err)
    position = 0
    for fragment in fragments:
        found = message.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in order in: {message}"
        position = found + len(fragment)


@pytest.mark.parametrize(
    "make,error,fragments", CONSTRUCTION, ids=[" ".join(c[2][:2]) for c in CONSTRUCTION]
)
def test_construction_rejects_bad_hyperparameters(make, error, fragments):
    with pytest.raises(error) as info:
        make()
    assert type(info.value) is error
    _assert_message(info.value, fragments)


PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}

# Under optax.inject_hyperparams every numeric hyperparameter becomes an array.
# `init` and an un-jitted `update` rebuild the optimizer from concrete values,
# so the checks run there; inside `jit` the values are traced and pass.
INJECTED = [
    (optclip.acclip, dict(learning_rate=1e-3, b1=1.5), ["`b1`", "[0, 1)", "1.5"]),
    (optclip.acclip, dict(learning_rate=1e-3, alpha=0.5), ["`alpha`", "[1, 2]", "0.5"]),
    (optclip.acclip, dict(learning_rate=-1e-3), ["`learning_rate`", "[0, inf)", "-0.001"]),
    (optclip.gclip, dict(learning_rate=1e-3, threshold=-1.0), ["`threshold`", "-1.0"]),
    (optclip.cclip, dict(learning_rate=1e-3, threshold=-1.0, b1=0.9), ["`threshold`", "-1.0"]),
    (optclip.generalized_signsgd, dict(learning_rate=1e-3, b2=1.0), ["`b2`", "[0, 1)"]),
    (optclip.clipped_gd, dict(learning_rate=1e-3, gamma=0.0), ["`gamma`", "(0, inf)"]),
    (optclip.stochastic_ingd, dict(p=1.0, q=-10.0), ["`q`", "[0, inf)", "-10.0"]),
    (optclip.acclip, dict(learning_rate=1e-3, weight_decay=-0.1), ["`weight_decay`"]),
    (optclip.zclip, dict(z_thresh=-1.0), ["`z_thresh`", "(0, inf)", "-1.0"]),
    (optclip.zclip, dict(warmup_steps=0), ["`warmup_steps`", "[1, inf)", "0"]),
    (optclip.adagc, dict(lambda_rel=0.5), ["`lambda_rel`", "(1, inf)", "0.5"]),
    (optclip.spam, dict(learning_rate=1e-3, interval=0), ["`interval`", "[1, inf)", "0"]),
    (optclip.acclip, dict(learning_rate=1e-3, robust=True, spike_factor=0.0), ["`spike_factor`"]),
]


@pytest.mark.parametrize(
    "factory,kwargs,fragments", INJECTED, ids=[" ".join(c[2][:1]) for c in INJECTED]
)
def test_inject_hyperparams_checks_concrete_values_at_init(factory, kwargs, fragments):
    tx = optax.inject_hyperparams(factory)(**kwargs)
    with pytest.raises(ValueError) as info:
        tx.init(PARAMS)
    _assert_message(info.value, fragments)


def test_a_schedule_is_checked_where_it_is_evaluated():
    schedule = optax.linear_schedule(0.5, 1.5, transition_steps=2)  # 0.5, 1.0, 1.5
    tx = optax.inject_hyperparams(optclip.acclip)(learning_rate=1e-3, b1=schedule)
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    _, state = tx.update(grads, state, PARAMS)  # b1 = 0.5 at step 0, 1.0 at step 1
    with pytest.raises(ValueError, match=re.escape("`b1` must be in [0, 1), got 1.0")):
        tx.update(grads, state, PARAMS)


def test_a_bad_value_inside_jit_is_not_checked():
    # The documented limit: a traced hyperparameter cannot be compared in Python.
    tx = optax.inject_hyperparams(optclip.acclip)(learning_rate=1e-3, b1=1.5)
    state = jax.jit(tx.init)(PARAMS)
    assert float(state.hyperparams["b1"]) == 1.5


def _grads_of(params):
    return jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)


# (how the gradients go wrong, exception, fragments)
GRADIENTS = [
    (lambda g: {**g, "w": g["w"].astype(jnp.int32)}, TypeError, ["`['w']`", "int32", "floating"]),
    (lambda g: {**g, "b": g["b"] > 0}, TypeError, ["`['b']`", "bool"]),
    (lambda g: {**g, "w": jnp.ones((3, 2))}, ValueError, ["`['w']`", "(3, 2)", "(2, 3)"]),
    (lambda g: {"w": g["w"]}, ValueError, ["missing from the gradients", "['b']"]),
    (lambda g: {**g, "extra": jnp.ones(2)}, ValueError, ["not in the state", "['extra']"]),
]


# Global clips or a wrapper in front of optax.adam: only the dtype check is optclip's.
OPTAX_STATE = {"zclip_adam", "adagc_adam", "skip_step_adam"}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "spoil,error,fragments", GRADIENTS, ids=["int", "bool", "shape", "missing", "extra"]
)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_that_do_not_fit_name_the_leaf(case, spoil, error, fragments, jit):
    tx = case.make()
    state = tx.init(PARAMS)
    grads = spoil(_grads_of(PARAMS))
    stateless = not any(
        np.shape(x) == (2, 3) for x in jax.tree.leaves(state)
    )  # no parameter-shaped state: only the dtype can be checked
    if stateless and error is ValueError:
        pytest.skip(f"{case.name} keeps no parameter-shaped state to compare shapes with")
    if case.name in OPTAX_STATE and error is ValueError:
        pytest.skip(f"{case.name}: the parameter-shaped state is optax.adam's, which checks it")
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(error) as info:
        update(grads, state, PARAMS)
    _assert_message(info.value, fragments)


def test_gradient_path_is_the_users_path_inside_nested_trees():
    params = {"params": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
    tx = optclip.acclip(0.1)
    grads = {"params": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2, jnp.int8)}}}
    with pytest.raises(TypeError, match=re.escape("`['params']['dense']['bias']` has dtype int8")):
        tx.update(grads, tx.init(params), params)
