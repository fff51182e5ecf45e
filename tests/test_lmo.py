"""The per-layer LMO (`optclip.lmo`, `optclip.dual_norm`), the default assignment of norms to a
Flax params tree, and `scale_by_lmo`, against NumPy re-derivations from the definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import LmoDims

RNG = np.random.default_rng(0)
NS_ABC = (3.4445, -4.7750, 2.0315)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --- NumPy re-derivations (float64), from the definitions in docs/normalized.md -------------


def np_newton_schulz(m, steps=5, eps=1e-7):
    x = np.asarray(m, np.float64)
    x = x / (np.linalg.norm(x) + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    a, b, c = NS_ABC
    for _ in range(steps):
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    return x.T if tall else x


def np_lmo(m, norm):
    """lmo of a Flax dense kernel (d_in, d_out), Scion's scales and guards."""
    m = np.asarray(m, np.float64)
    d_in, d_out = m.shape
    if norm == "spectral":
        return -np.sqrt(d_out / d_in) * np_newton_schulz(m)
    if norm == "column":  # each fan-in index (a storage row in Flax) over the fan-out
        rms = np.linalg.norm(m, axis=1, keepdims=True) / np.sqrt(d_out)
        return -m / (rms + 1e-8)
    if norm == "row":  # each fan-out index (a storage column in Flax) over the fan-in
        n = np.linalg.norm(m, axis=0, keepdims=True) * np.sqrt(d_in)
        return -m / (n + 1e-8)
    if norm == "sign":
        return -np.sign(m) / d_in
    return -m / (np.sqrt(np.mean(m**2)) + 1e-8)


def np_norm(w, norm):
    """The layer norm whose unit ball the LMO minimizes over."""
    w = np.asarray(w, np.float64)
    d_in, d_out = w.shape
    if norm == "spectral":
        return np.sqrt(d_in / d_out) * np.linalg.norm(w, 2)
    if norm == "column":
        return np.max(np.linalg.norm(w, axis=1)) / np.sqrt(d_out)
    if norm == "row":
        return np.max(np.linalg.norm(w, axis=0)) * np.sqrt(d_in)
    if norm == "sign":
        return d_in * np.max(np.abs(w))
    return np.sqrt(np.mean(w**2))


def np_dual(m, norm):
    m = np.asarray(m, np.float64)
    d_in, d_out = m.shape
    if norm == "spectral":
        return np.sqrt(d_out / d_in) * np.linalg.svd(m, compute_uv=False).sum()
    if norm == "column":
        return np.sqrt(d_out) * np.linalg.norm(m, axis=1).sum()
    if norm == "row":
        return np.linalg.norm(m, axis=0).sum() / np.sqrt(d_in)
    if norm == "sign":
        return np.abs(m).sum() / d_in
    return np.sqrt(m.size) * np.linalg.norm(m)


NORMS = ["spectral", "column", "row", "sign", "rms"]
SHAPES = [(6, 10), (12, 5), (7, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", NORMS)
def test_lmo_matches_numpy_rederivation(norm, shape):
    m = _normal(*shape)
    got = np.asarray(optclip.lmo(jnp.asarray(m), norm), np.float64)
    np.testing.assert_allclose(got, np_lmo(m, norm), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_lmo_is_the_svd_polar_factor_to_newton_schulz_accuracy(shape):
    # NS gives U S' V^T with S' in about [0.7, 1.2] by design: U^T O V is diagonal with S' on it.
    m = _normal(*shape)
    d_in, d_out = shape
    o = -np.asarray(optclip.lmo(jnp.asarray(m), "spectral"), np.float64) / np.sqrt(d_out / d_in)
    u, _, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    core = u.T @ o @ vt.T
    diag = np.diag(core)
    assert np.max(np.abs(core - np.diag(diag))) < 1e-4
    assert np.all((diag > 0.6) & (diag < 1.25)), diag


@pytest.mark.parametrize("norm", NORMS)
def test_lmo_has_unit_norm_and_dual_norm_is_minus_the_inner_product(norm):
    m = _normal(9, 6)
    d = np.asarray(optclip.lmo(jnp.asarray(m), norm), np.float64)
    size = np_norm(d, norm)
    if norm == "spectral":  # the largest NS singular value, not exactly 1
        assert 0.8 < size < 1.25
    else:
        np.testing.assert_allclose(size, 1.0, rtol=1e-5)
    dual = float(optclip.dual_norm(jnp.asarray(m), norm))
    np.testing.assert_allclose(dual, -np.sum(m * d), rtol=1e-5)
    tol = 0.2 if norm == "spectral" else 1e-5  # NS's S' is within ~20% of 1
    np.testing.assert_allclose(dual, np_dual(m, norm), rtol=tol)
    # Hölder: <M, D> <= ||M||_* ||D|| for any D, with equality at D = -lmo(M).
    for _ in range(20):
        other = _normal(9, 6)
        assert np.sum(m * other) <= np_dual(m, norm) * np_norm(other, norm) * (1 + 1e-6)


def _same(a, b, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("norm", NORMS)
def test_attention_kernels_are_the_fused_dense_layer(norm):
    q = _normal(8, 2, 4)  # (d_in, heads, head_dim): fan-out is heads * head_dim
    got = optclip.lmo(jnp.asarray(q), norm, LmoDims((0,), (1, 2)))
    _same(got, np_lmo(q.reshape(8, 8), norm).reshape(q.shape))
    o = _normal(2, 4, 6)  # (heads, head_dim, d_out): fan-in is heads * head_dim
    got = optclip.lmo(jnp.asarray(o), norm, LmoDims((0, 1), (2,)))
    _same(got, np_lmo(o.reshape(8, 6), norm).reshape(o.shape))


@pytest.mark.parametrize("norm", NORMS)
def test_a_stacked_layer_axis_is_a_batch_axis_and_the_dual_norm_sums_over_it(norm):
    w = _normal(3, 5, 7)  # (layers, d_in, d_out), as nnx.scan / nnx.vmap stack them
    dims = LmoDims((1,), (2,))
    got = optclip.lmo(jnp.asarray(w), norm, dims)
    for i in range(3):
        _same(got[i], np_lmo(w[i], norm))
    dual = float(optclip.dual_norm(jnp.asarray(w), norm, dims))
    expected = sum(float(optclip.dual_norm(jnp.asarray(w[i]), norm)) for i in range(3))
    np.testing.assert_allclose(dual, expected, rtol=1e-5)


def test_a_conv_kernel_is_scions_spectral_conv_view():
    k = _normal(3, 3, 4, 6)  # Flax (h, w, d_in, d_out)
    got = optclip.lmo(jnp.asarray(k), "spectral", LmoDims((2,), (3,), (0, 1)))
    # Scion: NS of the (fan-in = h w d_in, d_out) matrix, times sqrt(d_out/d_in) / (h w).
    ns = np_newton_schulz(k.reshape(36, 6))
    _same(got, -(np.sqrt(6 / 4) / 9) * ns.reshape(k.shape), rtol=2e-4, atol=2e-6)
    muon = optclip.lmo(
        jnp.asarray(k), "spectral", LmoDims((2,), (3,), (0, 1)), spectral_scale="muon"
    )
    _same(muon, -max(1.0, np.sqrt(6 / 36)) * ns.reshape(k.shape), rtol=2e-4, atol=2e-6)


def test_an_embedding_gets_each_tokens_vector_to_rms_one():
    e = _normal(11, 8)  # Flax Embed (vocab, dim): Scion's ColNorm(transpose=True)
    got = np.asarray(optclip.lmo(jnp.asarray(e), "column"))
    np.testing.assert_allclose(np.sqrt(np.mean(got**2, axis=1)), 1.0, rtol=1e-5)
    assert np.all(np.sign(got) == -np.sign(e))


def test_a_vector_is_one_fan_out_and_spectral_equals_rms_there():
    b = jnp.asarray(_normal(7))
    _same(optclip.lmo(b, "rms"), -b / jnp.sqrt(jnp.mean(b**2)))
    # A (1, n) matrix has one singular value, which NS maps into its band, not exactly to 1.
    ratio = np.asarray(optclip.lmo(b, "spectral")) / np.asarray(optclip.lmo(b, "rms"))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert 0.6 < ratio[0] < 1.25
    _same(optclip.lmo(b, "sign"), -jnp.sign(b))  # d_in = 1: Signum's direction


def test_ns_dtype_bfloat16_is_close_to_float32():
    m = jnp.asarray(_normal(16, 32))
    a = optclip.lmo(m, "spectral")
    b = optclip.lmo(m, "spectral", ns_dtype=jnp.bfloat16)
    assert a.dtype == b.dtype == jnp.float32
    # bfloat16 keeps 8 bits: a few percent of the step, as in the authors' runs.
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 0.1


@pytest.mark.parametrize("norm", NORMS)
def test_numerics_rule(norm):
    zero = optclip.lmo(jnp.zeros((4, 6)), norm)
    assert np.all(np.asarray(zero) == 0)
    assert float(optclip.dual_norm(jnp.zeros((4, 6)), norm)) == 0.0
    for bad in (np.nan, np.inf):
        m = jnp.ones((4, 6)).at[1, 2].set(bad)
        assert np.isnan(np.asarray(optclip.lmo(m, norm))).any()
    huge = jnp.asarray(_normal(4, 6)) * 1e37
    out = np.asarray(optclip.lmo(huge, norm))
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
    _same(out, optclip.lmo(huge / 1e37, norm), rtol=1e-4, atol=1e-6)
    tiny = jnp.asarray(_normal(4, 6)) * 1e-30
    assert np.all(np.isfinite(np.asarray(optclip.lmo(tiny, norm))))
    for dtype in (jnp.bfloat16, jnp.float16):
        low = optclip.lmo(jnp.asarray(_normal(4, 6), dtype), norm)
        assert low.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(low)))


@pytest.mark.parametrize("norm", NORMS)
def test_jit_equals_eager(norm):
    m = jnp.asarray(_normal(5, 9))
    f = lambda x: (optclip.lmo(x, norm), optclip.dual_norm(x, norm))
    # Newton-Schulz's five matrix products carry the compiler's float32 rounding (~1e-6).
    for a, b in zip(f(m), jax.jit(f)(m), strict=True):
        _same(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda: optclip.lmo(jnp.ones((2, 2)), "nuclear"), ValueError, "`norm`"),
        (lambda: optclip.lmo(jnp.ones((2, 2, 2)), "spectral"), ValueError, "`dims`"),
        (lambda: optclip.lmo(jnp.ones((2, 2)), "row", LmoDims((0,), (0,))), ValueError, "twice"),
        (lambda: optclip.lmo(jnp.ones((2, 2)), "row", LmoDims((0,), (5,))), ValueError, "dims."),
        (lambda: optclip.lmo(jnp.ones((2, 2)), "row", spectral_scale="x"), ValueError, "scale"),
        (lambda: optclip.lmo(jnp.ones((2, 2), jnp.complex64), "row"), TypeError, "`m`"),
        (lambda: optclip.scale_by_lmo(ns_steps=0), ValueError, "`ns_steps`"),
        (lambda: optclip.scale_by_lmo(radius=-1.0), ValueError, "`radius`"),
        (lambda: optclip.scale_by_lmo(l1=-1.0), ValueError, "`l1`"),
        (lambda: optclip.scale_by_lmo(eps=-1.0), ValueError, "`eps`"),
        (lambda: optclip.scale_by_lmo(l0=0.0, l1=0.0).init({"w": jnp.ones(2)}), ValueError, "`l0`"),
        (lambda: optclip.scale_by_lmo(norms="x").init({"w": jnp.ones(2)}), ValueError, "`norms`"),
        (
            lambda: optclip.default_lmo_norms({"w": jnp.ones(2)}, dims=LmoDims()),
            TypeError,
            "`dims`",
        ),
    ],
)
def test_wrong_input_names_the_argument(call, error, fragment):
    with pytest.raises(error, match=fragment.replace(".", r"\.")):
        call()


# --- the default assignment on a real Flax NNX model -----------------------------------------


def _nnx_params():
    nnx = pytest.importorskip("flax.nnx")

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(2, 8, qkv_features=8, decode=False, rngs=rngs)
            self.ln = nnx.LayerNorm(8, rngs=rngs)
            self.mlp = nnx.Linear(8, 16, rngs=rngs)
            self.proj = nnx.Linear(16, 8, use_bias=False, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(11, 8, rngs=rngs)
            self.block = Block(rngs)
            self.conv = nnx.Conv(8, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(8, 11, rngs=rngs)

    return nnx.state(Model(nnx.Rngs(0)), nnx.Param)


def test_default_assignment_on_an_nnx_model():
    params = _nnx_params()
    norms, dims = optclip.default_lmo_norms(params)
    flat = {
        optclip._lmo_assign.path_names(p): (n, d)
        for (p, n), d in zip(
            jax.tree_util.tree_flatten_with_path(norms)[0],
            jax.tree.leaves(dims, is_leaf=lambda x: isinstance(x, LmoDims)),
            strict=True,
        )
    }
    assert flat[("embed", "embedding")] == ("column", LmoDims((0,), (1,)))
    assert flat[("head", "kernel")] == ("sign", LmoDims((0,), (1,)))
    assert flat[("head", "bias")][0] == "rms"
    assert flat[("block", "mlp", "kernel")] == ("spectral", LmoDims((0,), (1,)))
    assert flat[("block", "proj", "kernel")] == ("spectral", LmoDims((0,), (1,)))
    for name in ("query", "key", "value"):
        assert flat[("block", "attn", name, "kernel")] == ("spectral", LmoDims((0,), (1, 2)))
        assert flat[("block", "attn", name, "bias")] == ("rms", LmoDims((), (0, 1)))
    assert flat[("block", "attn", "out", "kernel")] == ("spectral", LmoDims((0, 1), (2,)))
    assert flat[("block", "ln", "scale")][0] == flat[("block", "ln", "bias")][0] == "rms"
    assert flat[("conv", "kernel")] == ("spectral", LmoDims((2,), (3,), (0, 1)))
    # Every leaf gets a step: the LMO runs on each with its dims.
    tx = optclip.scale_by_lmo()
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_position_tables_are_embeddings_not_hidden_matrices():
    nnx = pytest.importorskip("flax.nnx")

    class Lm(nnx.Module):  # the layout of benchmarks/_byte_lm.py's ByteLM: a learned `pos`
        def __init__(self, rngs):
            self.embed = nnx.Embed(32, 8, rngs=rngs)
            self.pos = nnx.Param(jax.random.normal(rngs.params(), (16, 8)))
            self.qkv = nnx.Linear(8, 24, rngs=rngs)

    params = nnx.state(Lm(nnx.Rngs(0)), nnx.Param)
    norms, _ = optclip.default_lmo_norms(params)
    leaf = lambda x: getattr(x, "value", x)  # flax 0.11's state keeps a Param around each leaf
    assert leaf(norms["pos"]) == "column" and leaf(norms["embed"]["embedding"]) == "column"
    assert leaf(norms["qkv"]["kernel"]) == "spectral"
    tx = optclip.muon(0.02)  # so Muon hands the position table to AdamW
    state = tx.init(params)
    assert not jax.tree.leaves(state.inner_states["lmo"].inner_state[0].mu["pos"])  # masked
    assert jax.tree.leaves(state.inner_states["adam"].inner_state[0].mu["pos"])[0].shape == (16, 8)
    # Names the rule reads: the leaf, or its module for a leaf other than a kernel.
    tables = {
        "wpe": {"embedding": jnp.zeros((16, 8))},
        "wte": jnp.zeros((32, 8)),
        "pos_embedding": jnp.zeros((1, 16, 8)),
        "position_table": {"w": jnp.zeros((16, 8))},
        "token_embedding": {"table": jnp.zeros((32, 8))},
        "patch_embedding": {"kernel": jnp.zeros((4, 4, 3, 8))},
        "posterior": {"kernel": jnp.zeros((8, 8))},
        "mlp": {"kernel": jnp.zeros((8, 8))},
    }
    norms, dims = optclip.default_lmo_norms(tables)
    assert [n for n in jax.tree.leaves(norms)] == [
        "spectral",  # mlp
        "spectral",  # patch_embedding: a convolution
        "column",  # pos_embedding (1, 16, 8): one table, a unit batch axis
        "column",  # position_table
        "spectral",  # posterior: not a position table
        "column",  # token_embedding
        "column",  # wpe
        "column",  # wte
    ]
    assert dims["pos_embedding"] == LmoDims((1,), (2,))


def test_stacked_layers_and_overrides():
    params = {"layers": {"mlp": {"kernel": jnp.zeros((4, 8, 16))}}, "w": jnp.zeros((3, 5))}
    norms, dims = optclip.default_lmo_norms(params)
    assert norms["layers"]["mlp"]["kernel"] == "spectral"
    assert dims["layers"]["mlp"]["kernel"] == LmoDims((1,), (2,))
    norms, _ = optclip.default_lmo_norms(params, norms=lambda p, x: "row" if p == ("w",) else None)
    assert norms["w"] == "row" and norms["layers"]["mlp"]["kernel"] == "spectral"
    norms, _ = optclip.default_lmo_norms(
        params, norms={"layers": {"mlp": {"kernel": None}}, "w": "sign"}
    )
    assert norms == {"layers": {"mlp": {"kernel": "spectral"}}, "w": "sign"}


# --- scale_by_lmo -----------------------------------------------------------------------------


def _tree():
    return {"dense": {"kernel": jnp.asarray(_normal(6, 10)), "bias": jnp.asarray(_normal(10))}}


def test_scale_by_lmo_is_minus_radius_times_lmo_and_keeps_statistics():
    g = _tree()
    tx = optclip.scale_by_lmo(radius={"spectral": 2.0, "rms": 0.5})
    u, s = tx.update(g, tx.init(g))
    k = g["dense"]["kernel"]
    _same(u["dense"]["kernel"], -2.0 * optclip.lmo(k, "spectral"))
    _same(u["dense"]["bias"], -0.5 * optclip.lmo(g["dense"]["bias"], "rms"))
    np.testing.assert_allclose(s.dual_norm["dense"]["kernel"], optclip.dual_norm(k, "spectral"))
    assert float(s.step_length["dense"]["kernel"]) == 2.0
    assert float(s.ns_residual["dense"]["bias"]) == 0.0
    # The residual of NS's output O (6 x 10, the small side first): ||O O^T - I||_F / sqrt(6).
    o = np_newton_schulz(np.asarray(k))
    expected = np.linalg.norm(o @ o.T - np.eye(6)) / np.sqrt(6)
    np.testing.assert_allclose(float(s.ns_residual["dense"]["kernel"]), expected, rtol=1e-3)
    for leaf in jax.tree.leaves(s):
        assert leaf.dtype == jnp.float32 and leaf.shape == ()


def test_scale_by_lmo_gluon_step_and_zero_momentum():
    g = _tree()
    tx = optclip.scale_by_lmo(l0=1.0, l1=0.5)
    u, s = tx.update(g, tx.init(g))
    d = float(optclip.dual_norm(g["dense"]["kernel"], "spectral"))
    np.testing.assert_allclose(
        float(s.step_length["dense"]["kernel"]), d / (1 + 0.5 * d), rtol=1e-5
    )
    zero = jax.tree.map(jnp.zeros_like, g)
    u, s = tx.update(zero, s)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    assert float(s.step_length["dense"]["kernel"]) == 0.0


def test_scale_by_lmo_contract():
    g = _tree()
    tx = optclip.scale_by_lmo()
    state = tx.init(g)
    eager = tx.update(g, state)
    jitted = jax.jit(tx.update)(g, state)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        _same(a, b, rtol=1e-5, atol=1e-5)
    for dtype in (jnp.bfloat16, jnp.float16):
        low = jax.tree.map(lambda x, d=dtype: x.astype(d), g)
        u, s = jax.jit(tx.update)(low, tx.init(low))
        assert all(x.dtype == dtype for x in jax.tree.leaves(u))
        assert jax.tree.map(lambda x: x.dtype, s) == jax.tree.map(lambda x: x.dtype, state)
    bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g)
    u, _ = tx.update(bad, state)
    assert all(bool(jnp.isnan(x).any()) for x in jax.tree.leaves(u))
    # apply_if_finite skips the step and keeps the state.
    safe = optax.apply_if_finite(optax.chain(tx, optax.scale(-0.1)), 3)
    s = safe.init(g)
    u, s = safe.update(bad, s)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    assert int(s.notfinite_count) == 1
    with pytest.raises(ValueError, match="tree"):
        tx.update({"other": jnp.ones(3)}, state)


@pytest.mark.parametrize("norm", NORMS)
def test_an_empty_layer_has_a_zero_step_and_norm(norm):
    # A leaf with no entries (a zero-width layer of a config sweep): nothing to move, where a
    # max over it used to raise and take the whole optimizer down with it.
    m = jnp.zeros((0, 3))
    assert optclip.lmo(m, norm).shape == (0, 3)
    assert float(optclip.dual_norm(m, norm)) == 0.0
    params = {"empty": m, "kernel": jnp.ones((4, 4))}
    tx = optclip.scion(1e-2, norms=lambda path, x: norm)
    u, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert u["empty"].shape == (0, 3) and bool(jnp.all(jnp.isfinite(u["kernel"])))
    assert float(jnp.max(jnp.abs(u["kernel"]))) > 0.0
