"""E3: iterations to a small gradient on sum x^4/4 as the starting gradient M grows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import problems


def _iterations(tx, p, eps, cap):
    def cond(c):
        k, x, _ = c
        return (k < cap) & (jnp.linalg.norm(p.grad(x)) > eps)

    def body(c):
        k, x, s = c
        u, s = tx.update(p.grad(x), s, x)
        return k + 1, optax.apply_updates(x, u), s

    k, x, _ = jax.jit(lambda: jax.lax.while_loop(cond, body, (0, p.x0, tx.init(p.x0))))()
    ok = bool(jnp.isfinite(jnp.linalg.norm(x))) and float(jnp.linalg.norm(p.grad(x))) <= eps
    return int(k) if ok else None


def e3(quick, out=None, **over):
    Ms = (10.0, 100.0, 1000.0) if quick else (10.0, 100.0, 1000.0, 10_000.0)
    eps, cap = 0.01, (20_000 if quick else 200_000)
    grids = {
        "gd (best fixed step)": [lambda h=h: optax.sgd(h) for h in np.logspace(-5, 0, 21)],
        "clipped_gd": [
            lambda e=e, g=g: optclip.clipped_gd(e, g)
            for e in (0.3, 0.1, 0.03)
            for g in (0.3, 1.0, 3.0, 10.0)
        ],
        "normalized_gd": [
            lambda e=e, b=b: optclip.normalized_gd(e, b)
            for e in (1.0, 0.3, 0.1)
            for b in (0.01, 0.1, 1.0)
        ],
        "generalized_signsgd": [
            lambda lr=lr: optclip.generalized_signsgd(lr, b1=0.5, b2=0.0)
            for lr in (0.3, 0.1, 0.03, 0.01)
        ],
    }
    rows = []
    for M in Ms:
        p = problems.relaxed_smooth_polynomial(M, dim=2)
        # Unequal coordinates (still ||grad f(x0)|| = M), so that no single fixed step
        # can land both exactly on 0, which an equal start lets a lucky grid point do.
        shape = jnp.array([1.0, 0.6])
        p = p._replace(x0=shape * (M / jnp.linalg.norm(shape**3)) ** (1 / 3))
        row = dict(M=M)
        for name, makers in grids.items():
            counts = [c for c in (_iterations(m(), p, eps, cap) for m in makers) if c is not None]
            row[name] = min(counts) if counts else None
        rows.append(row)
    names = list(grids)
    print(
        f"\nE3 relaxed smoothness: iterations to ||grad|| <= {eps} on sum x^4/4 (d=2), start "
        f"with ||grad|| = M; best of each grid (None: no grid point within {cap})"
    )
    print(f"{'M':>8}" + "".join(f"{n:>22}" for n in names))
    for r in rows:
        print(f"{r['M']:>8g}" + "".join(f"{r[n]!s:>22}" for n in names))
    for n in names:
        pts = [(r["M"], r[n]) for r in rows if r[n]]
        if len(pts) >= 2:
            slope = np.polyfit(np.log([a for a, _ in pts]), np.log([b for _, b in pts]), 1)[0]
            print(f"  {n}: iterations ~ M^{slope:.2f}")
            for r in rows:
                r.setdefault("exponents", {})[n] = float(slope)

    def draw(ax):
        for n in names:
            pts = [(r["M"], r[n]) for r in rows if r[n]]
            ax.loglog([a for a, _ in pts], [b for _, b in pts], "o-", label=n)
        ax.set_xlabel("initial gradient norm M")
        ax.set_ylabel(f"iterations to ||grad|| <= {eps}")
        ax.legend(fontsize=8)

    return rows, draw
