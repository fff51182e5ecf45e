"""E2: CClip against GClip as the dimension grows, under unequal coordinate noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import problems, theory


def e2(quick, out=None, **over):
    dims = (10, 100, 1000) if quick else (10, 30, 100, 300, 1000, 3000, 10000)
    steps, seeds, alpha, df = (1000, 8, 1.4, 1.5) if quick else (5000, 16, 1.4, 1.5)
    rows = []
    for d in dims:
        p = problems.coordinate_noise_quadratic(dim=d, df=df)
        B = p.info["B"]
        # Theory constants: CClip uses the coordinate scales B_i; GClip the norm scale,
        # here ||B||_2 (for alpha-moments of a sum, G^alpha <= d ||B||_alpha^alpha).
        sc = theory.cclip_strongly_convex(1.0, B, alpha)
        sg = theory.gclip_strongly_convex(1.0, float(jnp.linalg.norm(B)), alpha)
        out = {}
        for name, tx in (
            ("cclip", theory.iterate_average(optclip.cclip(sc.learning_rate, sc.threshold))),
            ("gclip", theory.iterate_average(optclip.gclip(sg.learning_rate, sg.threshold))),
        ):

            def one(seed, tx=tx, p=p):
                key = jax.random.key(seed)
                x = p.x0

                def step(carry, k):
                    x, s = carry
                    u, s = tx.update(p.grad(x, jax.random.fold_in(key, k)), s, x)
                    return (optax.apply_updates(x, u), s), None

                (x, s), _ = jax.lax.scan(step, (x, tx.init(x)), jnp.arange(steps))
                return p.f(theory.averaged_params(x, s)) - p.f_star

            out[name] = float(np.mean(np.asarray(jax.jit(jax.vmap(one))(jnp.arange(seeds)))))
        rows.append(
            dict(dim=d, cclip=out["cclip"], gclip=out["gclip"], ratio=out["gclip"] / out["cclip"])
        )
    print(
        f"\nE2 dimension: f(xbar) - f* after {steps} steps, {seeds} seeds, theory schedules, "
        f"5% of coordinates with B_i = 10, the rest 0.1, Student-t({df}) noise"
    )
    print(f"{'d':>7}{'CClip':>12}{'GClip':>12}{'GClip/CClip':>14}")
    for r in rows:
        print(f"{r['dim']:>7}{r['cclip']:>12.3e}{r['gclip']:>12.3e}{r['ratio']:>14.2f}")

    def draw(ax):
        ax.loglog([r["dim"] for r in rows], [r["cclip"] for r in rows], "o-", label="CClip")
        ax.loglog([r["dim"] for r in rows], [r["gclip"] for r in rows], "s-", label="GClip")
        ax.set_xlabel("dimension d")
        ax.set_ylabel("f(xbar) - f*")
        ax.legend()

    return rows, draw
