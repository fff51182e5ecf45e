"""Layer-wise (L0, L1) estimation in the LMO norm pairs, the asymmetric fit, and Gluon from it.

Known answers: on ``f(X) = sum_i c_i/2 ||X_i||_F^2`` driven by gradient descent from a start
where every step is a "flat" matrix (equal singular values, equal column norms, equal
magnitudes), ``L_i[k]`` is the quadratic's smoothness constant in the layer's norm pair,
``c_i sup_D ||D||_* / ||D||``, whose closed forms are below; on ``exp(<a, x>)`` the smoothness
grows with the gradient, ``L0 = 0, L1 = sqrt(n) ||a||_2`` in the RMS pair.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import diagnostics as D
from optclip.diagnostics._asymmetric_fit import asymmetric_loss


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- the norm pair ---------------------------------------------------------------------------


def _np_pair(x, norm):
    """NumPy re-derivation for a Flax dense kernel (d_in, d_out) or a vector."""
    x = np.asarray(x, np.float64)
    if norm == "rms":
        n = x.size
        return np.linalg.norm(x) / np.sqrt(n), np.sqrt(n) * np.linalg.norm(x)
    d_in, d_out = x.shape
    if norm == "spectral":
        s = np.sqrt(d_out / d_in)
        sv = np.linalg.svd(x, compute_uv=False)
        return sv[0] / s, s * sv.sum()
    if norm == "column":  # each input index's vector over the outputs
        v = np.linalg.norm(x, axis=1)
        return v.max() / np.sqrt(d_out), np.sqrt(d_out) * v.sum()
    if norm == "row":
        r = np.linalg.norm(x, axis=0)
        return np.sqrt(d_in) * r.max(), r.sum() / np.sqrt(d_in)
    return d_in * np.abs(x).max(), np.abs(x).sum() / d_in  # sign


CASES = [("spectral", (4, 6)), ("spectral", (6, 4)), ("column", (5, 3)), ("row", (5, 3))]
CASES += [("sign", (3, 7)), ("rms", (9,))]


@pytest.mark.parametrize("norm,shape", CASES)
def test_norm_pair_matches_numpy_and_holder(norm, shape):
    m = _rng(1).standard_normal(shape).astype(np.float32)
    p, d = D.norm_pair(jnp.asarray(m), norm)
    want_p, want_d = _np_pair(m, norm)
    np.testing.assert_allclose([float(p), float(d)], [want_p, want_d], rtol=1e-5)
    # Hoelder: <M, X> <= ||M||_* ||X|| for random X.
    for seed in range(5):
        x = _rng(10 + seed).standard_normal(shape)
        assert np.sum(m * x) <= want_d * _np_pair(x, norm)[0] * (1 + 1e-9)


@pytest.mark.parametrize("norm,shape", CASES)
def test_lmo_has_unit_norm_and_attains_the_dual(norm, shape):
    m = jnp.asarray(_rng(2).standard_normal(shape), jnp.float32)
    if norm == "spectral":
        # The exact oracle (the package's uses Newton-Schulz, ~U V^T).
        u, _, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
        lmo = -np.sqrt(shape[1] / shape[0]) * u @ vt
    else:
        lmo = np.asarray(optclip.lmo(m, norm))
        np.testing.assert_allclose(
            float(optclip.dual_norm(m, norm)), D.norm_pair(m, norm)[1], rtol=1e-5
        )
    p, _d = D.norm_pair(jnp.asarray(lmo, jnp.float32), norm)
    np.testing.assert_allclose(float(p), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        -np.sum(np.asarray(m) * lmo), float(D.norm_pair(m, norm)[1]), rtol=1e-5
    )


def test_norm_pair_of_stacked_layers_is_max_and_sum():
    x = _rng(3).standard_normal((3, 4, 5)).astype(np.float32)
    dims = optclip.LmoDims((1,), (2,))
    p, d = D.norm_pair(jnp.asarray(x), "spectral", dims)
    pairs = [_np_pair(x[i], "spectral") for i in range(3)]
    np.testing.assert_allclose(float(p), max(a for a, _ in pairs), rtol=1e-5)
    np.testing.assert_allclose(float(d), sum(b for _, b in pairs), rtol=1e-5)


# --- the probe on problems with known smoothness ---------------------------------------------


def _flat_params():
    rng = _rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 4)))
    sign = lambda shape: np.sign(rng.standard_normal(shape))
    return {
        "embed": {"embedding": jnp.asarray(2.0 * sign((6, 3)), jnp.float32)},
        "hidden": {
            "kernel": jnp.asarray(2.0 * q.T, jnp.float32),  # (4, 6), orthonormal rows
            "bias": jnp.asarray(rng.standard_normal(5), jnp.float32),
        },
        "head": {"kernel": jnp.asarray(sign((3, 5)), jnp.float32)},
    }


CURV = {
    "embed": {"embedding": 2.0},
    "hidden": {"kernel": 3.0, "bias": 0.5},
    "head": {"kernel": 4.0},
}


def _quadratic(params, batch):
    del batch
    return sum(jax.tree.leaves(jax.tree.map(lambda c, x: 0.5 * c * jnp.sum(x * x), CURV, params)))


def test_quadratic_recovers_each_layers_curvature():
    est = D.layer_smoothness(_quadratic, _flat_params(), [jnp.zeros(1)] * 4, optax.sgd(0.05))
    assert D.layer_kinds(_flat_params()) == {
        "embed": {"embedding": "embedding"},
        "hidden": {"kernel": "hidden", "bias": "vector"},
        "head": {"kernel": "head"},
    }
    assert est.norms["embed"]["embedding"] == "sign"  # Gluon's GPT norms by default
    # c * sup ||D||_*/||D||: spectral (d_in=4, d_out=6): (d_out/d_in) min(d_in, d_out) = 6;
    # sign (d_in, d_out): d_out/d_in (head 5/3; the embedding (vocab, dim) has fan-in dim,
    # so 6/3); RMS over n: n = 5.
    want = {
        "embed": {"embedding": 2.0 * 2.0},
        "hidden": {"kernel": 3.0 * 6.0, "bias": 0.5 * 5.0},
        "head": {"kernel": 4.0 * 5.0 / 3.0},
    }
    jax.tree.map(lambda s, w: np.testing.assert_allclose(s, w, rtol=1e-5), est.smoothness, want)
    fit = D.fit_layer_l0_l1(est)
    jax.tree.map(lambda l0, w: np.testing.assert_allclose(l0, w, rtol=1e-5), fit.l0, want)
    jax.tree.map(lambda l1, w: np.testing.assert_allclose(l1, 0.0, atol=1e-5 * w), fit.l1, want)
    # The gradient's dual norm is recorded at X[k+1].
    x1 = jax.tree.map(lambda c, x: x - 0.05 * c * x, CURV, _flat_params())
    g1 = jax.tree.map(lambda c, x: c * x, CURV, x1)
    d1 = float(D.norm_pair(g1["head"]["kernel"], "sign")[1])
    np.testing.assert_allclose(float(est.grad_norm["head"]["kernel"][0]), d1, rtol=1e-5)


def test_exponential_recovers_l1_and_zero_l0():
    a = jnp.asarray(_rng(4).uniform(0.5, 1.5, 8), jnp.float32)

    def loss(p, batch):
        del batch
        return jnp.exp(jnp.dot(a, p["w"]))

    params = {"w": jnp.full(8, 0.1, jnp.float32)}
    est = D.layer_smoothness(loss, params, [jnp.zeros(1)] * 60, optax.sgd(2e-3))
    g = np.asarray(est.grad_norm["w"])
    assert g.max() / g.min() > 2  # the gradient norm spans a range worth fitting
    fit = D.fit_layer_l0_l1(est)
    want_l1 = np.sqrt(8) * float(jnp.linalg.norm(a))
    np.testing.assert_allclose(fit.l1["w"], want_l1, rtol=0.05)
    assert fit.l0["w"] < 0.05 * want_l1 * g.min()


def test_same_batch_sees_curvature_consecutive_batches_see_noise():
    def loss(p, b):
        return 0.5 * 2.0 * jnp.sum(p["w"] ** 2) + jnp.dot(b, p["w"])

    params = {"w": jnp.ones(6, jnp.float32)}
    batches = jnp.asarray(_rng(5).standard_normal((8, 6)), jnp.float32)
    same = D.layer_smoothness(loss, params, batches, optax.sgd(0.05))
    np.testing.assert_allclose(np.asarray(same.smoothness["w"]), 2.0 * 6, rtol=1e-5)
    cons = D.layer_smoothness(loss, params, batches, optax.sgd(0.05), same_batch=False)
    assert cons.smoothness["w"].shape == (7,)
    assert np.all(np.asarray(cons.smoothness["w"]) > 2 * 2.0 * 6)


def test_layer_that_does_not_move_is_nan_and_left_out():
    params = {"a": {"kernel": jnp.ones((3, 3))}, "b": {"kernel": jnp.ones((3, 3))}}
    mask = {"a": {"kernel": True}, "b": {"kernel": False}}
    tx = optax.masked(optax.sgd(0.1), mask)
    tx = optax.chain(
        tx, optax.masked(optax.set_to_zero(), {"a": {"kernel": False}, "b": {"kernel": True}})
    )
    est = D.layer_smoothness(
        lambda p, b: jnp.sum(p["a"]["kernel"] ** 2 + p["b"]["kernel"] ** 2),
        params,
        [0.0, 0.0, 0.0],
        tx,
    )
    assert np.all(np.isnan(np.asarray(est.smoothness["b"]["kernel"])))
    fit = D.fit_layer_l0_l1(est)
    assert np.isnan(fit.l0["b"]["kernel"]) and np.isfinite(fit.l0["a"]["kernel"])
    with pytest.raises(ValueError, match="b/kernel"):
        D.fit_gluon(est)


# --- the asymmetric fit ----------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.0, 1.0, 10.0])
def test_fit_recovers_exact_line(penalty):
    g = _rng(6).uniform(0, 5, 40)
    l0, l1 = D.fit_l0_l1_asymmetric(g, 0.7 + 2.5 * g, penalty)
    np.testing.assert_allclose([l0, l1], [0.7, 2.5], rtol=1e-9)


def _grid_min(g, s, penalty, l0, l1):
    a = np.linspace(0, 2 * max(l0, 1.0), 601)
    b = np.linspace(0, 2 * max(l1, 1.0), 601)
    A, B = np.meshgrid(a, b)
    F = asymmetric_loss(g, s, penalty, A, B)
    i = np.unravel_index(np.argmin(F), F.shape)
    return F[i], A[i], B[i], a[1] - a[0], b[1] - b[0]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("penalty", [0.0, 1.0, 5.0])
def test_fit_is_the_minimum_against_a_brute_force_grid(seed, penalty):
    rng = _rng(100 + seed)
    g = rng.uniform(0, 4, 30)
    true = (rng.uniform(0, 2), rng.uniform(0, 3)) if seed % 3 else (0.0, 2.0)
    s = true[0] + true[1] * g + rng.normal(0, 1.0, 30)
    if seed == 5:
        s = 3.0 - 0.5 * g + rng.normal(0, 0.1, 30)  # falling: the constraint L1 >= 0 binds
    l0, l1 = D.fit_l0_l1_asymmetric(g, s, penalty)
    assert l0 >= 0 and l1 >= 0
    fmin, a, b, da, db = _grid_min(g, s, penalty, l0, l1)
    f = asymmetric_loss(g, s, penalty, l0, l1)
    assert f <= fmin + 1e-12 * max(1.0, fmin)
    assert abs(l0 - a) <= 2 * da and abs(l1 - b) <= 2 * db
    if seed == 5:
        assert l1 == 0.0


def test_fit_recovers_known_l0_l1_from_noisy_samples():
    rng = _rng(7)
    g = rng.uniform(0, 10, 4000)
    s = 1.5 + 0.8 * g + rng.normal(0, 0.3, 4000)
    l0, l1 = D.fit_l0_l1_asymmetric(g, s, 0.0)
    np.testing.assert_allclose([l0, l1], [1.5, 0.8], atol=0.03)
    # The penalty lifts the line by a fixed fraction of the noise (an expectile of it), not
    # the slope: with lambda = 1 the offset is the 2/3-expectile of N(0, 0.3^2), 0.3 * 0.2768.
    l0p, l1p = D.fit_l0_l1_asymmetric(g, s, 1.0)
    np.testing.assert_allclose(l1p, 0.8, atol=0.01)
    np.testing.assert_allclose(l0p - 1.5, 0.3 * 0.2768, atol=0.02)


def test_penalty_makes_under_estimates_cost_more():
    rng = _rng(8)
    g = rng.uniform(0, 5, 200)
    s = 1.0 + 2.0 * g + rng.standard_normal(200)
    above = []
    for lam in (0.0, 1.0, 4.0, 16.0):
        l0, l1 = D.fit_l0_l1_asymmetric(g, s, lam)
        above.append(np.mean(s > l0 + l1 * g))
    assert all(a > b for a, b in itertools.pairwise(above)), above
    # A line too low by delta costs more than one too high by delta.
    l0, l1 = D.fit_l0_l1_asymmetric(g, s, 0.0)
    lo = asymmetric_loss(g, s, 1.0, l0 - 0.5, l1)
    hi = asymmetric_loss(g, s, 1.0, l0 + 0.5, l1)
    assert lo > hi


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="penalty"):
        D.fit_l0_l1_asymmetric([1.0, 2.0], [1.0, 2.0], -1.0)
    with pytest.raises(ValueError, match="equal length"):
        D.fit_l0_l1_asymmetric([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        D.fit_l0_l1_asymmetric([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="same_batch"):
        D.layer_smoothness(_quadratic, _flat_params(), [0.0], optax.sgd(0.1), same_batch=False)


# --- summary and Gluon -----------------------------------------------------------------------


def test_inverse_l1_by_kind_means_per_kind():
    l1 = {"a": 2.0, "b": 4.0, "c": 0.5, "d": 0.0, "e": float("nan")}
    kinds = {"a": "hidden", "b": "hidden", "c": "head", "d": "vector", "e": "hidden"}
    assert D.inverse_l1_by_kind(l1, kinds) == {"hidden": 0.375, "head": 2.0, "vector": np.inf}


def test_fit_gluon_steps_by_the_fitted_constants_and_descends():
    params = _flat_params()
    est = D.layer_smoothness(_quadratic, params, [jnp.zeros(1)] * 4, optax.sgd(0.05))
    fit = D.fit_layer_l0_l1(est)
    tx = D.fit_gluon(est, gluon_kwargs={"beta": 0.0})
    state = tx.init(params)
    step = jax.jit(tx.update)
    losses = [float(_quadratic(params, None))]
    for _ in range(10):
        g = jax.grad(_quadratic)(params, None)
        updates, state = step(g, state, params)
        lmo_state = state[1]
        dual = jax.tree.map(float, lmo_state.dual_norm)
        want = jax.tree.map(lambda d, a, b: d / (a + b * d), dual, fit.l0, fit.l1)
        jax.tree.map(
            lambda t, w: np.testing.assert_allclose(float(t), w, rtol=1e-5),
            lmo_state.step_length,
            want,
        )
        params = optax.apply_updates(params, updates)
        losses.append(float(_quadratic(params, None)))
    # Steps of length ||M||_*/L in a norm where the loss is L-smooth: the descent lemma holds.
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="l1"):
        D.fit_gluon(est, gluon_kwargs={"l1": 1.0})
