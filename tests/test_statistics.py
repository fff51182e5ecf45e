"""`optclip.statistics` and `optclip.clip_fraction`: every optimizer's statistics, by name."""

from __future__ import annotations

from typing import NamedTuple

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
_STAT_OF_CLIP = ("count", "norm", "clipped")
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


def test_a_second_link_of_a_kind_is_numbered_and_the_first_keeps_its_keys():
    tx = optax.chain(optclip.clip_by_global_norm(1.0), optclip.gclip(0.1, 2.0))
    params = {"w": jnp.zeros(2)}
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    stats = jax.device_get(optclip.statistics(state))
    # The first link keeps the keys it has alone; the second of its kind is `<kind>_1`.
    assert set(stats) == {f"clip_by_global_norm{n}/{k}" for n in ("", "_1") for k in _STAT_OF_CLIP}
    assert stats["clip_by_global_norm/norm"] == 5.0  # the gradient
    assert stats["clip_by_global_norm/clipped"] == 1.0
    assert stats["clip_by_global_norm_1/norm"] == pytest.approx(1.0)  # after the first clip
    assert stats["clip_by_global_norm_1/clipped"] == 0.0


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


def test_multi_transform_labels_scope_the_keys():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    tx = optax.multi_transform(
        {"x": optclip.clipped_gd(0.1, 1.0), "y": optclip.clipped_gd(0.1, 10.0)},
        {"a": "x", "b": "y"},
    )
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([6.0, 8.0])}
    _, state = tx.update(grads, tx.init(params), params)
    stats = optclip.statistics(state)
    assert set(stats) == {
        f"{label}/clip_by_global_norm/{k}" for label in "xy" for k in _STAT_OF_CLIP
    }
    assert float(stats["x/clip_by_global_norm/norm"]) == 5.0
    assert float(stats["y/clip_by_global_norm/norm"]) == 10.0
    assert float(stats["y/clip_by_global_norm/clipped"]) == 0.0


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


# Keys a dashboard keeps (docs/design.md, "Reading statistics"): no position in the chain.
_GRADS = {"b": jnp.array([0.0, 3.0, 0.0]), "w": jnp.array([4.0, 0.0])}  # global norm 5
_PARAMS = {"b": jnp.zeros(3), "w": jnp.zeros(2)}


def _read(tx, steps=2):
    state = tx.init(_PARAMS)
    for _ in range(steps):
        _, state = tx.update(_GRADS, state, _PARAMS)
    return jax.device_get(optclip.statistics(state))


def _clip_adam(learning_rate=0.1):
    return optax.chain(optclip.clip_by_global_norm(1.0), optax.adam(learning_rate))


_BASE = {f"clip_by_global_norm/{k}" for k in _STAT_OF_CLIP} | _ADAM


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.chain(optclip.record_norms(), _clip_adam()),  # in front
        lambda: optax.chain(_clip_adam(), optclip.clip_by_global_norm(10.0)),  # behind
        lambda: optax.inject_hyperparams(_clip_adam)(learning_rate=0.1),
        lambda: optax.MultiSteps(_clip_adam(), every_k_schedule=1),
        lambda: optax.apply_if_finite(_clip_adam(), max_consecutive_errors=3),
        lambda: optclip.skip_step(_clip_adam()),
        lambda: optclip.record_norms(_clip_adam()),
    ],
    ids=[
        "in_front",
        "behind",
        "inject_hyperparams",
        "multi_steps",
        "apply_if_finite",
        "skip_step",
        "record_norms",
    ],
)
def test_keys_survive_links_added_in_front_behind_and_around(make):
    base = _read(_clip_adam())
    assert set(base) == _BASE
    stats = _read(make())
    assert _BASE <= set(stats)
    for key in _BASE:  # none of the additions changes what the links see
        np.testing.assert_allclose(stats[key], base[key], rtol=1e-6, err_msg=key)
    for key in stats:  # readable: no segment is a bare index or a float-looking path
        assert not any(part.replace(".", "").isdigit() for part in key.split("/")), key


def test_a_link_of_the_same_kind_in_front_renumbers_unless_links_are_named():
    stats = _read(optax.chain(optclip.clip_by_global_norm(10.0), _clip_adam()))
    assert stats["clip_by_global_norm/norm"] == pytest.approx(5.0)  # the new link, first
    assert stats["clip_by_global_norm_1/clipped"] == 1.0
    named = lambda *links: optax.named_chain(
        *links, ("clip", optclip.clip_by_global_norm(1.0)), ("adam", optax.adam(0.1))
    )
    base = _read(named())
    assert set(base) == {f"clip/clip_by_global_norm/{k}" for k in _STAT_OF_CLIP} | {
        "adam/scale_by_adam/count"
    }
    stats = _read(named(("guard", optclip.clip_by_global_norm(10.0))))
    assert {k: stats[k] for k in base} == base
    assert set(stats) - set(base) == {f"guard/clip_by_global_norm/{k}" for k in _STAT_OF_CLIP}


def test_a_wrapped_link_is_numbered_before_its_wrapper():
    inner = optax.chain(optclip.record_norms(optax.clip(1.0)), optax.sgd(0.1))
    alone = _read(inner)
    stats = _read(optclip.record_norms(inner))
    assert {k: stats[k] for k in alone} == alone  # the inner link keeps `record_norms/...`
    assert float(stats["record_norms_1/grad_norm/w"]) == 4.0  # the wrapper sees the gradient
    assert float(stats["record_norms_1/update_norm/w"]) == pytest.approx(0.1)  # sgd of clip


def test_named_chains_nest_and_pass_through_wrappers_and_labels():
    inner = lambda learning_rate: optax.named_chain(
        ("clip", optclip.clip_by_global_norm(1.0)), ("adam", optax.adam(learning_rate))
    )
    tx = optax.named_chain(("model", optax.inject_hyperparams(inner)(learning_rate=0.1)))
    assert set(_read(tx)) == {
        "model/hyperparams/count",
        "model/hyperparams/learning_rate",
        *(f"model/clip/clip_by_global_norm/{k}" for k in _STAT_OF_CLIP),
        "model/adam/scale_by_adam/count",
    }
    tx = optax.multi_transform({"x": inner(0.1), "y": optax.sgd(0.1)}, {"b": "x", "w": "y"})
    stats = _read(tx)
    assert set(stats) == {f"x/clip/clip_by_global_norm/{k}" for k in _STAT_OF_CLIP} | {
        "x/adam/scale_by_adam/count"
    }
    assert stats["x/clip/clip_by_global_norm/norm"] == 3.0  # label x holds only `b`


class LmoLikeState(NamedTuple):
    count: jax.Array
    dual_norm: optax.Updates  # one scalar per leaf
    momentum: optax.Updates  # one value per coordinate


def _lmo_like():
    def init(params):
        scalars = jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params)
        return LmoLikeState(jnp.zeros([], jnp.int32), scalars, jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        dual = jax.tree.map(lambda g: jnp.sum(jnp.abs(g)), updates)
        return updates, LmoLikeState(state.count + 1, dual, updates)

    return optax.GradientTransformation(init, update)


def test_a_field_of_per_leaf_scalars_gives_one_key_per_leaf_path():
    params = {
        "layers": [{"kernel": jnp.zeros((3, 2))}, {"kernel": jnp.zeros(2)}],
        "s": jnp.zeros(4),
    }
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    tx = _lmo_like()
    _, state = tx.update(grads, tx.init(params), params)
    stats = jax.jit(optclip.statistics)(state)
    paths = ("layers.0.kernel", "layers.1.kernel", "s")
    # The per-coordinate momentum keeps no key; the count and each leaf's scalar do.
    assert set(stats) == {"lmo_like/count"} | {f"lmo_like/dual_norm/{p}" for p in paths}
    leaves = [grads["layers"][0]["kernel"], grads["layers"][1]["kernel"], grads["s"]]
    for path, g in zip(paths, leaves, strict=True):
        expected = np.sum(np.abs(np.asarray(g, np.float64)))  # l1 norm, from the definition
        assert float(stats[f"lmo_like/dual_norm/{path}"]) == pytest.approx(expected, rel=1e-6)


def test_adagc_names_its_per_leaf_vectors_when_given_the_params():
    tx = optax.chain(optclip.adagc(warmup_steps=1), optax.adam(0.1))
    stats = _read(tx)
    assert not any("/gamma/" in k or "/norms/" in k for k in stats)  # no names without params
    state = tx.init(_PARAMS)
    _, state = tx.update(_GRADS, state, _PARAMS)
    stats = jax.device_get(optclip.statistics(state, _PARAMS))
    per_leaf = {f"adagc/{f}/{p}" for f in ("gamma", "norms") for p in ("b", "w")}
    assert per_leaf <= set(stats)
    for path, norm in (("b", 3.0), ("w", 4.0)):  # each leaf's norm before the clip
        assert stats[f"adagc/norms/{path}"] == pytest.approx(norm)
    # After one warm-up step, gamma_i = min(inf, h ||g_i||) with h = min(1, 1/5) (lambda_abs 1).
    assert stats["adagc/gamma/b"] == pytest.approx(3.0 / 5.0)
    assert stats["adagc/gamma/w"] == pytest.approx(4.0 / 5.0)
    # Inside a label, AdaGC's vector covers that label's leaves only: summaries, no names.
    tx = optax.multi_transform({"x": optclip.adagc(), "y": optax.sgd(0.1)}, {"b": "x", "w": "y"})
    _, state = tx.update(_GRADS, tx.init(_PARAMS), _PARAMS)
    assert set(optclip.statistics(state, _PARAMS)) == {
        f"x/adagc/{k}" for k in ("count", "clipped", "threshold_mean", "threshold_max")
    }
