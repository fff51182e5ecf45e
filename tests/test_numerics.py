"""The package numerics rule (docs/numerics.md), checked for every optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip._numerics import (
    NORM_FORM_VARIABLE,
    _leaves,
    _norm_cond,
    _norm_select,
    power_mean,
    safe_divide,
)
from optclip._requirements import release
from tests.conftest import CASES, SHAPES, initial_params, unset_gamma_as_zero

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _huge(dtype):
    return float(min(1e30, float(jnp.finfo(dtype).max) / 10))


def _tiny(dtype):
    return float(max(1e-30, float(jnp.finfo(dtype).smallest_normal)))


def _grads(kind, dtype, rng):
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    scale = {"zero": 0.0, "tiny": _tiny(dtype), "huge": _huge(dtype), "normal": 1.0}[kind]
    return {k: jnp.asarray(v * scale, dtype) for k, v in base.items()}


def _finite(tree):
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(unset_gamma_as_zero(tree))
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    )


ZERO_THRESHOLD_CASES = [
    ("gclip_tau0", lambda: optclip.gclip(0.1, threshold=0.0, b1=0.9)),
    ("cclip_tau0", lambda: optclip.cclip(0.1, threshold=0.0)),
    ("acclip_tau0_eps0", lambda: optclip.acclip(0.1, initial_threshold=0.0, eps=0.0)),
    ("drop_in_clip_tau0", lambda: optax.chain(optclip.clip_by_global_norm(0.0), optax.sgd(0.1))),
]


def _all_makers():
    return [(c.name, c.make) for c in CASES] + ZERO_THRESHOLD_CASES


# The optimizers whose step takes a global norm: each runs with both forms of the norm.
GLOBAL_NORM = {
    "gclip",
    "gclip_momentum",
    "clipped_gd",
    "normalized_gd",
    "normalized_momentum_sgd",
    "clip_momentum_sgd",
    "gclip_tau0",
    "drop_in_clip_tau0",
    "zclip_adam",
    "adagc_adam",
    "skip_step_adam",
}
FORMS = ("cond", "select")


def _extreme_cases() -> list:
    cases = []
    for name, make in _all_makers():
        for form in FORMS if name in GLOBAL_NORM else FORMS[:1]:
            cases.append(pytest.param(name, make, form, id=f"{name}-{form}"))
    return cases


def test_global_norm_family_is_listed(monkeypatch):
    """GLOBAL_NORM names exactly the optimizers whose program takes the norm's conditional."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, "cond")
    params = jax.tree.map(jnp.asarray, initial_params())
    found = set()
    for name, make in _all_makers():
        tx = make()
        jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
        if "cond[" in str(jaxpr):
            found.add(name)
    assert found == GLOBAL_NORM


def _loss_with_gradient(params, g):
    """A loss whose gradient with respect to ``params`` is ``g``."""
    return sum(
        jnp.sum(p.astype(jnp.float32) * x.astype(jnp.float32))
        for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(g), strict=True)
    )


def fused_training_step(tx):
    """Loss, gradient, optimizer and parameter update in one jitted program, as users train."""

    @jax.jit
    def step(params, state, g):
        grads = jax.grad(_loss_with_gradient)(params, g)
        u, state = tx.update(grads, state, params)
        return optax.apply_updates(params, u), u, state

    return step


@pytest.mark.parametrize("name,make,form", _extreme_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_extreme_gradients_stay_finite(name, make, form, dtype, monkeypatch):
    """zero, tiny, huge and a 1e6x spike (capped at the dtype's range) never give inf/NaN,
    inside a fused training step and with either form of the global norm."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    rng = np.random.default_rng(0)
    tx = make()
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), initial_params())
    state = tx.init(params)
    step = fused_training_step(tx)
    kinds = ["zero", "zero", "tiny", "normal", "huge", "tiny", "zero", "normal"]
    for kind in kinds:
        g = _grads(kind, dtype, rng)
        params, u, state = step(params, state, g)
        assert _finite(u), f"{name}: non-finite update after a {kind} gradient"
        assert _finite(state), f"{name}: non-finite state after a {kind} gradient"
        assert _finite(params), f"{name}: non-finite params after a {kind} gradient"
    # A spike of 1e6x the normal scale (or the dtype's limit) in a single step.
    spike = min(1e6, _huge(dtype))
    g = jax.tree.map(
        lambda x: (x.astype(jnp.float32) * spike).astype(dtype), _grads("normal", dtype, rng)
    )
    _, u, state = step(params, state, g)
    assert _finite(u) and _finite(state)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_gives_non_finite_update(case, bad):
    tx = case.make()
    params = jax.tree.map(jnp.asarray, initial_params())
    g = jax.tree.map(jnp.ones_like, params)
    g["w"] = g["w"].at[1, 2].set(bad)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    assert not _finite(u), f"{case.name} turned a {bad} gradient into a finite step"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_apply_if_finite_skips_the_bad_step(case):
    tx = optax.apply_if_finite(case.make(), max_consecutive_errors=5)
    params = jax.tree.map(jnp.asarray, initial_params())
    state = tx.init(params)
    good = jax.tree.map(jnp.ones_like, params)
    bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    update = jax.jit(tx.update)
    _, state = update(good, state, params)
    inner_before = state.inner_state
    u, state = update(bad, state, params)
    assert int(state.notfinite_count) == 1
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    jax.tree.map(np.testing.assert_array_equal, state.inner_state, inner_before)
    u, state = update(good, state, params)
    assert _finite(u) and int(state.notfinite_count) == 0


def _cond(tree):
    return _norm_cond(_leaves(tree))


def _select(tree):
    return _norm_select(_leaves(tree))


# The public function, and both of its forms called directly (the lazy rescue under a lax.cond,
# and the select that always computes it), so the program an accelerator runs with
# OPTCLIP_GLOBAL_NORM=auto is checked on every backend.
NORMS = {"global_norm": optclip.numerics.global_norm, "cond": _cond, "select": _select}


@pytest.mark.parametrize("norm", NORMS.values(), ids=NORMS.keys())
class TestGlobalNorm:
    def test_matches_numpy(self, norm):
        rng = np.random.default_rng(0)
        tree = {"a": rng.standard_normal((5, 7)), "b": [rng.standard_normal(3)]}
        want = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tree)))
        got = jax.jit(norm)(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))
        assert float(got) == pytest.approx(want, rel=1e-6)

    @pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30, 3e38])
    def test_no_overflow_or_underflow(self, norm, scale):
        x = jnp.full((1000,), scale / 1000**0.5 * 0.5, jnp.float32)
        want = float(x[0]) * 1000**0.5  # the entry float32 actually holds
        got = float(jax.jit(norm)({"x": x, "y": jnp.zeros(3)}))
        assert got == pytest.approx(want, rel=1e-5)

    def test_extremes_of_float32(self, norm):
        big = float(jnp.finfo(jnp.float32).max) / 4
        got = float(jax.jit(norm)({"a": jnp.full((4,), big, jnp.float32), "b": jnp.ones(2)}))
        assert got == pytest.approx(2 * big, rel=1e-6)  # sqrt(4 big^2): half of float32's max
        # A norm beyond float32's range is inf, as the exact value rounds there.
        assert float(jax.jit(norm)({"a": jnp.full((4,), 4 * big, jnp.float32)})) == np.inf

    def test_wide_range_in_one_tree(self, norm):
        tree = {"big": jnp.array([3e30, 4e30], jnp.float32), "small": jnp.full((10,), 1e-30)}
        assert float(jax.jit(norm)(tree)) == pytest.approx(5e30, rel=1e-6)

    @pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
    def test_half_precision_extremes(self, norm, dtype):
        info = jnp.finfo(dtype)
        # A sixteenth of the largest value keeps the norm (8 entries' worth) below float32's max.
        for value in (float(info.max) / 16, float(info.smallest_normal)):
            x = jnp.full((64,), value, dtype)
            want = float(x[0].astype(jnp.float32)) * 8.0
            assert float(jax.jit(norm)({"x": x})) == pytest.approx(want, rel=1e-6)

    def test_bfloat16_leaves_accumulate_in_float32(self, norm):
        x = jnp.ones((100_000,), jnp.bfloat16)
        got = jax.jit(norm)(x)
        assert got.dtype == jnp.float32
        assert float(got) == pytest.approx(100_000**0.5, rel=1e-5)

    def test_empty_and_zero(self, norm):
        if norm is optclip.numerics.global_norm:
            assert float(norm({})) == 0.0
        assert float(jax.jit(norm)({"a": jnp.zeros(4)})) == 0.0
        assert float(jax.jit(norm)({"a": -jnp.zeros(4), "b": jnp.zeros((), jnp.bfloat16)})) == 0.0

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("others", [1.0, 1e-30, 1e30], ids=["normal", "tiny", "huge"])
    def test_non_finite(self, norm, bad, others):
        got = float(jax.jit(norm)({"a": jnp.array([others, bad]), "b": jnp.full(3, others)}))
        assert np.isnan(got) if np.isnan(bad) else got == np.inf


def _constant_multipliers(jaxpr):
    """Every float literal or constant that multiplies or divides in ``jaxpr``, sub-jaxprs too."""
    found = []
    consts = dict(zip(jaxpr.jaxpr.constvars, jaxpr.consts, strict=True))

    def walk(inner, consts):
        for eqn in inner.eqns:
            if eqn.primitive.name in ("mul", "div"):
                for v in eqn.invars:
                    value = v.val if hasattr(v, "val") else consts.get(v)  # a literal
                    if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
                        found.append(float(np.asarray(value).max()))
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else [param]:
                    if hasattr(sub, "consts"):  # a closed jaxpr
                        walk(sub.jaxpr, dict(zip(sub.jaxpr.constvars, sub.consts, strict=True)))
                    elif hasattr(sub, "eqns"):
                        walk(sub, {})

    walk(jaxpr.jaxpr, consts)
    return found


@pytest.mark.parametrize("form", ["cond", "select", "auto"])
def test_no_constant_whose_square_leaves_float32(form, monkeypatch):
    """The norm's program multiplies only by constants whose square is a normal float32, so a
    compiler that rewrites ``(c x)^2`` as ``c^2 x^2`` cannot make inf or 0 of them."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    tree = {"a": jnp.ones(10), "b": jnp.ones((3, 4), jnp.bfloat16), "c": jnp.ones(2, jnp.complex64)}
    constants = _constant_multipliers(
        jax.make_jaxpr(lambda t: optclip.numerics.global_norm(t))(tree)
    )
    info = np.finfo(np.float32)
    assert constants, "the rescue path should scale by powers of two"
    for c in constants:
        assert info.smallest_normal <= c * c <= info.max, c


def test_global_norm_lowering_per_platform(monkeypatch):
    """By default every backend runs the conditional rescue; with ``auto`` the GPU and TPU
    programs read each leaf once, without it, and CPU keeps it.

    The GPU runtime copies a conditional's predicate to the host and waits for the device
    every step, which ``auto`` avoids (docs/performance.md).
    """
    # The default is what an unset variable gives, whatever the environment running the tests.
    monkeypatch.delenv(NORM_FORM_VARIABLE, raising=False)
    tree = {"a": jnp.ones(10), "b": jnp.ones((3, 4), jnp.bfloat16)}

    from jax import export  # a submodule that older jax does not import with jax

    def lowered(platform):
        # A new function each time: jit would reuse a trace of global_norm made under another form.
        fn = jax.jit(lambda t: optclip.numerics.global_norm(t))
        return export.export(fn, platforms=[platform])(tree)

    for p in ("cpu", "cuda", "tpu"):
        assert "optimization_barrier" in lowered(p).mlir_module()
    monkeypatch.setenv(NORM_FORM_VARIABLE, "auto")
    text = {p: lowered(p).mlir_module() for p in ("cpu", "cuda", "tpu")}
    assert "optimization_barrier" in text["cpu"]
    if release(jax.__version__) < (0, 12):
        # jax 0.6.0 keeps every platform's branch in a one-platform export (0.12 drops the
        # others); the accelerator's branch is there, one three-sum reduction per leaf.
        assert all(text[p].count("stablehlo.reduce(") >= 2 for p in ("cuda", "tpu"))
        return
    for p in ("cuda", "tpu"):
        assert "optimization_barrier" not in text[p]
        # One reduction of three sums (plain, scaled down, scaled up) for the two small leaves,
        # packed into one vector (_square_sums.py): one read.
        assert text[p].count("stablehlo.reduce(") == 1
        assert text[p].count("stablehlo.case") < text["cpu"].count("stablehlo.case")


def test_norm_form_is_checked(monkeypatch):
    monkeypatch.setenv(NORM_FORM_VARIABLE, "fast")
    with pytest.raises(
        ValueError, match=r"OPTCLIP_GLOBAL_NORM must be one of cond, select, auto, got 'fast'"
    ):
        optclip.numerics.global_norm({"a": jnp.ones(2)})


class TestZeroOverZero:
    def test_clip_factor(self):
        f = optclip.numerics.clip_factor(
            jnp.array([0.0, 0.0, 2.0, 1.0, np.inf]), jnp.array([0.0, 1.0, 1.0, 2.0, 1.0])
        )
        np.testing.assert_array_equal(f, [1.0, 1.0, 0.5, 1.0, 0.0])

    def test_safe_divide(self):
        got = safe_divide(jnp.array([0.0, 2.0, np.inf, 1.0]), jnp.array([0.0, 4.0, np.inf, np.nan]))
        assert got[0] == 0.0 and got[1] == 0.5
        assert np.isnan(got[2]) and np.isnan(got[3])

    def test_drop_in_clip_beats_optax_at_zero(self):
        zero = {"w": jnp.zeros(3)}
        u_optax, _ = optax.clip_by_global_norm(0.0).update(zero, optax.EmptyState())
        assert np.all(np.isnan(u_optax["w"]))  # optax's behaviour this rule improves on
        tx = optclip.clip_by_global_norm(0.0)
        u, s = tx.update(zero, tx.init(zero))
        np.testing.assert_array_equal(u["w"], np.zeros(3))
        assert float(s.norm) == 0.0 and float(s.clipped) == 0.0

    @pytest.mark.parametrize(
        "make",
        [
            lambda: optclip.acclip(1e-3, rms_scale=True, eps=0.0),
            lambda: optclip.spam(1e-3, eps=0.0),
            lambda: optclip.muon(0.02, adam_eps=0.0),
            lambda: optclip.generalized_signsgd(1e-3, eps=0.0),
            lambda: optax.adam(1e-3, eps=0.0),  # optax's: 0/0, which the rule improves on
        ],
        ids=["acclip_rms", "spam", "muon_adamw_leaves", "generalized_signsgd", "optax_adam"],
    )
    def test_an_rms_denominator_at_eps_zero(self, make, request):
        # A coordinate whose gradient has always been 0 has m = 0 and sqrt(v) = 0: its update
        # is 0 (rule 2), also with eps = 0.
        tx = make()
        params = {"w": jnp.zeros(3), "kernel": jnp.zeros((4, 4))}
        grads = {"w": jnp.array([1.0, 0.0, -2.0]), "kernel": jnp.zeros((4, 4))}
        state = tx.init(params)
        for _ in range(2):
            u, state = jax.jit(tx.update)(grads, state, params)
        if request.node.callspec.id == "optax_adam":
            assert np.isnan(u["w"][1])
            return
        assert u["w"][1] == 0.0 and np.all(np.isfinite(u["w"]))
        assert u["w"][0] != 0.0 and u["w"][2] != 0.0


class TestPowerMean:
    @pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.0, 3.0])
    def test_matches_direct_formula(self, alpha):
        rng = np.random.default_rng(1)
        a, b = rng.uniform(0, 5, 100), rng.uniform(0, 5, 100)
        want = (0.9 * a**alpha + 0.1 * b**alpha) ** (1 / alpha)
        got = power_mean(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 0.9, alpha)
        np.testing.assert_allclose(got, want, rtol=2e-6)
        # Traced alpha (inject_hyperparams) takes the general path: same values.
        got_traced = jax.jit(
            lambda al: power_mean(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 0.9, al)
        )(alpha)
        np.testing.assert_allclose(got_traced, want, rtol=1e-5)

    @pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 4.0])
    def test_huge_inputs_do_not_overflow(self, alpha):
        got = power_mean(jnp.float32(0.0), jnp.float32(3e38), 0.5, alpha)
        assert np.isfinite(float(got)) and float(got) > 1e38


# Complex leaves by modulus (rule 5), checked against the definitions written with numpy.
Z = {"a": np.array([3 + 4j, -1j, 0j], np.complex64), "b": np.array([[2 - 2j]], np.complex64)}


def test_global_norm_of_complex_leaves_uses_moduli():
    expected = np.sqrt(sum(np.sum(np.abs(v.astype(np.complex128)) ** 2) for v in Z.values()))
    np.testing.assert_allclose(optclip.numerics.global_norm(Z), expected, rtol=1e-6)
    # The rescaled sums (entries whose squares underflow or overflow float32) agree, in both
    # forms.
    for scale in (1e-25, 1e25):
        z = jax.tree.map(lambda v, s=scale: v * np.complex64(s), Z)
        for norm in (optclip.numerics.global_norm, _select):
            np.testing.assert_allclose(norm(z), expected * scale, rtol=1e-5)


def test_clipping_a_complex_update_keeps_each_phase():
    tau = 1.5
    u, _ = optclip.clip_coordinatewise(tau).update(Z, optclip.clip_coordinatewise(tau).init(Z))
    for k, v in Z.items():
        v = v.astype(np.complex128)
        expected = np.where(np.abs(v) > tau, tau * v / np.where(v == 0, 1, np.abs(v)), v)
        np.testing.assert_allclose(u[k], expected, rtol=1e-6, atol=1e-7)
    g, _ = optclip.clip_by_global_norm(tau).update(Z, optclip.clip_by_global_norm(tau).init(Z))
    norm = np.sqrt(sum(np.sum(np.abs(v.astype(np.complex128)) ** 2) for v in Z.values()))
    for k, v in Z.items():
        np.testing.assert_allclose(g[k], v * (tau / norm), rtol=1e-6)


def test_acclip_on_complex_keeps_complex_momentum_and_a_real_threshold():
    tx = optclip.scale_by_acclip(b1=0.5, b2=0.5, initial_threshold=1.0)
    _, state = tx.update(Z, tx.init(Z))
    for k, v in Z.items():
        assert state.mu[k].dtype == np.complex64 and state.tau[k].dtype == np.float32
        np.testing.assert_allclose(state.mu[k], 0.5 * v, rtol=1e-6)
        np.testing.assert_allclose(state.tau[k], 0.5 * 1.0 + 0.5 * np.abs(v), rtol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_leaf_norms_are_each_leafs_global_norm(form, monkeypatch):
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    tree = {
        "ordinary": jnp.array([3.0, 4.0]),
        "zero": jnp.zeros(3),
        "huge": jnp.full(4, 3e38),
        "small": jnp.full(4, 1e-20),
        "complex": jnp.array([3 + 4j, 0j], jnp.complex64),
        "half": jnp.full(8, 60000.0, jnp.float16),
    }
    norms = jax.jit(optclip._numerics.leaf_norms)(tree)
    for name, leaf in tree.items():
        np.testing.assert_allclose(
            norms[name], optclip.numerics.global_norm(leaf), rtol=1e-6, err_msg=name
        )
    assert np.isnan(optclip._numerics.leaf_norms({"a": jnp.array([np.nan]), "b": jnp.ones(2)})["a"])
    # The cond form's one exception: every square flushed reads as a zero leaf.
    flushed = optclip._numerics.leaf_norms({"tiny": jnp.full(4, 1e-24), "b": jnp.ones(2)})["tiny"]
    assert float(flushed) == (0.0 if form == "cond" else pytest.approx(2e-24, rel=1e-5))
