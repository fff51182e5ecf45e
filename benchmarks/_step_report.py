"""The step-time benchmark's table and plot (``step_time.py`` measures, this prints)."""

from __future__ import annotations

from optclip._plotting import available, pyplot, save

AXPY = "x*a+b"


def print_tree(title, result):
    print(
        f"\n{title}: {result['leaves']} leaves, {result['params']:,} float32 parameters; "
        f"device copy {result['copy_gb_per_s']:.0f} GB/s"
    )
    loops = {r.get("device_from") for r in result["rows"].values()} - {None}
    print(
        "device ms: per step inside one jitted loop; per call ms: separate jitted calls"
        + ("" if loops == {"loop"} else " (no loop on this tree: device ms = per call ms)")
    )
    head = (
        f"{'variant':<36}{'device ms':>10}{'ratio':>7}{'per call':>9}{'ratio':>7}  {'vs':<24}"
        f"{'B/param':>8}"
        f"{'state B/p':>10}{'temp B':>11}{'fusions':>8}{'GB/s':>7}{'of copy':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, r in result["rows"].items():
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        call_ratio = f"{r['call_ratio']:.2f}" if "call_ratio" in r else ""
        call = f"{r['call_ms']:.3f}" if "call_ms" in r else ""
        line = f"{name:<36}{r['device_ms']:>10.3f}{ratio:>7}{call:>9}{call_ratio:>7}  "
        line += f"{r.get('vs', ''):<24}"
        if "bytes_per_param" in r:
            line += (
                f"{r['bytes_per_param']:>8.1f}{r['state_bytes_per_param']:>10.1f}"
                f"{r['temp_bytes']:>11d}{r['fusions']:>8d}{r['gb_per_s']:>7.0f}"
                f"{r['of_copy']:>8.2f}"
            )
        print(line)
    for key, value in result["ratios"].items():
        print(f"  {key}: {value:.2f}")
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        print(f"  target {t['variant']} / {t['vs']} <= {t['bar']:.2f}: {t['ratio']:.2f} {verdict}")


def plot(results, path):
    if not available():
        print("matplotlib not installed: no plot")
        return None
    tree_names = list(results["trees"])
    fig, axes = pyplot().subplots(
        1, len(tree_names), figsize=(4.2 * len(tree_names), 6.5), sharey=True, squeeze=False
    )
    for ax, name in zip(axes[0], tree_names, strict=True):
        rows = results["trees"][name]["rows"]
        # `--variants` may leave optax.adam out; the copy yardstick is always timed.
        reference = "optax.adam" if "optax.adam" in rows else AXPY
        base = rows[reference]["device_ms"]
        names = list(rows)
        # optclip blue, the references (optax, the copy yardstick) gray, PyTorch orange.
        colors = [
            "tab:orange"
            if k.startswith("torch")
            else "tab:gray"
            if k.startswith("optax") or k == AXPY
            else "tab:blue"
            for k in names
        ]
        ax.barh(names, [rows[k]["device_ms"] / base for k in names], color=colors)
        ax.axvline(1.0, color="black", lw=0.8)
        tree = results["trees"][name]
        ax.set_title(f"{name}\n{tree['leaves']} leaf(s), {tree['params']:,} params", fontsize=9)
        ax.set_xlabel(f"device time per step / {reference}")
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{results['machine']['device']}, scale {results['scale']}", fontsize=10)
    return str(save(fig, path))
