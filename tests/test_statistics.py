"""`optclip.statistics` and `optclip.clip_fraction`: every optimizer's statistics, by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.conftest import CASES

# What each optimizer keeps, written from its definition (one state per link, the scalars it
# stores), not read off the function: a key that disappears or appears fails here.
_GLOBAL_CLIP = {
    "clip_by_global_norm/count",
    "clip_by_global_norm/norm",
    "clip_by_global_norm/clipped",
}
_ACCLIP = {"acclip/count", "acclip/clip_fraction", "acclip/threshold_mean", "acclip/threshold_max"}
_ADAM = {"scale_by_adam/count"}
EXPECTED = {
    "acclip": _ACCLIP,
    "acclip_alpha2": _ACCLIP,
    "acclip_rms": _ACCLIP,
    "acclip_wd_seeded": _ACCLIP,
    "acclip_robust": _ACCLIP,
    "acclip_robust_rms_seeded": _ACCLIP,
    "acclip_robust_tau1": _ACCLIP,
    "gclip": _GLOBAL_CLIP,
    "gclip_momentum": _GLOBAL_CLIP,
    "clipped_gd": _GLOBAL_CLIP,
    "cclip": {"clip_coordinatewise/count", "clip_coordinatewise/clip_fraction"},
    "normalized_gd": {"normalize_by_global_norm/norm"},
    "normalized_momentum_sgd": {"normalize_by_global_norm/norm"},
    "clip_momentum_sgd": {
        "clip_momentum/count",
        "clip_momentum/momentum_norm",
        "clip_momentum/gradient_norm",
    },
    # Only the two moments: nothing to log.
    "generalized_signsgd": set(),
    "signum": set(),
    "zclip_adam": {f"zclip/{k}" for k in ("count", "mean", "std", "norm", "clipped", "spike")}
    | _ADAM,
    "adagc_adam": {f"adagc/{k}" for k in ("count", "clipped", "threshold_mean", "threshold_max")}
    | _ADAM,
    "spam": {"spam/count", "spam/clip_fraction"},
    "spam_wd": {"spam/count", "spam/clip_fraction"},
    "skip_step_adam": {
        f"skip_step/{k}" for k in ("count", "skipped", "skip", "norm", "norms_seen", "losses_seen")
    }
    | _ADAM,
}
# The links whose `norm` is the incoming gradient's global norm (gclip with b1 > 0 clips the
# momentum instead).
RAW_NORMS = {"clip_by_global_norm/norm", "zclip/norm", "skip_step/norm"}
CLIPS_MOMENTUM = {"gclip_momentum"}


def _steps(tx, n=3, seed=0):
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(5)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        grads = jax.tree.map(
            lambda p: jnp.asarray(rng.standard_t(2.0, p.shape), jnp.float32), params
        )
        _, state = update(grads, state, params)
    return state, grads


def test_every_case_has_its_expected_keys():
    assert {c.name for c in CASES} == set(EXPECTED), "a case without expected statistics"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_statistics_of_every_optimizer(case):
    state, grads = _steps(case.make())
    stats = optclip.statistics(state)
    assert set(stats) == EXPECTED[case.name]
    jitted = jax.jit(optclip.statistics)(state)
    assert set(jitted) == set(stats)
    for key, value in stats.items():
        assert jnp.ndim(value) == 0, key
        np.testing.assert_allclose(np.asarray(jitted[key]), np.asarray(value), rtol=1e-6)
        assert np.isfinite(np.asarray(value, np.float64)), key  # after 3 steps, every warm-up
    raw = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(grads))))
    for key in RAW_NORMS & set(stats) if case.name not in CLIPS_MOMENTUM else ():
        assert float(stats[key]) == pytest.approx(raw, rel=1e-5), key
    for key in stats:
        if key.endswith(("/count", "/norms_seen")):
            assert int(stats[key]) == 3, key
        if key.endswith(("clip_fraction", "clipped", "/skip")):
            assert 0.0 <= float(stats[key]) <= 1.0, key


def test_stochastic_ingd_reports_its_momentum_norm():
    tx = optclip.stochastic_ingd(p=1.0, q=1.0, beta=0.5)
    params = {"w": jnp.zeros(2)}
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    stats = optclip.statistics(state)
    assert set(stats) == {
        f"stochastic_ingd/{k}" for k in ("count", "momentum_norm", "offset_scale")
    }
    assert float(stats["stochastic_ingd/momentum_norm"]) == pytest.approx(5.0)  # m_1 = g_1
    _, state = tx.update({"w": jnp.zeros(2)}, state, params)
    # m_2 = beta m_1 + (1 - beta) g_2 with g_2 = 0.
    assert float(optclip.statistics(state)["stochastic_ingd/momentum_norm"]) == pytest.approx(2.5)


def test_a_chain_with_two_norms_names_each_by_its_link():
    tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.gclip(0.1, 2.0))
    params = {"w": jnp.zeros(2)}
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    stats = jax.device_get(optclip.statistics(state))
    assert stats["0/clip_by_global_norm/norm"] == 5.0  # the gradient
    assert stats["0/clip_by_global_norm/clipped"] == 1.0
    assert stats["1.0/clip_by_global_norm/norm"] == pytest.approx(1.0)  # after the first clip
    assert stats["1.0/clip_by_global_norm/clipped"] == 0.0
    assert len(stats) == 6


def test_wrappers_add_their_own_statistics():
    params = {"w": jnp.zeros(4)}
    tx = optax.MultiSteps(optax.inject_hyperparams(optclip.acclip)(learning_rate=0.5), 2)
    state = tx.init(params)
    for g in (1.0, 3.0):
        _, state = tx.update({"w": jnp.full(4, g)}, state, params)
    stats = optclip.statistics(state)
    assert float(stats["hyperparams/learning_rate"]) == 0.5
    assert int(stats["multi_steps/gradient_step"]) == 1
    assert int(stats["acclip/count"]) == 1
    # The first step from a zero threshold clips every coordinate (docs/acclip.md).
    assert float(stats["acclip/clip_fraction"]) == 1.0
    # From a zero threshold, tau_1 = (1 - b2) |g| (alpha = 1) for the mean gradient g = 2.
    assert float(stats["acclip/threshold_mean"]) == pytest.approx(0.01 * 2.0, rel=1e-5)


def test_multi_transform_keys_name_the_labels_when_they_repeat():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    tx = optax.multi_transform(
        {"x": optclip.clipped_gd(0.1, 1.0), "y": optclip.clipped_gd(0.1, 10.0)},
        {"a": "x", "b": "y"},
    )
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([6.0, 8.0])}
    _, state = tx.update(grads, tx.init(params), params)
    stats = optclip.statistics(state)
    assert float(stats["inner_states.x.inner_state.0/clip_by_global_norm/norm"]) == 5.0
    assert float(stats["inner_states.y.inner_state.0/clip_by_global_norm/clipped"]) == 0.0


def test_flax_nnx_optimizer_state_reads_like_the_optax_state():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.acclip(0.1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((4, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return optclip.statistics(optimizer.opt_state)

    params = nnx.state(model, nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    _, plain = tx.update(grads, tx.init(params), params)
    stats = step(model, optimizer)
    expected = optclip.statistics(plain)
    assert set(stats) == set(expected) and expected
    for key in expected:
        np.testing.assert_allclose(stats[key], expected[key], rtol=1e-6, err_msg=key)


def test_clip_fraction_reads_a_global_clip_and_prefers_a_coordinate_one():
    params = {"w": jnp.zeros(2)}
    tx = optclip.gclip(0.1, 1.0)
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    assert float(optclip.clip_fraction(state)) == 1.0
    # A chain of both reports the coordinate-wise clip: the global clip scales (3, 4) to
    # (0.6, 0.8), of which a threshold of 0.7 clips one coordinate.
    tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.cclip(0.1, 0.7))
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    assert float(optclip.clip_fraction(state)) == 0.5


def test_a_state_without_statistics_gives_an_empty_mapping():
    assert optclip.statistics(optax.sgd(0.1).init({"w": jnp.zeros(2)})) == {}
    assert optclip.statistics(()) == {}
