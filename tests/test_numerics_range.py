"""The numerics rule up to each dtype's largest value (docs/numerics.md, rule 3).

Every norm-based transform and optimizer, on gradients whose entries sweep from the dtype's
smallest normal value to its largest (one leaf and many leaves; global norms far beyond
float32's range), against a float64 NumPy re-derivation of the clipped or normalized update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optclip
from optclip._numerics import NORM_FORM_VARIABLE
from tests.conftest import unset_gamma_as_zero

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# Normwise relative error allowed: a few roundings of the output dtype.
RTOL = {"float32": 1e-5, "bfloat16": 1.6e-2, "float16": 2e-3}
TREES = {"one leaf": {"w": (256,)}, "many leaves": {"a": (64,), "b": (8, 8), "c": (3,), "d": ()}}
FORMS = ("cond", "select")


def _magnitudes(dtype) -> list[float]:
    """Largest entry magnitudes from 64 times the smallest normal value to the largest value.

    The floor keeps a momentum (``(1 - b1) g``) and the parts of a mixed update normal numbers:
    an entry below the normal range is flushed to zero by backends that do (XLA:CPU), before any
    norm is taken.
    """
    info = jnp.finfo(dtype)
    tiny, big = 64 * float(info.smallest_normal), float(info.max)
    return [*np.geomspace(tiny, big, 9)[:-1].tolist(), big / 16, big / 2, big]


def _gradient(shapes, dtype, magnitude, seed=0):
    """Entries in ``[magnitude / 2, magnitude)`` with random signs, all normal numbers."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        x = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape) * magnitude
        out[name] = jnp.asarray(np.asarray(x, np.float64).astype(np.float32), dtype)
    return out


def _f64(tree) -> dict:
    return {k: np.asarray(jnp.asarray(v, jnp.float32), np.float64) for k, v in tree.items()}


def _norm(tree64) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree64.values())))


def _assert_close(got, want, dtype, what):
    got = _f64(got)
    assert all(np.all(np.isfinite(v)) for v in got.values()), f"{what}: not finite"
    err = _norm({k: got[k] - want[k] for k in want})
    scale = _norm(want)
    # Entries whose true value is below the normal range may be flushed to zero (XLA:CPU does).
    count = sum(v.size for v in want.values())
    flush = float(jnp.finfo(dtype).smallest_normal) * np.sqrt(count)
    bound = RTOL[jnp.dtype(dtype).name] * scale + flush
    assert err <= bound, f"{what}: error {err} against {scale}"


def _finite_state(state) -> bool:
    """Every float in ``state`` is finite, except a recorded norm, which is the norm rounded to
    float32: inf beyond float32's range, and AdaGC's ``gamma`` of a leaf whose norm read 0,
    which keeps its initial ``+inf`` (docs/numerics.md)."""
    leaves = jax.tree_util.tree_leaves_with_path(unset_gamma_as_zero(state))
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for path, x in leaves
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
        and "norm" not in jax.tree_util.keystr(path)
    )


def _clip64(g64, tau):
    n = _norm(g64)
    return {k: v * min(1.0, tau / n) for k, v in g64.items()}


# name -> (transform factory, float64 re-derivation of its first update from the gradient).
ONE_STEP = {
    "clip_by_global_norm": (lambda: optclip.clip_by_global_norm(1.0), lambda g: _clip64(g, 1.0)),
    "gclip": (
        lambda: optclip.gclip(0.5, 2.0, b1=0.9),
        lambda g: _sgd(_clip64(_times(g, 0.1), 2.0), 0.5),
    ),
    "clipped_gd": (lambda: optclip.clipped_gd(0.5, 2.0), lambda g: _sgd(_clip64(g, 2.0), 0.5)),
    "normalize_by_global_norm": (
        lambda: optclip.normalize_by_global_norm(),
        lambda g: _times(g, 1.0 / _norm(g)),
    ),
    "normalize_beta": (
        lambda: optclip.normalize_by_global_norm(1e-3),
        lambda g: _times(g, 1.0 / (_norm(g) + 1e-3)),
    ),
    "normalized_gd": (
        lambda: optclip.normalized_gd(0.5, 0.25),
        lambda g: _sgd(_times(g, 1.0 / (_norm(g) + 0.25)), 0.5),
    ),
    "normalized_momentum_sgd": (
        lambda: optclip.normalized_momentum_sgd(0.5, b1=0.9),
        lambda g: _sgd(_times(g, 1.0 / _norm(g)), 0.5),
    ),
    "scale_by_clip_momentum": (
        lambda: optclip.scale_by_clip_momentum(1.5, b1=0.5, nu=0.7),
        lambda g: _mix(_clip64(_times(g, 0.5), 1.5), _clip64(g, 1.5), 0.7),
    ),
    "clip_momentum_sgd": (
        lambda: optclip.clip_momentum_sgd(0.5, 1.0, b1=0.5, nu=1.0),
        lambda g: _sgd(_clip64(_times(g, 0.5), 2.0), 0.5),
    ),
    "zclip_warmup": (
        lambda: optclip.zclip(max_grad_norm=1.0),
        lambda g: _times(g, min(1.0, 1.0 / (_norm(g) + 1e-6))),
    ),
    "adagc_warmup": (lambda: optclip.adagc(lambda_abs=1.0), lambda g: _clip64(g, 1.0)),
}


def _times(g64, c):
    return {k: v * c for k, v in g64.items()}


def _sgd(g64, lr):
    return _times(g64, -lr)


def _mix(a, b, nu):
    return {k: nu * a[k] + (1.0 - nu) * b[k] for k in a}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", ONE_STEP, ids=str)
def test_first_update_across_the_range(name, dtype, tree, form, monkeypatch):
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    make, reference = ONE_STEP[name]
    tx = make()
    shapes = TREES[tree]
    params = _gradient(shapes, dtype, 1.0, seed=1)
    update = jax.jit(tx.update)
    state0 = tx.init(params)
    for magnitude in _magnitudes(dtype):
        g = _gradient(shapes, dtype, magnitude)
        u, state = update(g, state0, params)
        _assert_close(u, reference(_f64(g)), dtype, f"{name} at {magnitude:.3g}")
        assert _finite_state(state), f"{name} at {magnitude:.3g}"


def _ordinary_then(tx, shapes, dtype, magnitude, form, monkeypatch, ordinary=1):
    """``ordinary`` steps at norm about 1, then one at ``magnitude``: the first gradient (a list
    of them when ``ordinary > 1``), the last, its update and the state."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    firsts = [_gradient(shapes, dtype, 0.5 * (k + 1), seed=2 + k) for k in range(ordinary)]
    update = jax.jit(tx.update)
    state = tx.init(firsts[0])
    for first in firsts:
        _, state = update(first, state)
    g = _gradient(shapes, dtype, magnitude)
    u, state = update(g, state)
    return (firsts[0] if ordinary == 1 else firsts), g, u, state


@pytest.mark.parametrize("option", ["mean", "adaptive_scaling"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_zclip_after_warmup_clips_to_its_threshold(dtype, tree, form, option, monkeypatch):
    shapes = TREES[tree]
    for magnitude in _magnitudes(dtype)[-4:]:
        tx = optclip.zclip(warmup_steps=2, max_grad_norm=None, clip_option=option)
        first, g, u, state = _ordinary_then(tx, shapes, dtype, magnitude, form, monkeypatch, 2)
        # After the warm-up norms n0 and n1 the mean is their mean and the spread half their
        # gap (> 0): a norm n with z = (n - mean) / (std + 1e-6) > 2.5 is a spike, clipped to
        # the mean, or to mean + 2.5 std / (z / 2.5) (adaptive scaling).
        n0, n1 = (_norm(_f64(x)) for x in first)
        mean, std = (n0 + n1) / 2, abs(n0 - n1) / 2
        n = _norm(_f64(g))
        z = (n - mean) / (std + 1e-6)
        if z <= 2.5:
            continue
        threshold = mean if option == "mean" else mean + 2.5 * std / (z / 2.5)
        want = _times(_f64(g), threshold / (n + 1e-6))
        _assert_close(u, want, dtype, f"zclip at {magnitude:.3g}")
        assert float(state.spike) == 1.0
        assert np.isfinite(float(state.mean)) and np.isfinite(float(state.std))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_zclip_statistics_stay_finite_beyond_float32(dtype, form, monkeypatch):
    """Norms beyond float32's range, every step: the statistics saturate at float32's largest
    value, the updates pass (no cap) or are clipped, never NaN."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    big = float(jnp.finfo(dtype).max)
    tx = optclip.zclip(warmup_steps=2, max_grad_norm=None, mode="percentile")
    state = tx.init({"w": jnp.zeros(64, dtype)})
    update = jax.jit(tx.update)
    for step in range(5):
        g = _gradient({"w": (64,)}, dtype, big, seed=step)
        u, state = update(g, state)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u)), step
        assert np.isfinite(float(state.mean)) and np.isfinite(float(state.std)), step
        assert float(state.mean) > 1e38


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_adagc_after_warmup_clips_each_leaf(dtype, form, monkeypatch):
    shapes = TREES["many leaves"]
    tx = optclip.adagc(warmup_steps=1, lambda_rel=1.05)
    # Above 1e-20: in the cond form a leaf whose squares all flush to zero (entries below
    # about 3.7e-23) reads as a zero leaf (optclip.numerics.leaf_norms, docs/numerics.md).
    for magnitude in [m for m in _magnitudes(dtype) if m >= 1e-20]:
        first, g, u, state = _ordinary_then(tx, shapes, dtype, magnitude, form, monkeypatch)
        f64, g64 = _f64(first), _f64(g)
        # Warm-up: gamma_i = h ||first_i|| with h the global clip factor at lambda_abs = 1.
        h = min(1.0, 1.0 / _norm(f64))
        want = {}
        for k in g64:
            n = float(np.sqrt(np.sum(g64[k] ** 2)))
            threshold = 1.05 * h * float(np.sqrt(np.sum(f64[k] ** 2)))
            want[k] = g64[k] * min(1.0, threshold / n) if n > 0 else g64[k]
        _assert_close(u, want, dtype, f"adagc at {magnitude:.3g}")
        assert bool(jnp.all(jnp.isfinite(state.gamma)))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ONE_STEP, ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_beside_the_largest_values_stays_nan(name, bad, form, monkeypatch):
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    tx = ONE_STEP[name][0]()
    g = _gradient(TREES["many leaves"], jnp.float32, float(jnp.finfo(jnp.float32).max))
    g["a"] = g["a"].at[3].set(bad)
    u, _ = jax.jit(tx.update)(g, tx.init(g), g)
    assert bool(jnp.isnan(u["a"][3])), name
    assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u)), name


def test_the_reported_gradient():
    """A finite float32 gradient of norm about 2.2e38 is clipped to length 1, not zeroed."""
    tx = optclip.clip_by_global_norm(1.0)
    g = {"w": jnp.array([2e38, 1e38], jnp.float32)}
    u, state = tx.update(g, tx.init(g))
    want = np.array([2e38, 1e38]) / np.hypot(2e38, 1e38)
    np.testing.assert_allclose(np.asarray(u["w"], np.float64), want, rtol=1e-6)
    assert float(state.clipped) == 1.0


@pytest.mark.parametrize("form", FORMS)
def test_ordinary_magnitudes_keep_the_plain_bits(form, monkeypatch):
    """Where the plain factor is a normal number, the update is ``u * (tau / ||u||)`` to the
    bit: the exponent shift is 0 there."""
    monkeypatch.setenv(NORM_FORM_VARIABLE, form)

    def clip_and_product(g, tau):  # defined per test: a trace cached for one form is not reused
        tx = optclip.clip_by_global_norm(tau)
        factor = tau / optclip.numerics.global_norm(g)
        return tx.update(g, tx.init(g))[0], jax.tree.map(lambda x: x * factor, g)

    rng = np.random.default_rng(3)
    for magnitude in (1e-10, 1.0, 1e10, 1e18):
        g = {
            k: jnp.asarray(rng.standard_normal(s) * magnitude, jnp.float32)
            for k, s in {"a": (5, 3), "b": (4,)}.items()
        }
        # In one program: a norm reduced outside it may differ in its last bit (another
        # summation order), which is not what this checks.
        u, want = jax.jit(clip_and_product)(g, jnp.float32(magnitude * 0.1))
        for k in g:
            np.testing.assert_array_equal(u[k], want[k])


# Leaves below, at and above the packing size, scalars, an empty leaf and a complex one.
MIXED = {
    "scalar": (),
    "empty": (0,),
    "bias": (16,),
    "odd": (3, 5),
    "same_bucket": (9,),
    "edge": (1 << 14,),
    "large": ((1 << 14) + 1,),
    "kernel": (3, 3, 40, 50),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("magnitude", [1e-30, 1.0, 3e38], ids=["tiny", "one", "largest"])
def test_packed_sums_give_every_leafs_norm(form, magnitude, monkeypatch):
    """The packed reductions (small leaves in one vector, or stacked by size bucket) give the
    global norm and each leaf's norm of a float64 re-derivation, across the range."""
    from optclip._numerics import global_norm_parts, leaf_norm_parts
    from optclip._scaled import ScaledNorm

    monkeypatch.setenv(NORM_FORM_VARIABLE, form)
    tree = _gradient(MIXED, jnp.float32, magnitude)
    rng = np.random.default_rng(5)
    tree["complex"] = jnp.asarray(
        (rng.standard_normal(7) + 1j * rng.standard_normal(7)) * magnitude / 4, jnp.complex64
    )
    leaves = jax.tree.leaves(tree)
    as64 = [np.abs(np.asarray(x, np.complex128)) for x in leaves]

    def value(norm: ScaledNorm) -> np.ndarray:
        m, e = (np.asarray(x, np.float64) for x in norm)
        return m * 2.0**e

    want = np.array([np.sqrt(np.sum(a**2)) for a in as64])
    if form == "cond" and magnitude < 1e-20:
        want = np.zeros_like(want)  # the cond form's exception: every square flushed reads as 0
    got = value(jax.jit(lambda x: leaf_norm_parts(x))(leaves))  # a new trace per form
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 sums of up to 18000 squares
    total = value(jax.jit(lambda t: global_norm_parts(t))(tree))
    want_total = np.sqrt(sum(np.sum(a**2) for a in as64))
    np.testing.assert_allclose(total, want_total, rtol=1e-5)
