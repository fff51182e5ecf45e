"""Smoke test of the step-time benchmark's quick mode (no timing assertions)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    # The scripts import their siblings by name, as `python benchmarks/X.py` allows.
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_quick_mode_writes_json_with_every_variant(tmp_path, capsys):
    step_time = _load("step_time")
    results = step_time.main(["--quick", "--out", str(tmp_path), "--torch-device", ""])
    data = json.loads((tmp_path / "step_time.json").read_text())
    one_leaf, gpt2 = data["trees"]["one leaf of 1e+05"], data["trees"]["GPT-2 small"]
    assert set(one_leaf["rows"]) == set(step_time.variants())
    assert set(gpt2["rows"]) == set(step_time.QUICK_MODEL_VARIANTS)
    assert gpt2["leaves"] == 148
    # Compiled-program facts that do not depend on timing noise:
    rows = one_leaf["rows"]
    assert rows["acclip"]["state_bytes_per_param"] == 8.0
    assert gpt2["rows"]["grouped(acclip)"]["state_bytes_per_param"] == 8.0
    # Per parameter, scalars aside: allow 100 bytes of scalar state in total.
    scalars = 100 / results["n"]
    assert rows["acclip"]["bytes_per_param"] <= rows["optax.adam"]["bytes_per_param"] + scalars
    assert rows["acclip"]["temp_bytes"] <= 0.01 * 4 * results["n"]
    assert rows["optclip.clip_gn+adam"]["temp_bytes"] <= 0.01 * 4 * results["n"]
    if jax.default_backend() == "cpu":
        assert rows["optax.clip_gn+adam"]["temp_bytes"] >= 4 * results["n"]  # the divided copy
        # The CPU norm keeps its overflow fallback as a conditional; accelerators have none.
        assert rows["optclip.clip_gn+adam"]["conditionals"] == 1
    else:
        assert rows["optclip.clip_gn+adam"]["conditionals"] == 0
    # Packing the small leaves runs fewer kernels than one set per leaf.
    assert gpt2["rows"]["grouped(acclip)"]["fusions"] < gpt2["rows"]["acclip"]["fusions"] / 2
    for tree in data["trees"].values():
        assert {t["variant"] for t in tree["targets"]} <= set(step_time.variants())
        assert all(0 < r["of_copy"] for r in tree["rows"].values() if "of_copy" in r)
    assert (tmp_path / "step_time.png").exists() == step_time.available()
    assert "ratio" in capsys.readouterr().out


def test_torch_fused_adam_on_the_same_shapes():
    pytest.importorskip("torch", reason="torch is not installed (it is not a dependency)")
    module = _load("_torch_step")
    device = "cuda" if module.available("cuda") else "cpu"
    shapes = _load("_model_trees").resnet50(0.05)
    rows = module.time_torch(shapes, reps=2, inner=1, device=device)
    assert set(rows) == {"torch Adam(fused)", "torch clip_grad_norm_+Adam(fused)"}
    assert all(r["median_ms"] > 0 for r in rows.values())


def test_model_trees_have_the_published_sizes():
    trees = _load("_model_trees")
    # Leaf counts and parameter counts of the published models (Flax layouts).
    assert len(trees.gpt2_small()) == 148 and trees.size(trees.gpt2_small()) == 124_439_808
    assert len(trees.resnet50()) == 161 and trees.size(trees.resnet50()) == 25_557_032
    assert len(trees.vit_b16()) == 200 and trees.size(trees.vit_b16()) == 86_567_656
    small = trees.gpt2_small(0.25)
    assert len(small) == 148 and trees.size(small) < trees.size(trees.gpt2_small()) / 10


def test_acclip_scale_quick_mode(tmp_path):
    module = _load("acclip_scale")
    results = module.main(
        ["--quick", "--optimizers", "adam,acclip tau0=0,acclip tau0=1", "--out", str(tmp_path)]
    )
    table = {t["name"]: t for t in results["table"]}
    assert set(table) == {"adam", "acclip tau0=0", "acclip tau0=1"}
    # tau_0 = 0 clips nearly everything at first; tau_0 = 1 never clips small gradients.
    assert table["acclip tau0=0"]["clip_first10"] > 0.5
    assert table["acclip tau0=1"]["clip_mean"] == 0.0
    assert (tmp_path / "acclip_scale.json").exists()


def test_reproduce_quick_mode(tmp_path):
    module = _load("reproduce")
    results = module.main(["--quick", "--experiments", "e1,e2,e3", "--out", str(tmp_path)])
    e1 = {r["alpha"]: r for r in results["e1"]}
    # GClip's averaged error decreases (a negative fitted slope) for every alpha.
    assert all(r["slope"] < -0.2 for r in e1.values())
    ratios = [r["ratio"] for r in results["e2"]]  # GClip / CClip error for d = 10, 100, 1000
    assert ratios[-1] > 1.5 * ratios[0]  # CClip's advantage grows with the dimension
    e3 = results["e3"]
    gd = [r["gd (best fixed step)"] for r in e3]
    assert gd[-1] > 3 * gd[0]  # fixed-step GD needs more iterations as M grows
    assert (tmp_path / "e1.json").exists() and (tmp_path / "e3.json").exists()


# The transformer experiments take 1.5 and 1 minute even in quick mode; the default run covers
# the same code through the demo and example tests (test_demo.py, test_examples.py).
@pytest.mark.slow
def test_reproduce_quick_mode_spikes(tmp_path):
    module = _load("reproduce")
    results = module.main(["--quick", "--experiments", "e7", "--out", str(tmp_path)])
    e7 = {r["name"]: r for r in results["e7"]}
    assert len(e7) == len(module.E4_OPTIMIZERS) + len(module.E7_EXTRA)
    assert all(np.isfinite(r["clean"]) for r in e7.values())


@pytest.mark.slow
def test_reproduce_quick_mode_transformer_noise_and_nonsmooth(tmp_path):
    module = _load("reproduce")
    results = module.main(["--quick", "--experiments", "e4,e5,e6", "--out", str(tmp_path)])
    e4 = {r["name"]: r for r in results["e4"]}
    assert set(e4) == set(module.E4_OPTIMIZERS)
    for name, r in e4.items():
        # 20 steps of a tiny model from ln(128) = 4.85: every optimizer has started to learn.
        assert np.isfinite(r["mean"]) and r["mean"] < 4.85, name
        assert (r["clip_fraction"] is not None) == name.startswith("acclip")
    assert 0.0 <= e4["acclip"]["clip_fraction"] <= 1.0
    e5 = results["e5"]
    measured = [r for r in e5 if r["step"] is not None]
    assert {r["model"].split(" (")[0] for r in measured} == {"char transformer", "MLP on digits"}
    for r in measured:
        assert r["hill"] > 0 and 0.3 < r["stable"] < 6
    # Training lowers the loss the noise is measured on.
    for model in {r["model"] for r in measured}:
        losses = [r["loss"] for r in measured if r["model"] == model]
        assert losses[-1] < losses[0], model
    e6 = {r["name"]: r for r in results["e6"]}
    assert set(e6) == {"stochastic_ingd", "sgd_momentum", "adam"}
    for r in e6.values():
        assert r["test_acc"] > 0.6  # two epochs on digits beat chance (0.1) by far
    for name in ("e4", "e5", "e6"):
        assert (tmp_path / f"{name}.json").exists()
