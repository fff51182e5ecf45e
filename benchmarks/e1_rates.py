"""E1: GClip with the theory schedule against the theory rate, under Pareto noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import problems, theory


def _run(tx, seed, steps, dim, index, averaged):
    """The error ``f(x_k) - f*`` of each step on a ``dim``-dimensional quadratic with Pareto
    noise of tail ``index`` (of the averaged iterate if ``averaged``), for one seed."""
    key = jax.random.key(seed)
    a = jax.random.normal(key, (dim,))
    x = jnp.zeros(dim)

    def step(carry, k):
        x, s = carry
        g = (x - a) + problems.heavy_tailed_noise(
            jax.random.fold_in(key, k), (dim,), "pareto", index
        )
        u, s = tx.update(g, s, x)
        x = optax.apply_updates(x, u)
        ev = theory.averaged_params(x, s) if averaged else x
        return (x, s), 0.5 * jnp.sum((ev - a) ** 2)

    _, err = jax.lax.scan(step, (x, tx.init(x)), jnp.arange(steps))
    return err


def _pareto_quadratic_errors(tx, steps, seeds, dim, index, averaged):
    one = lambda seed: _run(tx, seed, steps, dim, index, averaged)
    return np.asarray(jax.jit(jax.vmap(one))(jnp.arange(seeds)))


def _sgd_errors(lrs, steps, seeds, dim, index):
    """SGD's errors for every learning rate of the grid, ``[lr, seed, step]``, from one compiled
    program (the learning rate is an input, not a constant of each program)."""

    def grid(lr):
        return jax.vmap(lambda seed: _run(optax.sgd(lr), seed, steps, dim, index, False))(
            jnp.arange(seeds)
        )

    return np.asarray(jax.jit(jax.vmap(grid))(jnp.asarray(lrs, jnp.float32)))


def e1(quick, out=None, **over):
    steps, seeds, dim = (2000, 16, 5) if quick else (20_000, 64, 5)
    rows = []
    curves = {}
    ks = np.arange(1, steps + 1)
    fit = ks >= steps // 10
    for alpha in (1.2, 1.5, 1.8):
        s = theory.gclip_strongly_convex(mu=1.0, G=1.0, alpha=alpha)
        tx = theory.iterate_average(optclip.gclip(s.learning_rate, s.threshold))
        err = _pareto_quadratic_errors(tx, steps, seeds, dim, alpha + 0.1, averaged=True)
        mean = err.mean(0)
        slope = float(np.polyfit(np.log(ks[fit]), np.log(mean[fit]), 1)[0])
        sgd_best = None
        lrs = (0.3, 0.1, 0.03, 0.01, 0.003)
        for lr, e in zip(lrs, _sgd_errors(lrs, steps, seeds, dim, alpha + 0.1), strict=True):
            last = float(e[:, -steps // 10 :].mean())
            if sgd_best is None or last < sgd_best[1]:
                sgd_best = (lr, last, e.mean(0))
        rows.append(
            dict(
                alpha=alpha,
                theory=-2 * (alpha - 1) / alpha,
                slope=slope,
                gclip_final=float(mean[-1]),
                sgd_lr=sgd_best[0],
                sgd_final=sgd_best[1],
                sgd_first_half=float(sgd_best[2][: steps // 2].mean()),
                sgd_second_half=float(sgd_best[2][steps // 2 :].mean()),
            )
        )
        curves[alpha] = (mean, sgd_best[2])
    print(
        f"\nE1 rates: GClip theory schedule, averaged iterate, {seeds} seeds, {steps} steps, "
        f"d={dim}, symmetric Pareto noise of tail index alpha+0.1"
    )
    print(
        f"{'alpha':>6}{'theory slope':>14}{'fitted slope':>14}{'GClip final':>13}"
        f"{'SGD best lr':>12}{'SGD err 1st/2nd half':>24}"
    )
    for r in rows:
        print(
            f"{r['alpha']:>6}{r['theory']:>14.3f}{r['slope']:>14.3f}{r['gclip_final']:>13.2e}"
            f"{r['sgd_lr']:>12g}{r['sgd_first_half']:>12.2e} /{r['sgd_second_half']:>10.2e}"
        )

    def draw(ax):
        for alpha, (g, sg) in curves.items():
            ax.loglog(ks, g, label=f"GClip alpha={alpha}")
            ax.loglog(ks, sg, ":", label=f"best fixed-step SGD alpha={alpha}")
        ax.set_xlabel("k")
        ax.set_ylabel("E f - f*")
        ax.legend(fontsize=7)

    return rows, draw
