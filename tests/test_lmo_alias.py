"""Muon, Scion and Gluon: against optax.contrib.muon, against NumPy re-derivations of the
authors' update rules, and the contract every optimizer keeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optclip
from tests.test_lmo import np_lmo, np_newton_schulz

STEPS = 6


def _params(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (8, 16)), "bias": jnp.zeros(16)},
        "proj": {"kernel": jax.random.normal(k[1], (16, 4)) * 0.3, "bias": jnp.zeros(4)},
    }


def _grads(params, step):
    key = jax.random.fold_in(jax.random.key(42), step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def _run(tx, params, steps=STEPS, jit=False):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for i in range(steps):
        updates, state = update(_grads(params, i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


OPTAX_SETTINGS = dict(debias=True, eps=1e-8, adam_b2=0.999, adam_eps=1e-8, adam_nesterov=True)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_gives_optax_contrib_muon_iterates(nesterov):
    params = _params()
    ref = optax.contrib.muon(0.02, weight_decay=0.1, nesterov=nesterov)
    ours = optclip.muon(
        0.02,
        weight_decay=0.1,
        nesterov=nesterov,
        adam_learning_rate=0.02,
        norms=lambda path, x: "spectral" if x.ndim == 2 else "rms",
        **{**OPTAX_SETTINGS, "adam_nesterov": nesterov},  # optax's AdamW follows `nesterov`
    )
    _close(_run(ours, params)[0], _run(ref, params)[0], rtol=1e-5, atol=1e-6)


def test_muon_gives_optax_on_an_attention_kernel_with_dimension_numbers():
    k = jax.random.split(jax.random.key(3), 2)
    params = {
        "attn": {
            "query": {"kernel": jax.random.normal(k[0], (8, 2, 4)), "bias": jnp.zeros((2, 4))},
            "out": {"kernel": jax.random.normal(k[1], (2, 4, 8)), "bias": jnp.zeros(8)},
        }
    }
    dn = getattr(optax.contrib, "MuonDimensionNumbers", None)
    if dn is None:
        pytest.skip(f"optax {optax.__version__} has no optax.contrib.MuonDimensionNumbers")
    dims = {
        "attn": {
            "query": {"kernel": dn(0, (1, 2)), "bias": None},
            "out": {"kernel": dn((0, 1), 2), "bias": None},
        }
    }
    ref = optax.contrib.muon(0.05, muon_weight_dimension_numbers=dims)
    ours = optclip.muon(0.05, adam_learning_rate=0.05, **OPTAX_SETTINGS)
    _close(_run(ours, params)[0], _run(ref, params)[0], rtol=1e-5, atol=1e-6)


def _keller_muon(params, lr, wd, beta, adam_lr, steps=STEPS):
    """Keller Jordan's SingleDeviceMuonWithAuxAdam in NumPy (float64, torch layout views)."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
    buf = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in p.items()}
    m2 = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in p.items()}
    for step in range(steps):
        g = _grads(params, step)
        for k in p:
            for n in p[k]:
                grad = np.asarray(g[k][n], np.float64)
                if n == "kernel":  # torch stores (d_out, d_in): the Flax kernel transposed
                    gt = grad.T
                    buf[k][n] = buf[k][n] + (1 - beta) * (gt.T - buf[k][n])
                    b = buf[k][n].T
                    u = gt + beta * (b - gt)  # grad.lerp_(momentum, beta)
                    u = np_newton_schulz(u) * max(1.0, gt.shape[0] / gt.shape[1]) ** 0.5
                    p[k][n] = p[k][n] * (1 - lr * wd) - lr * u.T
                else:
                    t = step + 1
                    buf[k][n] = buf[k][n] + (1 - 0.9) * (grad - buf[k][n])
                    m2[k][n] = m2[k][n] + (1 - 0.95) * (grad**2 - m2[k][n])
                    c1, c2 = buf[k][n] / (1 - 0.9**t), m2[k][n] / (1 - 0.95**t)
                    p[k][n] = p[k][n] - adam_lr * c1 / (np.sqrt(c2) + 1e-10)
    return p


def test_muon_defaults_are_keller_jordans_muon_with_aux_adam():
    params = _params()
    got, _ = _run(optclip.muon(0.02, weight_decay=0.1, adam_learning_rate=3e-3), params)
    expected = _keller_muon(params, 0.02, 0.1, 0.95, 3e-3)
    _close(got, expected, rtol=1e-4, atol=1e-5)


def _np_scion(params, lr, alpha, radius, norms, unconstrained, steps=STEPS):
    x = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    d = jax.tree.map(np.zeros_like, x)
    for step in range(steps):
        g = jax.tree.map(lambda v: np.asarray(v, np.float64), _grads(params, step))
        d = jax.tree.map(lambda dd, gg: (1 - alpha) * dd + alpha * gg, d, g)
        for k in x:
            for n in x[k]:
                direction = np_lmo(np.atleast_2d(d[k][n]), norms[k][n]).reshape(d[k][n].shape)
                shrink = 1.0 if unconstrained else 1.0 - lr
                x[k][n] = shrink * x[k][n] + lr * radius[norms[k][n]] * direction
    return x


@pytest.mark.parametrize("unconstrained", [False, True])
def test_scion_matches_the_authors_update(unconstrained):
    params = _params()
    norms = {
        "dense": {"kernel": "spectral", "bias": "rms"},
        "proj": {"kernel": "sign", "bias": "rms"},
    }
    radius = {"spectral": 3.0, "sign": 60.0, "rms": 2.0}
    tx = optclip.scion(
        0.05, alpha=0.1, norms=norms, radius=radius, unconstrained=unconstrained, eps=1e-8
    )
    got, _ = _run(tx, params)
    # np_lmo treats a bias (n,) as a (1, n) layer: its rms step is the same.
    expected = _np_scion(params, 0.05, 0.1, radius, norms, unconstrained)
    _close(got, expected, rtol=1e-4, atol=2e-5)


def test_scion_defaults_are_the_nanogpt_radii():
    params = {"block": {"kernel": jnp.ones((4, 8))}, "head": {"kernel": jnp.ones((8, 10))}}
    _, state = optclip.scion().update(
        jax.tree.map(jnp.ones_like, params), optclip.scion().init(params), params
    )
    lmo_state = state[1]
    assert float(lmo_state.step_length["block"]["kernel"]) == 50.0
    assert float(lmo_state.step_length["head"]["kernel"]) == 3000.0


def test_gluon_with_l0_zero_is_unconstrained_scion_with_radius_one_over_l1():
    params = _params()
    gluon = optclip.gluon(l0=0.0, l1=4.0, learning_rate=0.1, beta=0.9)
    scion = optclip.scion(0.1, alpha=0.1, radius=0.25, unconstrained=True)
    a, sa = _run(gluon, params)
    b, _ = _run(scion, params)
    _close(a, b, rtol=1e-6, atol=1e-7)
    assert all(float(t) == 0.25 for t in jax.tree.leaves(sa[1].step_length))


def test_gluon_step_is_dual_over_l0_plus_l1_dual_per_layer():
    params = _params()
    l0 = {"dense": {"kernel": 2.0, "bias": 0.5}, "proj": {"kernel": 1.0, "bias": 1.0}}
    tx = optclip.gluon(l0=l0, l1=0.5, beta=0.0)
    g = _grads(params, 0)
    _, state = tx.update(g, tx.init(params), params)
    s = state[1]
    for k in params:
        for n in params[k]:
            d = float(s.dual_norm[k][n])
            np.testing.assert_allclose(
                float(s.step_length[k][n]), d / (l0[k][n] + 0.5 * d), rtol=1e-6
            )


def test_gluon_stochastic_schedule():
    params = {"w": jnp.zeros((3, 5)), "b": jnp.zeros(5)}
    norms = {"w": "sign", "b": "rms"}
    tx = optclip.gluon(l0=1.0, l1=2.0, learning_rate=0.5, stochastic=True, norms=norms)
    got, _ = _run(tx, params)
    x = {k: np.zeros(v.shape) for k, v in params.items()}
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    for k_step in range(STEPS):
        g = _grads(params, k_step)
        beta = 1 - (k_step + 1) ** -0.5  # beta_0 = 0: the average starts at the first gradient
        for k in x:
            m[k] = beta * m[k] + (1 - beta) * np.asarray(g[k], np.float64)
            lmo = np_lmo(np.atleast_2d(m[k]), norms[k]).reshape(m[k].shape)
            dual = -np.sum(m[k] * lmo)
            t = dual / (1.0 + 2.0 * dual)
            x[k] = x[k] + 0.5 * (k_step + 1) ** -0.75 * t * lmo
    _close(got, x, rtol=1e-4, atol=1e-6)


OPTIMIZERS = {
    "muon": lambda lr=0.02: optclip.muon(lr, weight_decay=0.01),
    "scion": lambda lr=0.01: optclip.scion(lr),
    "gluon": lambda lr=1.0: optclip.gluon(0.1, 1.0, learning_rate=lr),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_contract(name):
    params = _params()
    make = OPTIMIZERS[name]
    eager, s_eager = _run(make(), params, steps=3)
    jitted, s_jit = _run(make(), params, steps=3, jit=True)
    _close(eager, jitted, rtol=1e-5, atol=1e-5)
    dtypes = lambda s: jax.tree.map(lambda x: x.dtype, s)
    assert dtypes(s_eager) == dtypes(make().init(params)) == dtypes(s_jit)
    # The learning rate under inject_hyperparams, traced under jit.
    tx = optax.inject_hyperparams(OPTIMIZERS[name])(lr=0.01)
    injected, _ = _run(tx, params, steps=2, jit=True)
    _close(injected, _run(make(0.01), params, steps=2)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_numerics(name):
    params = _params()
    tx = OPTIMIZERS[name]()
    state = tx.init(params)
    grads = _grads(params, 0)
    top = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads))
    # Up to float32's largest value: the update and the state stay finite (rule 3), and every
    # leaf with a gradient still moves. The dual-norm statistic is the one exception: a nuclear
    # norm of entries near float32's maximum is above it, and reads inf.
    for scale in (0.0, 1e-30, 1e30, float(jnp.finfo(jnp.float32).max) / top):
        g = jax.tree.map(lambda x, c=scale: x * c, grads)
        u, s = tx.update(g, state, params)
        flat = jax.tree_util.tree_flatten_with_path((u, s))[0]
        kept = [x for path, x in flat if "dual_norm" not in jax.tree_util.keystr(path)]
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in kept), scale
        if scale >= 1e30:
            assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(u)), scale
    bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), _grads(params, 0))
    u, _ = tx.update(bad, state, params)
    assert all(bool(jnp.isnan(x).any()) for x in jax.tree.leaves(u))
    safe = optax.apply_if_finite(OPTIMIZERS[name](), 3)
    s = safe.init(params)
    u, s = safe.update(bad, s, params)
    assert int(s.notfinite_count) == 1
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    for dtype in (jnp.bfloat16, jnp.float16):
        low = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        lt = OPTIMIZERS[name]()
        u, _ = jax.jit(lt.update)(
            jax.tree.map(lambda x, d=dtype: x.astype(d), _grads(params, 0)), lt.init(low), low
        )
        assert all(x.dtype == dtype and bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_zero_gradient_gives_zero_lmo_step():
    params = _params()
    for tx in (optclip.scion(0.1, unconstrained=True), optclip.gluon(1.0, 1.0)):
        zero = jax.tree.map(jnp.zeros_like, params)
        u, _ = tx.update(zero, tx.init(params), params)
        assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))


@pytest.mark.parametrize(
    "call, error, fragments",
    [
        (lambda: optclip.muon(-1.0), ValueError, ["`learning_rate`", "[0, inf)", "-1.0"]),
        (lambda: optclip.muon(0.1, beta=1.0), ValueError, ["`beta`", "[0, 1)", "1.0"]),
        (lambda: optclip.muon(0.1, adam_b2=1.5), ValueError, ["`adam_b2`", "[0, 1)"]),
        (lambda: optclip.muon(0.1, ns_steps=0), ValueError, ["`ns_steps`", "[1, inf)"]),
        (lambda: optclip.muon(0.1, weight_decay=-1.0), ValueError, ["`weight_decay`"]),
        (lambda: optclip.scion(1.5), ValueError, ["`learning_rate`", "[0, 1]", "1.5"]),
        (lambda: optclip.scion(0.1, alpha=0.0), ValueError, ["`alpha`", "(0, 1]", "0.0"]),
        (lambda: optclip.scion(0.1, radius=-2.0), ValueError, ["`radius`", "-2.0"]),
        (lambda: optclip.gluon(-1.0, 1.0), ValueError, ["`l0`", "[0, inf)", "-1.0"]),
        (lambda: optclip.gluon(1.0, -1.0), ValueError, ["`l1`", "[0, inf)", "-1.0"]),
        (lambda: optclip.gluon(1.0, 1.0, beta=1.0), ValueError, ["`beta`", "[0, 1)"]),
        (lambda: optclip.gluon(1.0, 1.0, stochastic=1), TypeError, ["`stochastic`"]),
        (lambda: optclip.gluon(0.0, 0.0).init({"w": jnp.ones(3)}), ValueError, ["`l0`", "`l1`"]),
    ],
)
def test_wrong_hyperparameters_name_the_argument(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_scion_without_averaging_keeps_no_momentum():
    params = _params()
    tx = optclip.scion(0.1, alpha=1.0, radius=1.0, unconstrained=True)
    state = tx.init(params)
    assert state[0] == optax.EmptyState()
    g = _grads(params, 0)
    u, _ = tx.update(g, state, params)
    expected = 0.1 * optclip.lmo(g["proj"]["kernel"], "spectral")  # x += lr rho lmo(g)
    np.testing.assert_allclose(np.asarray(u["proj"]["kernel"]), np.asarray(expected), rtol=1e-6)


def test_muon_takes_a_dims_tree_like_the_params():
    k = jax.random.split(jax.random.key(5), 2)
    params = {"w": jax.random.normal(k[0], (3, 8, 6)), "b": jnp.zeros(6)}
    # A (d_in, heads, head_dim)-like leaf the default would read as a stack of dense layers.
    dims = {"w": optclip.LmoDims((1,), (0, 2)), "b": None}
    by_tree, _ = _run(optclip.muon(0.02, dims=dims), params)
    by_callable, _ = _run(
        optclip.muon(0.02, dims=lambda p, x: dims["w"] if p == ("w",) else None), params
    )
    _close(by_tree, by_callable, rtol=0, atol=0)
    default, _ = _run(optclip.muon(0.02), params)
    assert not np.allclose(np.asarray(default["w"]), np.asarray(by_tree["w"]))


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_muons_adam_link_is_optax_adam_with_its_second_moment_on_its_root(nesterov):
    from optclip._adam_rms import scale_by_adam_rms

    params = _params()
    ours, theirs = (
        scale_by_adam_rms(0.9, 0.95, 1e-8, nesterov=nesterov),
        optax.scale_by_adam(0.9, 0.95, 1e-8, nesterov=nesterov),
    )
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for k in range(5):
        g = _grads(params, k)
        u_ours, s_ours = ours.update(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
        _close(u_ours, u_theirs, rtol=2e-6, atol=1e-7)
    _close(jax.tree.map(jnp.square, s_ours.rms), s_theirs.nu, rtol=2e-6, atol=1e-30)
    # A gradient whose square overflows float32: optax's second moment is inf, the root is not.
    huge = jax.tree.map(lambda x: x * 1e30, _grads(params, 0))
    _, s_ours = ours.update(huge, ours.init(params))
    _, s_theirs = theirs.update(huge, theirs.init(params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s_ours))
    assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s_theirs.nu))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_state_can_be_donated(name):
    """No buffer appears twice in the state: a donated step would give it away twice."""
    params = _params()
    tx = OPTIMIZERS[name]()
    step = jax.jit(lambda s, g, p: tx.update(g, s, p)[1], donate_argnums=0)
    state = step(tx.init(params), _grads(params, 0), params)
    step(state, _grads(params, 1), params)  # a repeated buffer raises here
