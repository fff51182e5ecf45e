"""The LMO family against the authors' code, transcribed in NumPy (``tests/_reference_lmo.py``).

The transcriptions keep the authors' torch layout ``(d_out, d_in)``; the package works on Flax's
``(d_in, d_out)``, so every dense kernel crosses with a transpose (an embedding is
``(vocab, dim)`` in both). Newton-Schulz runs in float32 on both sides; the two sums differ in
order, and five quintic steps amplify rounding on small singular values, hence ``NS_TOL``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests import _reference_lmo as ref

# float32 Newton-Schulz, two orders of summation: measured 1e-6 at most on O(1) entries.
NS_TOL = dict(rtol=1e-5, atol=1e-5)
EXACT_TOL = dict(rtol=2e-6, atol=1e-7)


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- one array -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5), (1, 7), (16, 3)])
def test_spectral_is_scions_spectral(shape):
    w = _rand(shape, 0)  # Flax (d_in, d_out)
    want = -ref.spectral(w.T).T
    got = optclip.lmo(jnp.asarray(w), "spectral")
    np.testing.assert_allclose(np.asarray(got), want, **NS_TOL)
    # The dual norm is the oracle's value: <M, s> with s the authors' ascent direction.
    np.testing.assert_allclose(
        float(optclip.dual_norm(jnp.asarray(w), "spectral")),
        np.sum(w.T * ref.spectral(w.T)),
        rtol=1e-4,
    )


def test_spectral_muon_scale_is_kellers():
    # Keller Jordan's factor sqrt(max(1, d_out/d_in)) on the same orthogonalisation.
    for shape in [(4, 8), (8, 4)]:
        w = _rand(shape, 1)
        d_out, d_in = w.T.shape
        want = -ref.newton_schulz(w.T).T * np.sqrt(max(1.0, d_out / d_in))
        got = optclip.lmo(jnp.asarray(w), "spectral", spectral_scale="muon")
        np.testing.assert_allclose(np.asarray(got), want, **NS_TOL)


def test_spectral_conv_is_scions_spectral_conv():
    # Flax conv kernel (h, w, d_in, d_out); torch (d_out, d_in, h, w).
    w = _rand((3, 3, 4, 6), 2)
    torch_w = np.transpose(w, (3, 2, 0, 1))
    want = -np.transpose(ref.spectral_conv(torch_w), (2, 3, 1, 0))
    dims = optclip.LmoDims(reduction_axes=(2,), output_axes=(3,), spatial_axes=(0, 1))
    got = optclip.lmo(jnp.asarray(w), "spectral", dims)
    np.testing.assert_allclose(np.asarray(got), want, **NS_TOL)


def test_column_of_an_embedding_is_scions_transposed_colnorm():
    e = _rand((10, 4), 3)  # (vocab, dim), the same array in torch and Flax
    want = -ref.col_norm(e, transpose=True)
    got = optclip.lmo(jnp.asarray(e), "column")
    np.testing.assert_allclose(np.asarray(got), want, **EXACT_TOL)
    np.testing.assert_allclose(
        float(optclip.dual_norm(jnp.asarray(e), "column")),
        np.sum(e * ref.col_norm(e, transpose=True)),
        rtol=1e-5,
    )


def test_column_of_a_dense_kernel_is_scions_colnorm():
    w = _rand((5, 3), 4)
    want = -ref.col_norm(w.T).T
    np.testing.assert_allclose(np.asarray(optclip.lmo(jnp.asarray(w), "column")), want, **EXACT_TOL)


def test_row_is_scions_rownorm():
    w = _rand((5, 3), 5)
    want = -ref.row_norm(w.T).T
    np.testing.assert_allclose(np.asarray(optclip.lmo(jnp.asarray(w), "row")), want, **EXACT_TOL)
    np.testing.assert_allclose(
        float(optclip.dual_norm(jnp.asarray(w), "row")), np.sum(w.T * ref.row_norm(w.T)), rtol=1e-5
    )


def test_sign_is_scions_sign():
    w = _rand((6, 10), 6)
    w[0, 0] = 0.0
    want = -ref.sign(w.T).T
    np.testing.assert_allclose(np.asarray(optclip.lmo(jnp.asarray(w), "sign")), want, **EXACT_TOL)
    np.testing.assert_allclose(
        float(optclip.dual_norm(jnp.asarray(w), "sign")), np.sum(w.T * ref.sign(w.T)), rtol=1e-5
    )


def test_rms_is_scions_bias_rms():
    b = _rand((7,), 7)
    want = -ref.bias_rms(b)
    np.testing.assert_allclose(np.asarray(optclip.lmo(jnp.asarray(b), "rms")), want, **EXACT_TOL)
    np.testing.assert_allclose(
        float(optclip.dual_norm(jnp.asarray(b), "rms")), np.sum(b * ref.bias_rms(b)), rtol=1e-5
    )


def test_reference_newton_schulz_is_near_polar_factor():
    # A check of the transcription itself: singular values land in the authors' band.
    w = _rand((6, 4), 8)
    s = np.linalg.svd(ref.newton_schulz(w), compute_uv=False)
    assert np.all((s > 0.6) & (s < 1.25)), s
    u, _, vt = np.linalg.svd(w, full_matrices=False)
    o = ref.newton_schulz(w)
    # Same singular vectors: O = U S' V^T with S' diagonal.
    np.testing.assert_allclose(u.T @ o @ vt.T, np.diag(np.diag(u.T @ o @ vt.T)), atol=1e-5)


# --- full optimizers over a few steps --------------------------------------------------------

STEPS = 6


def _flat(tree):
    return {
        "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _unflat(flat, like):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(flat["/".join(str(k.key) for k in p)]) for p, _ in leaves]
    )


def _to_torch(flat, transposed):
    return {k: (v.T.copy() if k in transposed else v.copy()) for k, v in flat.items()}


def _grads(flat_params, k, seed=0):
    """Gradients that depend on the iterate (so errors compound) plus fixed noise."""
    rng = np.random.default_rng(seed + 1000 * k)
    return {
        key: (0.5 * v + rng.standard_normal(v.shape)).astype(np.float32)
        for key, v in flat_params.items()
    }


def _assert_every_step_close(runs) -> None:
    """Each step's parameters, ours against the reference's, to float32 rounding."""
    for k, got, want in runs:
        for key in got:
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{key} at step {k}"
            )


def _run_both(tx, params, ref_init, ref_step, transposed):
    """Drive ``tx`` (Flax layout) and the torch-layout reference on the same gradients."""
    flat = _flat(params)
    torch_p = _to_torch(flat, transposed)
    ref_state = ref_init(torch_p)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for k in range(STEPS):
        g = _grads(flat, k)
        updates, state = step(_unflat(g, params), state, params)
        params = optax.apply_updates(params, updates)
        torch_p, ref_state = ref_step(torch_p, _to_torch(g, transposed), ref_state)
        flat = _flat(params)
        yield k, flat, _to_torch(torch_p, transposed)  # back to Flax layout


MUON_PARAMS = {
    "a": {"kernel": jnp.asarray(_rand((4, 6), 10))},
    "b": {"kernel": jnp.asarray(_rand((6, 3), 11))},
    "c": {"kernel": jnp.asarray(_rand((5, 5), 12))},
    # Flax (h, w, d_in, d_out); ``.T`` gives torch's (d_out, d_in, w, h), a permutation of the
    # fan-in that Newton-Schulz commutes with. Keller's shape factor reads the two window axes
    # (1 here); the package's reads d_out / (d_in k^2), also 1 while d_out <= d_in k^2.
    "conv": {"kernel": jnp.asarray(_rand((3, 3, 4, 8), 13))},
}


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_is_kellers_muon_update(nesterov, weight_decay):
    lr, beta = 0.02, 0.95
    tx = optclip.muon(lr, beta, weight_decay, nesterov=nesterov)
    transposed = set(_flat(MUON_PARAMS))

    def ref_step(p, g, moms):
        return ref.muon_step(p, g, moms, lr, beta, weight_decay, nesterov)

    def ref_init(p):
        return {k: np.zeros_like(v) for k, v in p.items()}

    for k, got, want in _run_both(tx, MUON_PARAMS, ref_init, ref_step, transposed):
        for key in got:
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{key} at step {k}"
            )


def test_muon_sends_the_rest_to_kellers_aux_adam():
    # MuonWithAuxAdam: the hidden kernel on Muon, the embedding, head and bias on AdamW.
    lr, wd, adam_lr, adam_wd = 0.02, 0.1, 0.01, 0.05
    tx = optclip.muon(lr, 0.95, wd, adam_learning_rate=adam_lr, adam_weight_decay=adam_wd)

    def ref_init(p):
        return {
            k: np.zeros_like(v) if k == "hidden/kernel" else (0 * v, 0 * v, 0) for k, v in p.items()
        }

    def ref_step(p, g, state):
        new_p, new_s = {}, {}
        for k in p:
            if k == "hidden/kernel":
                one_p, one_s = ref.muon_step({k: p[k]}, {k: g[k]}, {k: state[k]}, lr, 0.95, wd)
                new_p[k], new_s[k] = one_p[k], one_s[k]
            else:
                new_p[k], new_s[k] = ref.aux_adam_step(
                    p[k], g[k], state[k], adam_lr, weight_decay=adam_wd
                )
        return new_p, new_s

    runs = _run_both(tx, SCION_PARAMS, ref_init, ref_step, SCION_TRANSPOSED)
    _assert_every_step_close(runs)


SCION_PARAMS = {
    "embed": {"embedding": jnp.asarray(_rand((10, 4), 20))},
    "hidden": {"kernel": jnp.asarray(_rand((4, 6), 21)), "bias": jnp.asarray(_rand((6,), 22))},
    "head": {"kernel": jnp.asarray(_rand((6, 10), 23))},
}
SCION_RADII = {
    "embed": {"embedding": 1.5},
    "hidden": {"kernel": 2.0, "bias": 0.5},
    "head": {"kernel": 30.0},
}
# Flax key -> the authors' group: (norm, norm_kwargs, radius); transposed where torch stores
# (d_out, d_in) and Flax (d_in, d_out); the embedding is (vocab, dim) in both.
SCION_GROUPS = {
    "embed/embedding": ("ColNorm", {"transpose": True}, 1.5),
    "hidden/kernel": ("Spectral", {}, 2.0),
    "hidden/bias": ("BiasRMS", {}, 0.5),
    "head/kernel": ("Sign", {}, 30.0),
}
SCION_TRANSPOSED = {"hidden/kernel", "head/kernel"}


def test_default_norms_are_scions_gpt_groups():
    norms, _ = optclip.default_lmo_norms(SCION_PARAMS)
    assert _flat(norms) == {
        "embed/embedding": "column",
        "hidden/kernel": "spectral",
        "hidden/bias": "rms",
        "head/kernel": "sign",
    }


@pytest.mark.parametrize("unconstrained", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_scion_is_scions_step(unconstrained, alpha):
    lr = 0.05
    tx = optclip.scion(lr, alpha, radius=SCION_RADII, unconstrained=unconstrained)

    def ref_step(p, g, bufs):
        return ref.scion_step(p, g, bufs, SCION_GROUPS, lr, alpha, unconstrained)

    runs = _run_both(tx, SCION_PARAMS, ref.scion_init, ref_step, SCION_TRANSPOSED)
    _assert_every_step_close(runs)


GLUON_NORMS = {
    "embed": {"embedding": "column"},
    "hidden": {"kernel": "spectral", "bias": "rms"},
    "head": {"kernel": "sign"},
}
GLUON_L0 = {
    "embed": {"embedding": 0.5},
    "hidden": {"kernel": 2.0, "bias": 0.0},
    "head": {"kernel": 1.0},
}
GLUON_L1 = {
    "embed": {"embedding": 1.3},
    "hidden": {"kernel": 5.0, "bias": 0.7},
    "head": {"kernel": 0.1},
}


@pytest.mark.parametrize("stochastic", [False, True])
def test_gluon_is_the_clipped_lmo_step_on_scions_oracles(stochastic):
    groups = {
        key: (norm, kw, _flat(GLUON_L0)[key].item(), _flat(GLUON_L1)[key].item())
        for key, (norm, kw, _) in SCION_GROUPS.items()
    }
    tx = optclip.gluon(GLUON_L0, GLUON_L1, 0.5, 0.8, stochastic=stochastic, norms=GLUON_NORMS)
    count = iter(range(STEPS))

    def ref_step(p, g, moms):
        return ref.gluon_step(p, g, moms, groups, next(count), 0.5, 0.8, stochastic)

    runs = _run_both(tx, SCION_PARAMS, ref.scion_init, ref_step, SCION_TRANSPOSED)
    _assert_every_step_close(runs)


def test_gluon_without_l0_is_unconstrained_scion():
    # The paper's remark: L0 -> 0 leaves the constant radius 1/L1.
    l0 = jax.tree.map(lambda _: 0.0, GLUON_L1)
    tx = optclip.gluon(l0, GLUON_L1, 0.05, 0.9, norms=GLUON_NORMS)
    groups = {
        key: (norm, kw, 1.0 / _flat(GLUON_L1)[key].item())
        for key, (norm, kw, _) in SCION_GROUPS.items()
    }

    def ref_step(p, g, bufs):
        return ref.scion_step(p, g, bufs, groups, 0.05, 0.1, unconstrained=True)

    runs = _run_both(tx, SCION_PARAMS, ref.scion_init, ref_step, SCION_TRANSPOSED)
    _assert_every_step_close(runs)


# The Gluon paper's GPT norms: token and position tables and the head on the sign norm scaled
# 1/d_in in torch terms; an nn.Embedding weight is (vocab, dim), which the authors' Sign divides
# by shape[1] = dim. Flax stores the tables (vocab, dim) too: no transpose.
GPT_PARAMS = {**SCION_PARAMS, "pos": jnp.asarray(_rand((7, 4), 24))}
GPT_L0 = {**GLUON_L0, "pos": 0.2}
GPT_L1 = {**GLUON_L1, "pos": 0.9}
GPT_GROUPS = {
    **{key: (norm, kw) for key, (norm, kw, _) in SCION_GROUPS.items()},
    "embed/embedding": ("Sign", {}),
    "pos": ("Sign", {}),
}


def test_gluons_default_embedding_step_is_the_authors_sign_over_dim():
    norms, _ = optclip.default_lmo_norms(GPT_PARAMS)
    assert norms["pos"] == "column"  # a position table is an embedding, not a hidden matrix
    table = GPT_PARAMS["embed"]["embedding"]  # (vocab 10, dim 4)
    tx = optclip.gluon(0.0, 1.0, beta=0.0)
    one = {"embed": {"embedding": table}}
    u = np.asarray(tx.update(one, tx.init(one))[0]["embed"]["embedding"])
    np.testing.assert_array_equal(u, -ref.sign(np.asarray(table)))
    np.testing.assert_allclose(np.abs(u), 1.0 / 4.0)  # 1/dim, not 1/vocab
    groups = {
        key: (norm, kw, _flat(GPT_L0)[key].item(), _flat(GPT_L1)[key].item())
        for key, (norm, kw) in GPT_GROUPS.items()
    }
    tx = optclip.gluon(GPT_L0, GPT_L1, 0.5, 0.8)
    count = iter(range(STEPS))

    def ref_step(p, g, moms):
        return ref.gluon_step(p, g, moms, groups, next(count), 0.5, 0.8)

    runs = _run_both(tx, GPT_PARAMS, ref.scion_init, ref_step, SCION_TRANSPOSED)
    _assert_every_step_close(runs)


def test_muons_conv_scale_reads_the_unfolded_fan_in_where_kellers_reads_the_window():
    # A 3x3 stem from 3 channels to 64: NS is the same; Keller's factor reads torch's last two
    # axes (3, 3) and is 1, optclip's is sqrt(max(1, 64 / 27)).
    kernel = _rand((3, 3, 3, 64), 30)  # Flax (h, w, d_in, d_out)
    params = {"conv": {"kernel": jnp.zeros((3, 3, 3, 64))}}
    tx = optclip.muon(1.0, beta=0.0, nesterov=False)
    u, _ = tx.update({"conv": {"kernel": jnp.asarray(kernel)}}, tx.init(params), params)
    got = -np.asarray(u["conv"]["kernel"]).T  # torch (d_out, d_in, w, h)
    want, _ = ref.muon_update(kernel.T, np.zeros_like(kernel.T), beta=0.0, nesterov=False)
    np.testing.assert_allclose(got, want * np.sqrt(64 / 27), **NS_TOL)
    assert round(float(np.median(got / want)), 4) == 1.5396
