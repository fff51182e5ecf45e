"""The papers' claims in miniature: convergence rates, dimension, relaxed smoothness.

    python benchmarks/reproduce.py                 # E1-E3 and E7 (about 10 minutes on 2 cores)
    python benchmarks/reproduce.py --quick         # smoke test (seconds)
    python benchmarks/reproduce.py --experiments e1

E1  GClip with the theory schedule (eta_k = 4/(mu(k+1)), tau_k = G k^(1/alpha)) on a strongly
    convex quadratic with symmetric Pareto noise of tail index alpha + 0.1: the fitted log-log
    slope of E[f(xbar_k) - f*] against the theory's -2(alpha-1)/alpha, beside SGD with the best
    fixed step of a grid.
E2  CClip against GClip as the dimension grows (10 to 1000), under coordinate noise of unequal
    scales B_i.
E3  Iterations to ||grad f|| <= eps on f(x) = sum x^4/4 started where ||grad f|| = M, for M from
    10 to 1e4: fixed-step GD, clipped GD, normalized GD and generalized SignSGD, each with the
    best setting of a grid.
E7  The character transformer with rare gradient spikes (x1e4 at steps 100 and 300): validation
    loss of SGD-momentum, GClip, Adam, ACClip and generalized SignSGD with and without them.

Each experiment prints a table and writes <out>/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optclip
from optclip import problems, theory


def _plot(path, draw):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------
# E1: rates
# ---------------------------------------------------------------------------


def _pareto_quadratic_errors(tx, steps, seeds, dim, index, averaged):
    def one(seed):
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

    return np.asarray(jax.jit(jax.vmap(one))(jnp.arange(seeds)))


def e1(quick):
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
        for lr in (0.3, 0.1, 0.03, 0.01, 0.003):
            e = _pareto_quadratic_errors(optax.sgd(lr), steps, seeds, dim, alpha + 0.1, False)
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


# ---------------------------------------------------------------------------
# E2: dimension
# ---------------------------------------------------------------------------


def e2(quick):
    # d = 1e4 took over 10 minutes on 2 cores (Student-t draws are gamma rejection samples).
    dims = (10, 100, 1000) if quick else (10, 30, 100, 300, 1000)
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


# ---------------------------------------------------------------------------
# E3: relaxed smoothness
# ---------------------------------------------------------------------------


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


def e3(quick):
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


# ---------------------------------------------------------------------------
# E7: robustness to gradient spikes on the transformer
# ---------------------------------------------------------------------------


def e7(quick):
    from optclip import charlm

    cfg = (
        charlm.Config(d_model=32, heads=2, layers=1, seq=32, batch=8)
        if quick
        else charlm.Config(d_model=64)
    )
    steps, seeds = (40, [0]) if quick else (400, [0, 1, 2])
    spike_every, spike_at, factor = (20, 10, 1e4) if quick else (200, 100, 1e4)
    task = charlm.Task.make(cfg, max_chars=100_000 if quick else 1_500_000)
    ema_sgd = lambda lr: optax.chain(optclip.ema_momentum(0.9), optax.scale_by_learning_rate(lr))
    configs = {
        "sgd_momentum (lr 1)": ema_sgd(1.0),
        "gclip (lr 1, tau 0.3)": optclip.gclip(1.0, threshold=0.3, b1=0.9),
        "adam (3e-3)": optax.adam(3e-3),
        "acclip rms (3e-3)": optclip.acclip(3e-3, rms_scale=True),
        "generalized_signsgd (3e-3)": optclip.generalized_signsgd(3e-3),
    }

    def spikes(k, grads):
        hit = (k % spike_every) == spike_at
        return jax.tree.map(lambda g: jnp.where(hit, g * factor, g), grads)

    rows = []
    for name, tx in configs.items():
        clean, _, _ = charlm.train_seeds(task, tx, seeds, steps)
        spiked, _, _ = charlm.train_seeds(task, tx, seeds, steps, grad_hook=spikes)
        rows.append(
            dict(
                name=name,
                clean=float(np.mean(clean)),
                clean_std=float(np.std(clean)),
                spiked=float(np.mean(spiked)),
                spiked_std=float(np.std(spiked)),
            )
        )
    print(
        f"\nE7 spikes: char transformer ({task.num_params()} params), {steps} steps, "
        f"{len(seeds)} seeds; gradients x{factor:g} at steps {spike_at} mod {spike_every}"
    )
    print(f"{'optimizer':<28}{'val loss, clean':>20}{'with spikes':>20}{'change':>10}")
    for r in rows:
        print(
            f"{r['name']:<28}{r['clean']:>12.4f} ± {r['clean_std']:<6.3f}"
            f"{r['spiked']:>12.4f} ± {r['spiked_std']:<6.3f}{r['spiked'] - r['clean']:>+10.3f}"
        )

    def draw(ax):
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [min(r["clean"], 10) for r in rows], 0.4, label="clean")
        ax.bar(xs + 0.2, [min(r["spiked"], 10) for r in rows], 0.4, label="with spikes")
        ax.set_xticks(xs, [r["name"].split(" (")[0] for r in rows], rotation=20, fontsize=8)
        ax.set_ylabel("validation loss (capped at 10)")
        ax.legend()

    return rows, draw


EXPERIMENTS = {"e1": e1, "e2": e2, "e3": e3, "e7": e7}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--experiments", default="e1,e2,e3,e7")
    ap.add_argument("--out", default="out/benchmarks")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad:
        ap.error(f"unknown experiment(s) {bad}; choose from {list(EXPERIMENTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in names:
        start = time.perf_counter()
        rows, draw = EXPERIMENTS[n](args.quick)
        results[n] = rows
        (out / f"{n}.json").write_text(json.dumps(rows, indent=1, default=float))
        png = _plot(out / f"{n}.png", draw)
        print(
            f"({time.perf_counter() - start:.0f}s; wrote {out / (n + '.json')}"
            + (f" and {png}" if png else "")
            + ")"
        )
    return results


if __name__ == "__main__":
    main()
