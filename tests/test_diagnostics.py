"""Diagnostics against known answers."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from optclip import diagnostics as D


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8])
def test_tail_index_recovers_alpha_stable(alpha):
    x = D.symmetric_alpha_stable(jax.random.key(0), alpha, (400_000,))
    assert abs(D.tail_index(x, 400) - alpha) < 0.1
    xv = D.symmetric_alpha_stable(jax.random.key(1), alpha, (40_000, 10))
    assert abs(D.tail_index(xv, 200) - alpha) < 0.1


def test_tail_index_stays_in_the_stable_range():
    """Few blocks of light-tailed data: the raw estimate of 1/alpha scatters below 1/2 (or 0)
    for some draws, and the reported index is then 2, never beyond."""
    rng = np.random.default_rng(0)
    raw, clamped = [], []
    for _ in range(200):
        x = rng.standard_normal(128)
        raw.append(D.tail_index(x, 16, clamp=False))
        clamped.append(D.tail_index(x, 16))
    raw, clamped = np.array(raw), np.array(clamped)
    assert np.any((raw > 2) | (raw < 0))  # the estimator does leave the range here
    assert np.all((clamped > 0) & (clamped <= 2))
    inside = (raw > 0) & (raw <= 2)
    np.testing.assert_array_equal(clamped[inside], raw[inside])
    assert np.all(clamped[~inside] == 2.0)


def test_tail_index_of_gaussian_vectors_is_two():
    g = jax.random.normal(jax.random.key(2), (40_000, 10))
    assert abs(D.tail_index(g, 200) - 2.0) < 0.1


def test_symmetric_alpha_stable_matches_known_cases():
    # alpha = 2 is N(0, 2); alpha = 1 is a standard Cauchy (median |X| = 1).
    g = np.asarray(D.symmetric_alpha_stable(jax.random.key(0), 2.0, (200_000,)))
    assert np.var(g) == pytest.approx(2.0, rel=0.03)
    c = np.asarray(D.symmetric_alpha_stable(jax.random.key(0), 1.0, (200_000,)))
    assert np.median(np.abs(c)) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("alpha", [1.2, 1.5, 2.5])
def test_hill_recovers_pareto_index(alpha):
    x = np.random.default_rng(0).pareto(alpha, 100_000) + 1.0
    assert D.hill_tail_index(x, 2000) == pytest.approx(alpha, rel=0.1)


def test_noise_norms_match_closed_form_least_squares():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(12, 5, 3)).astype(np.float32)  # 12 batches of 5 rows
    ys = rng.normal(size=(12, 5)).astype(np.float32)
    w = rng.normal(size=3).astype(np.float32)

    def loss(w, batch):
        x, y = batch
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    # grad of the batch loss: X^T (X w - y) / b; full gradient: their mean.
    per = np.stack([xs[i].T @ (xs[i] @ w - ys[i]) / 5 for i in range(12)])
    want = np.linalg.norm(per - per.mean(0), axis=1)
    got = D.noise_norms(loss, jnp.asarray(w), (jnp.asarray(xs), jnp.asarray(ys)), chunk_size=5)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    as_list = D.noise_norms(loss, jnp.asarray(w), [(xs[i], ys[i]) for i in range(12)])
    np.testing.assert_allclose(as_list, want, rtol=1e-4)
    given = D.noise_norms(loss, jnp.asarray(w), (xs, ys), full_grad=jnp.zeros(3))
    np.testing.assert_allclose(given, np.linalg.norm(per, axis=1), rtol=1e-4)


def test_variance_by_sample_size_matches_numpy():
    rng = np.random.default_rng(1)
    targets = rng.standard_t(1.5, size=(50, 4)).astype(np.float32)
    loss = lambda w, t: 0.5 * jnp.sum((w - t) ** 2)
    got = np.asarray(D.variance_by_sample_size(loss, jnp.zeros(4), jnp.asarray(targets)))
    g = -targets.astype(np.float64)
    want = [np.mean(np.sum((g[:n] - g[:n].mean(0)) ** 2, 1)) for n in range(1, 51)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_local_smoothness_of_quadratic():
    a = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    grad = lambda x: a @ x
    x, x_next = jnp.array([1.0, -1.0]), jnp.array([0.2, 0.5])
    d = x_next - x
    assert float(D.local_smoothness(grad, x, x_next)) == pytest.approx(
        float(jnp.linalg.norm(a @ d) / jnp.linalg.norm(d)), rel=1e-5
    )
    assert float(D.local_smoothness(grad, x, x)) == 0.0


def _smoothness_along_gd(f, x0, lr, steps):
    grad = jax.grad(f)

    @jax.jit
    def step(x, _):
        x_next = x - lr * grad(x)
        return x_next, (optclip.numerics.global_norm(grad(x)), D.local_smoothness(grad, x, x_next))

    _, (gn, sm) = jax.lax.scan(step, x0, None, length=steps)
    return np.asarray(gn), np.asarray(sm)


def test_fit_l0_l1_sees_relaxed_smoothness_of_quartic_not_quadratic():
    gn, sm = _smoothness_along_gd(lambda x: jnp.sum(x**4), jnp.array([1.5]), 0.01, 60)
    l0, l1, frac = D.fit_l0_l1(gn, sm)
    assert l1 > 0.5 and frac == 1.0
    gn, sm = _smoothness_along_gd(lambda x: 2.0 * jnp.sum(x**2), jnp.array([3.0]), 0.05, 60)
    l0, l1, frac = D.fit_l0_l1(gn, sm)
    assert l1 < 1e-3 and l0 == pytest.approx(4.0, rel=1e-3) and frac == 1.0


def test_fit_l0_l1_is_tight_and_bounds_every_point():
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 10, 200)
    s = 1.0 + 2.0 * g - rng.uniform(0, 1, 200)
    l0, l1, frac = D.fit_l0_l1(g, s)
    assert frac == 1.0 and np.all(s <= l0 + l1 * g + 1e-9)
    assert l0 + l1 * g.mean() <= 1.0 + 2.0 * g.mean() + 1e-9  # no looser than the generator


def test_coordinate_smoothness():
    grad = lambda x: jnp.array([2.0, 8.0]) * x
    sm, mag = D.coordinate_smoothness(grad, jnp.array([1.0, 1.0]), jnp.array([0.5, 1.0]))
    np.testing.assert_allclose(sm, [2.0])  # only the coordinate that moved
    np.testing.assert_allclose(mag, [1.0])


def test_sharpness_of_quadratic_and_pytree_model():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    a = jnp.asarray(m @ m.T + np.eye(6), jnp.float32)
    loss = lambda x, _: 0.5 * x @ a @ x
    lam, iters = D.sharpness(loss, jnp.ones(6), None, num_iters=500, tol=1e-7)
    assert float(lam) == pytest.approx(float(np.linalg.eigvalsh(np.asarray(a))[-1]), rel=1e-3)
    assert 1 <= int(iters) <= 500

    from flax import nnx

    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(4, 1, rngs=nnx.Rngs(1))
    )
    graphdef, params = nnx.split(model, nnx.Param)
    xb, yb = (
        jnp.asarray(rng.normal(size=(16, 3)), jnp.float32),
        jnp.asarray(rng.normal(size=(16, 1)), jnp.float32),
    )

    def mlp_loss(p, batch):
        x, y = batch
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

    lam, _ = D.sharpness(mlp_loss, params, (xb, yb), num_iters=1000, tol=1e-7)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hess = jax.hessian(lambda f: mlp_loss(unravel(f), (xb, yb)))(flat)
    eig = np.linalg.eigvalsh(np.asarray(hess))
    top = eig[np.argmax(np.abs(eig))]
    assert float(lam) == pytest.approx(float(top), rel=1e-2)


def test_training_stats_and_window_average():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(8, 4, 2)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
    w = jnp.array([0.3, -0.2])
    st = D.training_stats(loss, w, (xs, ys), sharpness_iters=200)
    full_x, full_y = xs.reshape(-1, 2), ys.reshape(-1)
    assert float(st.loss) == pytest.approx(float(loss(w, (full_x, full_y))), rel=1e-5)
    g_full = full_x.T @ (full_x @ w - full_y) / 32
    assert float(st.grad_norm) == pytest.approx(float(jnp.linalg.norm(g_full)), rel=1e-4)
    hess = np.asarray(full_x.T @ full_x / 32)
    assert float(st.sharpness) == pytest.approx(np.linalg.eigvalsh(hess)[-1], rel=1e-3)
    assert float(st.noise) > 0
    np.testing.assert_allclose(D.window_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


def test_track_statistics_changes_no_update_and_reports_statistics():
    params = {"w": jnp.ones(5)}
    inner = optax.chain(
        optclip.clip_by_global_norm(0.5), optclip.acclip(0.1, initial_threshold=0.0)
    )
    plain, monitored = inner, optclip.diagnostics.track_statistics(inner)
    sp, sm = plain.init(params), monitored.init(params)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = {"w": jnp.asarray(rng.standard_t(1.5, 5), jnp.float32)}
        up, sp = jax.jit(plain.update)(g, sp, params)
        um, sm = jax.jit(monitored.update)(g, sm, params)
        chex.assert_trees_all_equal(up, um)  # bit for bit
        assert float(sm.grad_norm) == pytest.approx(float(jnp.linalg.norm(g["w"])), rel=1e-6)
        assert float(sm.update_norm) == pytest.approx(float(jnp.linalg.norm(um["w"])), rel=1e-6)
        assert float(sm.pre_clip_norm) == pytest.approx(float(jnp.linalg.norm(g["w"])), rel=1e-6)
        assert float(sm.clip_fraction) == pytest.approx(float(optclip.clip_fraction(sp)))
    bare = optclip.diagnostics.track_statistics()
    _, s = bare.update({"w": jnp.array([3.0, 4.0])}, bare.init(params))
    assert float(s.grad_norm) == 5.0 and np.isnan(float(s.clip_fraction))


def test_track_statistics_shards_like_any_transform():
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    params = jax.device_put(jnp.arange(8.0 * len(devices)), sh)
    tx = optclip.diagnostics.track_statistics(optclip.gclip(0.1, 1.0))
    _, s = jax.jit(tx.update)(params, jax.jit(tx.init)(params), params)
    assert float(s.grad_norm) == pytest.approx(float(jnp.linalg.norm(params)), rel=1e-6)


BAD = [
    (lambda: D.noise_norms(lambda p, b: 0.0, jnp.ones(2), []), "empty"),
    (lambda: D.tail_index(np.ones(10), 3), "block_size"),
    (lambda: D.tail_index(np.ones(1), 1), "at least 2"),
    (lambda: D.tail_index(np.array([1.0, np.nan, 2.0, 3.0]), 2), "non-finite"),
    (lambda: D.hill_tail_index(np.array([1.0]), 1), "at least 2"),
    (lambda: D.hill_tail_index(np.array([1.0, 2.0, 3.0]), 3), "`k`"),
    (lambda: D.fit_l0_l1([1.0, 2.0, 3.0], [1.0, 2.0]), "equal length"),
    (lambda: D.window_average([], 3), "non-empty"),
]


@pytest.mark.parametrize("call,match", BAD)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plots_render(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = np.abs(np.random.default_rng(0).standard_t(1.5, 500)) + 0.1
    ax = D.plot_noise_histogram(norms, dim=20, alpha=1.5)
    assert ax.get_legend() is not None and len(ax.patches) > 0
    g = np.linspace(0.1, 5, 50)
    ax = D.plot_smoothness(g, 1.0 + 2.0 * g)
    assert any("L1=2" in t.get_text() for t in ax.get_legend().get_texts())
    ax.figure.savefig(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    plt.close("all")
