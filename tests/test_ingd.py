"""Deterministic INGD (thesis ch. 5, Algorithm 2): the certificate, the budget, bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optclip

# ---------------------------------------------------------------------------
# Deterministic INGD on functions with known Clarke-stationary sets
# ---------------------------------------------------------------------------


def abs_sum(x):
    return jnp.abs(x[0]) + 2.0 * jnp.abs(x[1] - 1.0)


def abs_sum_tree(x):
    return jnp.abs(x["a"]) + 2.0 * jnp.abs(x["b"][0] - 1.0)


def zigzag(x):
    # |x| plus a triangle wave of slope +-0.5: every slope away from 0 has the sign
    # of x, so the only Clarke-stationary point is 0.
    period = 0.37
    tri = jnp.abs((x[0] / period) % 2.0 - 1.0) * period
    return jnp.abs(x[0]) + 0.5 * tri


ANGLES = 2 * np.pi * np.arange(5) / 5 + 0.3
A = jnp.asarray(np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1), jnp.float32)


def max_affine(x):
    # The a_i surround 0, so the minimum (the only stationary point) is x = 0.
    return jnp.max(A @ x)


# (name, f, x0, Lipschitz constant, f*, offset of an anchor from the stationary point)
KNOWN = [
    ("abs_sum", abs_sum, jnp.array([3.0, -2.0]), 5**0.5, 0.0, lambda x: np.asarray(x) - [0.0, 1.0]),
    (
        "abs_sum_tree",
        abs_sum_tree,
        {"a": jnp.array(2.5), "b": jnp.array([-1.5])},
        5**0.5,
        0.0,
        lambda x: np.array([float(x["a"]), float(x["b"][0]) - 1.0]),
    ),
    # 2.33 is not a multiple of delta, so anchors do not land exactly on the kink at 0.
    ("zigzag", zigzag, jnp.array([2.33]), 1.5, 0.5 * 0.37, lambda x: np.asarray(x)),
    ("max_affine", max_affine, jnp.array([1.7, -2.2]), 1.0, 0.0, lambda x: np.asarray(x)),
]


@pytest.mark.parametrize("name,f,x0,lip,f_star,offset", KNOWN, ids=[k[0] for k in KNOWN])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ingd_certifies_near_the_stationary_set(name, f, x0, lip, f_star, offset, seed):
    delta, eps = 0.1, 0.1
    res = optclip.ingd(f, x0, delta=delta, epsilon=eps, lipschitz=lip, key=seed)
    assert bool(res.stationary) and int(res.status) == optclip.IngdStatus.CERTIFIED
    assert float(res.m_norm) <= eps
    # With eps < 1 every gradient direction must appear inside x + delta B, which
    # puts each coordinate of the anchor within delta of the stationary point.
    assert np.all(np.abs(offset(res.x)) < delta + 1e-6), (name, res.x)
    calls = int(res.num_value_calls) + int(res.num_grad_calls)
    bound = optclip.ingd_oracle_bound(
        delta, eps, lip, float(f(x0)) - f_star, failure_probability=0.1
    )
    assert calls <= bound


def test_relu_network_loss_is_certified_within_the_bound():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(32, 2)), jnp.float32)
    ys = jnp.asarray(np.abs(xs[:, 0]) - np.abs(xs[:, 1]), jnp.float32)

    def loss(p):
        h = jax.nn.relu(xs @ p["w1"] + p["b1"])
        return jnp.mean(jnp.abs(h @ p["w2"] - ys))  # nonsmooth loss of a ReLU network

    p0 = {
        "w1": jnp.asarray(rng.normal(size=(2, 6)), jnp.float32),
        "b1": jnp.zeros(6),
        "w2": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
    }
    # L = 3 bounds the gradient norms seen here (2.1 at p0); a loose L makes beta ~ 1
    # and the search slow, as K = 48 L^2 / eps^2 says.
    res = jax.jit(
        lambda p: optclip.ingd(
            loss, p, delta=0.1, epsilon=0.2, lipschitz=3.0, max_oracle_calls=100_000
        )
    )(p0)
    assert bool(res.stationary)
    assert float(res.value) < 0.2 * float(loss(p0))
    bound = optclip.ingd_oracle_bound(0.1, 0.2, 3.0, float(loss(p0)))
    assert int(res.num_value_calls + res.num_grad_calls) <= bound


def test_smooth_quadratic_descends_at_the_first_inner_step():
    # Remark 5.4.1: on a smooth function the descent test (almost) always passes at once.
    f = lambda x: 0.5 * jnp.sum(jnp.arange(1.0, 6.0) * x**2)
    res = optclip.ingd(f, 3.0 * jnp.ones(5), delta=0.02, epsilon=0.05, lipschitz=50.0)
    assert bool(res.stationary)
    assert int(res.num_anchors) > 20
    assert int(res.num_searches) <= 0.05 * int(res.num_anchors)


def test_budget_exhausted_is_reported():
    res = optclip.ingd(
        abs_sum,
        jnp.array([30.0, -20.0]),
        delta=0.01,
        epsilon=0.01,
        lipschitz=5**0.5,
        max_oracle_calls=50,
    )
    assert not bool(res.stationary)
    assert int(res.status) == optclip.IngdStatus.BUDGET_EXHAUSTED
    assert int(res.num_value_calls + res.num_grad_calls) <= 51


def test_ingd_jit_matches_eager_and_is_reproducible():
    x0 = jnp.array([3.0, -2.0])
    kw = dict(delta=0.1, epsilon=0.1, lipschitz=5**0.5, key=jax.random.key(3))
    a = optclip.ingd(abs_sum, x0, **kw)
    b = jax.jit(lambda x: optclip.ingd(abs_sum, x, **kw))(x0)
    chex.assert_trees_all_equal(a, b)
    raw = optclip.ingd(abs_sum, x0, **{**kw, "key": jax.random.PRNGKey(3)})
    chex.assert_trees_all_equal(a, raw)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(delta=0.0, epsilon=0.1, lipschitz=1.0), "delta"),
        (dict(delta=0.1, epsilon=-1.0, lipschitz=1.0), "epsilon"),
        (dict(delta=0.1, epsilon=0.1, lipschitz=0.0), "lipschitz"),
        (dict(delta=0.1, epsilon=0.1, lipschitz=1.0, max_oracle_calls=0), "max_oracle_calls"),
    ],
)
def test_ingd_bad_input(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        optclip.ingd(abs_sum, jnp.ones(2), **kwargs)


def test_ingd_rejects_non_scalar_and_non_finite_objectives():
    with pytest.raises(ValueError, match="scalar"):
        optclip.ingd(lambda x: x, jnp.ones(2), delta=0.1, epsilon=0.1, lipschitz=1.0)
    with pytest.raises(ValueError, match="finite"):
        optclip.ingd(lambda x: jnp.sum(x) / 0.0, jnp.ones(2), delta=0.1, epsilon=0.1, lipschitz=1.0)
