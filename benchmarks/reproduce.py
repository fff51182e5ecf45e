"""The papers' claims in miniature (issue E1-E7 in docs/results.md).

    python benchmarks/reproduce.py                 # all seven (about 55 minutes on 2 cores)
    python benchmarks/reproduce.py --quick         # smoke test (a few minutes)
    python benchmarks/reproduce.py --experiments e4,e7

E1  GClip with the theory schedule (eta_k = 4/(mu(k+1)), tau_k = G k^(1/alpha)) on a strongly
    convex quadratic with symmetric Pareto noise of tail index alpha + 0.1: the fitted log-log
    slope of E[f(xbar_k) - f*] against the theory's -2(alpha-1)/alpha, beside SGD with the best
    fixed step of a grid.
E2  CClip against GClip as the dimension grows (10 to 1000), under coordinate noise of unequal
    scales B_i.
E3  Iterations to ||grad f|| <= eps on f(x) = sum x^4/4 started where ||grad f|| = M, for M from
    10 to 1e4: fixed-step GD, clipped GD, normalized GD and generalized SignSGD, each with the
    best setting of a grid.
E4  The character transformer (optclip.demo.charlm, 255k parameters, text from the standard
    library's sources): SGD-momentum, GClip-momentum, Adam, ACClip (printed and RMS-scaled) and
    generalized SignSGD, each with a 3-point learning-rate grid and 5 seeds.
E5  Gradient-noise shape (tail indices, histograms) of that transformer and of an MLP on
    scikit-learn's digits, at initialisation and during training.
E6  Stochastic INGD against SGD-momentum and Adam on a ReLU MLP (digits), each with a 3-point grid.
E7  E4 with rare gradient spikes (x1e4 at steps 100 and 300): validation loss of every E4
    optimizer, at its E4 learning rate, with and without them.

Each experiment prints a table and writes <out>/<name>.json and <name>.png. --steps, --seeds,
--d-model and --layers override the transformer experiments' defaults; --optimizers runs some
of E4's and E7's optimizers only (their names as in the tables, without the learning rate).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import plot, write_json
from e1_rates import e1
from e2_dimension import e2
from e3_relaxed_smoothness import e3
from e4_transformer import E4_OPTIMIZERS, e4
from e5_noise import e5
from e6_nonsmooth import e6
from e7_spikes import E7_EXTRA, e7

__all__ = ["E4_OPTIMIZERS", "E7_EXTRA", "EXPERIMENTS", "main"]

EXPERIMENTS = {"e1": e1, "e2": e2, "e3": e3, "e4": e4, "e5": e5, "e6": e6, "e7": e7}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--out", default="out/benchmarks")
    group = ap.add_argument_group("transformer experiments (E4, E5): override the defaults")
    group.add_argument("--steps", type=int)
    group.add_argument("--seeds", type=int)
    group.add_argument("--d-model", type=int)
    group.add_argument("--layers", type=int)
    group.add_argument("--optimizers", help="E4 and E7: a comma-separated subset (default: all)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad:
        ap.error(f"unknown experiment(s) {bad}; choose from {list(EXPERIMENTS)}")
    optimizers = None
    if args.optimizers is not None:
        optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
        known = [*E4_OPTIMIZERS, *E7_EXTRA]
        bad = [o for o in optimizers if o not in known]
        if bad or not optimizers:
            ap.error(f"unknown optimizer(s) {bad}; choose from {', '.join(known)}")
        if "e4" in names and not set(optimizers) & set(E4_OPTIMIZERS):
            ap.error(f"e4 runs none of {optimizers}; choose from {', '.join(E4_OPTIMIZERS)}")
    over = dict(
        steps=args.steps,
        seeds=args.seeds,
        d_model=args.d_model,
        layers=args.layers,
        optimizers=optimizers,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in names:
        start = time.perf_counter()
        rows, draw = EXPERIMENTS[n](args.quick, out=out, **over)
        results[n] = rows
        write_json(out / f"{n}.json", rows)
        png = plot(out / f"{n}.png", draw)
        print(
            f"({time.perf_counter() - start:.0f}s; wrote {out / (n + '.json')}"
            + (f" and {png}" if png else "")
            + ")"
        )
    return results


if __name__ == "__main__":
    main()
