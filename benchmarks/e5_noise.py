"""E5: the shape of the gradient noise of the transformer and a digits MLP during training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import load_example, train_snapshots, transformer_setup

from optclip import diagnostics as D


def _cases(task, steps, n, noise):
    """The two models: (loss, params, optimizer, training batches, noise batches) each."""
    # The E4 transformer, trained with Adam at its E4 learning rate; noise from
    # minibatches of 8 sequences.
    hi = task.train.shape[0] - task.cfg.seq - 1
    cases = {
        f"char transformer ({task.num_params()} params)": (
            lambda p, starts: task.loss(p, task.train, starts),
            task.init_params(0),
            optax.adam(3e-3),
            task.batch_starts(0, steps),
            jax.random.randint(jax.random.key(77), (n, 8), 0, hi),
        )
    }
    # The digits MLP of examples/noise_diagnostics.py, trained with Adam on batches of 32.
    mloss, mparams, _, msize = noise.mlp_case(n)
    num_digits = 1797
    cases[f"MLP on digits ({msize} params)"] = (
        mloss,
        mparams,
        optax.adam(1e-3),
        jax.random.randint(jax.random.key(5), (steps, 32), 0, num_digits),
        jax.random.randint(jax.random.key(6), (n, 8), 0, num_digits),
    )
    return cases


def _measure(cases, snapshots, n, block, noise):
    """Noise statistics of every model at every snapshot; returns rows and the norms."""
    key = jax.random.key(0)
    rows, hists = [], {}
    for i, (name, (loss_fn, params, tx, train_batches, noise_batches)) in enumerate(cases.items()):
        snaps = train_snapshots(loss_fn, params, tx, train_batches, snapshots)
        for step, p in snaps.items():
            norms, proj = noise.noise_samples(loss_fn, p, noise_batches, jax.random.fold_in(key, i))
            norms, proj = np.asarray(norms), np.asarray(proj)
            losses = jax.lax.map(lambda b, p=p, f=loss_fn: f(p, b), noise_batches)
            rows.append(
                dict(
                    model=name,
                    step=step,
                    loss=float(jnp.mean(losses)),
                    hill=D.hill_tail_index(norms, max(1, n // 10)),
                    stable=D.tail_index(proj, block),
                    # The estimate before it is clamped to (0, 2]; the table marks clamped ones.
                    stable_raw=D.tail_index(proj, block, clamp=False),
                    median_norm=float(np.median(norms)),
                    max_over_median=float(np.max(norms) / np.median(norms)),
                )
            )
            hists[(name, step)] = norms
    return rows, hists


def _reference_rows(n, block):
    """The estimator's own spread at this sample size: alpha-stable samples, 8 draws each."""
    rows = []
    for alpha in (2.0, 1.5):
        draws = [D.symmetric_alpha_stable(jax.random.key(s), alpha, (n,)) for s in range(8)]
        est = [D.tail_index(np.asarray(x), block) for x in draws]
        rows.append(
            dict(
                model=f"reference: alpha-stable({alpha}) samples",
                step=None,
                stable=float(np.mean(est)),
                stable_std=float(np.std(est)),
            )
        )
    return rows


def _print_table(rows, n):
    print(
        f"\nE5 noise shape: {n} minibatches of 8 per measurement, during training with Adam; "
        "Hill index of the noise norms (top 10%), alpha-stable index of the noise projected on "
        "a random direction (2 = Gaussian, smaller = heavier; * = an estimate beyond 2, "
        "clamped to 2)"
    )
    print(
        f"{'model':<36}{'step':>6}{'loss':>12}{'Hill (norms)':>14}"
        f"{'alpha (proj)':>14}{'max/median':>12}"
    )
    for r in rows:
        if r["step"] is None:
            spread = f"{r['stable']:>8.2f} ± {r['stable_std']:.2f}"
            print(f"{r['model']:<36}{'':>6}{'':>12}{'':>14}{spread}")
        else:
            flag = "*" if r["stable_raw"] != r["stable"] else " "
            print(
                f"{r['model']:<36}{r['step']:>6}{r['loss']:>12.3f}{r['hill']:>14.2f}"
                f"{r['stable']:>13.2f}{flag}{r['max_over_median']:>12.1f}"
            )


def e5(quick, out=None, **over):
    noise = load_example("noise_diagnostics")
    _, task, steps, _ = transformer_setup(quick, over)
    n = 128 if quick else 1024  # minibatches of 8 per measurement
    block = 16
    cases = _cases(task, steps, n, noise)
    rows, hists = _measure(cases, (0, steps // 4, steps), n, block, noise)
    rows += _reference_rows(n, block)
    _print_table(rows, n)

    def draw(ax):
        for name in cases:
            for step, style in ((steps, "-"), (0, ":")):
                norms = hists[(name, step)]
                ax.hist(
                    norms / np.median(norms),
                    bins=60,
                    density=True,
                    histtype="step",
                    linestyle=style,
                    label=f"{name}, step {step}",
                )
        ax.set_yscale("log")
        ax.set_xlabel("noise norm / median")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)

    return rows, draw
