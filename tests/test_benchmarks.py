"""Smoke test of the step-time benchmark's quick mode (no timing assertions)."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    # The scripts import their siblings by name, as `python benchmarks/X.py` allows.
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


# Slow tier: 20 s of compiles on 2 cores; the footprint tests below check the memory side fast.
@pytest.mark.slow
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
    # The norm's default form keeps its rescue behind a conditional on every backend; the
    # select form has none.
    assert rows["optclip.clip_gn+adam"]["conditionals"] == 1
    assert rows[f"optclip.clip_gn+adam{step_time.SELECT}"]["conditionals"] == 0
    if jax.default_backend() == "cpu":
        # XLA:CPU runs the norm's conditional in place; a GPU copies its operands (two copies of
        # the 1e5 leaf, 804,376 bytes, on an H200 with jax 0.11.2).
        assert rows["optclip.clip_gn+adam"]["temp_bytes"] <= 0.01 * 4 * results["n"]
        assert rows["optax.clip_gn+adam"]["temp_bytes"] >= 4 * results["n"]  # the divided copy
        # Packing the small leaves runs fewer kernels than one set per leaf (XLA:CPU fuses
        # per leaf; a GPU compiled per-leaf acclip into one fusion).
        assert gpt2["rows"]["grouped(acclip)"]["fusions"] < gpt2["rows"]["acclip"]["fusions"] / 2
    # The loop is timed on accelerators only: XLA:CPU runs a loop's fusions on fewer threads.
    loop = "loop" if jax.default_backend() != "cpu" else "calls"
    for tree in (one_leaf, gpt2):
        assert {r["device_from"] for r in tree["rows"].values()} == {loop}
        assert all(r["device_ms"] > 0 and r["call_ms"] > 0 for r in tree["rows"].values())
    # ... and on request on any backend (`--loop always`), the loop's own path.
    looped = step_time.time_variants(
        {"optax.adam": (optax.adam(1e-3), None)}, {"x": (1000,)}, reps=1, inner=2, loop="always"
    )["optax.adam"]
    assert looped["device_from"] == "loop" and looped["device_ms"] > 0
    for tree in data["trees"].values():
        assert {t["variant"] for t in tree["targets"]} <= set(step_time.variants())
        assert all(0 < r["of_copy"] for r in tree["rows"].values() if "of_copy" in r)
    assert (tmp_path / "step_time.png").exists() == _load("_step_report").available()
    assert "ratio" in capsys.readouterr().out


def test_torch_fused_adam_on_the_same_shapes():
    pytest.importorskip("torch", reason="torch is not installed (it is not a dependency)")
    module = _load("_torch_step")
    device = "cuda" if module.available("cuda") else "cpu"
    shapes = _load("_model_trees").resnet50(0.05)
    rows = module.time_torch(shapes, reps=2, inner=1, device=device)
    assert set(rows) == {"torch Adam(fused)", "torch clip_grad_norm_+Adam(fused)"}
    assert all(r["device_ms"] > 0 for r in rows.values())


def test_model_trees_have_the_published_sizes():
    trees = _load("_model_trees")
    # Leaf counts and parameter counts of the published models (Flax layouts).
    assert len(trees.gpt2_small()) == 148 and trees.size(trees.gpt2_small()) == 124_439_808
    assert len(trees.resnet50()) == 161 and trees.size(trees.resnet50()) == 25_557_032
    assert len(trees.vit_b16()) == 200 and trees.size(trees.vit_b16()) == 86_567_656
    small = trees.gpt2_small(0.25)
    assert len(small) == 148 and trees.size(small) < trees.size(trees.gpt2_small()) / 10


@pytest.mark.slow
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


# E1-E3 in quick mode take about a minute: the slow tier (`pytest -m slow`), which CI runs too.
@pytest.mark.slow
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


def test_reproduce_rejects_unknown_optimizers_before_training(tmp_path, capsys):
    module = _load("reproduce")
    with pytest.raises(SystemExit):
        module.main(["--experiments", "e7", "--optimizers", "adam,adamw", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "['adamw']" in err and "clip(1)+adam" in err
    # E7's extra guards are no E4 optimizers: E4 alone with them would train nothing.
    with pytest.raises(SystemExit):
        module.main(["--experiments", "e4", "--optimizers", "clip(1)+adam", "--out", str(tmp_path)])
    assert "e4 runs none of ['clip(1)+adam']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran


# The transformer experiments take about a minute each in quick mode, for two of their
# optimizers (every optimizer's step runs in the default tier); the default run covers the
# same code through the demo and example tests (test_demo.py, test_examples.py).
@pytest.mark.slow
def test_reproduce_quick_mode_spikes(tmp_path):
    module = _load("reproduce")
    args = ["--quick", "--experiments", "e7", "--optimizers", "acclip,clip(1)+adam"]
    results = module.main([*args, "--out", str(tmp_path)])
    e7 = {r["name"].split(" (")[0]: r for r in results["e7"]}
    assert set(e7) == {"acclip", "clip(1)+adam"}
    assert all(np.isfinite(r["clean"]) and r["clean"] < 4.85 for r in e7.values())
    # docs/results.md's reading in miniature: the printed rule updates its threshold from the
    # spike before clipping and blows up; clipping the raw gradient first shrugs it off.
    assert not e7["acclip"]["spiked"] < 100
    assert abs(e7["clip(1)+adam"]["spiked"] - e7["clip(1)+adam"]["clean"]) < 0.05


@pytest.mark.slow
def test_reproduce_quick_mode_transformer_noise_and_nonsmooth(tmp_path):
    module = _load("reproduce")
    args = ["--quick", "--experiments", "e4,e5,e6", "--optimizers", "adam,acclip"]
    results = module.main([*args, "--out", str(tmp_path)])
    e4 = {r["name"]: r for r in results["e4"]}
    assert set(e4) == {"adam", "acclip"}
    for name, r in e4.items():
        # 20 steps of a tiny model from ln(128) = 4.85: every optimizer has started to learn.
        assert np.isfinite(r["mean"]) and r["mean"] < 4.85, name
        assert (r["clip_fraction"] is not None) == name.startswith("acclip")
    assert 0.0 <= e4["acclip"]["clip_fraction"] <= 1.0
    e5 = results["e5"]
    measured = [r for r in e5 if r["step"] is not None]
    assert {r["model"].split(" (")[0] for r in measured} == {"char transformer", "MLP on digits"}
    for r in measured:
        # An alpha-stable index lies in (0, 2]; the raw estimate is kept beside it.
        assert r["hill"] > 0 and 0 < r["stable"] <= 2
        assert r["stable"] == min(2.0, r["stable_raw"]) or r["stable_raw"] < 0
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


@pytest.mark.slow
def test_lm_study_quick_mode(tmp_path, capsys):
    """The language-model study end to end on a tiny model: corpus identity, each chosen
    optimizer's runs, a table, noise tails, the verdicts whose optimizers ran, JSON and a plot.
    Four of the eight optimizers: the code is the same for each (each one's step is checked in
    the default tier), and this is the slow tier's longest test."""
    study = _load("lm_study")
    names = {"adam", "acclip", "clip+adam", "sgd_momentum"}
    result = study.main(["--quick", "--optimizers", ",".join(names), "--out", str(tmp_path)])
    data = json.loads((tmp_path / "lm_study.json").read_text())
    corpus = data["corpus"]
    assert corpus["train_bytes"] == 200_000 and corpus["val_bytes"] == 20_000
    assert len(corpus["train_sha256"]) == 64 and corpus["train_sha256"] != corpus["val_sha256"]
    assert set(data["table"]) == names
    # Every optimizer ran its whole grid with both seeds, and each run has a validation curve.
    for name in names:
        grid = study.OPTIMIZERS[name][1]
        runs = [r for r in data["runs"] if r["optimizer"] == name]
        assert sorted((r["lr"], r["seed"]) for r in runs) == sorted(
            (lr, s) for lr in grid for s in (0, 1)
        )
        assert all(len(r["val_loss"]) == len(r["steps"]) for r in runs)
    # A byte model starts at log(256) = 5.55 nats and Adam must learn something in 40 steps.
    assert data["table"]["adam"]["mean"] < 5.0
    # ACClip's clip fraction is a fraction; optimizers without one report NaN.
    acclip = [f for r in data["runs"] if r["optimizer"] == "acclip" for f in r["clip_fraction"]]
    assert all(0 <= f <= 1 for f in acclip)
    assert all(h > 0 for h in (t["hill"] for t in data["noise"].values()))
    assert {v["verdict"] for v in data["verdicts"]} <= {"holds", "does not hold", "inconclusive"}
    # Judged: the two claims whose optimizers both ran, and the noise tail of the Adam run.
    judged = [(v.get("a"), v.get("b")) for v in data["verdicts"]]
    assert judged == [("acclip", "adam"), ("clip+adam", "sgd_momentum"), (None, None)]
    assert (tmp_path / "lm_study.png").exists() == study.available()
    assert result["steps"] == 40 and "verdicts" in capsys.readouterr().out


def test_lm_study_judges_only_the_claims_whose_optimizers_ran():
    study = _load("lm_study")
    row = lambda mean, std: {"mean": mean, "std": std}
    # ACClip 0.1 below Adam, with a combined seed spread of hypot(0.03, 0.04) = 0.05: it beats.
    out = study.verdicts({"adam": row(2.0, 0.03), "acclip": row(1.9, 0.04)}, {})
    assert [(v["a"], v["b"], v["verdict"]) for v in out] == [("acclip", "adam", "holds")]
    assert out[0]["spread"] == pytest.approx(0.05)
    # A gap inside the spread is no verdict either way.
    out = study.verdicts({"adam": row(2.0, 0.03), "acclip": row(1.97, 0.04)}, {})
    assert out[0]["verdict"] == "inconclusive"


def test_stdlib_corpus_excludes_tests_and_splits_by_file(tmp_path):
    lm = _load("_byte_lm")
    for rel in ("a.py", "pkg/b.py", "test/c.py", "pkg/tests/d.py", "idlelib/idle_test/e.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    for i in range(10):
        (tmp_path / f"z{i}.py").write_bytes(b"%d" % i)
    corpus = lm.stdlib_corpus(root=str(tmp_path))
    assert corpus.description["files"] == 12  # the three under test packages left out
    # Sorted order: a.py, pkg/b.py, z0..z9; the tenth file (z7) is validation.
    assert bytes(corpus.val.astype("uint8")) == b"7"
    assert bytes(corpus.train.astype("uint8")) == b"a.pypkg/b.py" + b"".join(
        b"%d" % i for i in range(10) if i != 7
    )


@pytest.mark.slow
def test_spikes_quick_mode(tmp_path):
    """The spike benchmark end to end on the tiny model: every method meets every scenario in
    one program, runs part only at the injected steps, apply_if_finite makes a non-finite
    gradient harmless, and the readings of E7 hold in miniature (checked on seeds 0-2 and 3-5)."""
    spikes = _load("spikes")
    spikes.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "spikes.json").read_text())
    table, runs, first = data["table"], data["runs"], data["spike_steps"][0]
    assert set(table) == set(spikes.METHODS) and data["seeds"] == [0, 1, 2]
    per_method = (len(spikes.SCENARIOS) + len(spikes.SWEEP)) * 3
    assert len(runs) == len(spikes.METHODS) * per_method
    assert all(len(r["train_loss"]) == data["steps"] for r in runs)
    clean = {
        (r["method"], r["seed"]): r for r in runs if (r["scenario"], r["lr_mult"]) == ("clean", 1)
    }
    for name, rows in table.items():
        assert set(rows) == set(spikes.SCENARIOS), name
        # From ln 256 = 5.55 nats, every method has learned something in 40 steps.
        assert rows["clean"]["mean"] < 5.0 and rows["clean"]["delta"] == 0.0, name
        # apply_if_finite skips the three non-finite steps, and nothing else.
        assert rows["non-finite"]["mean"] is not None and rows["non-finite"]["survives"], name
    for r in runs:
        if r["lr_mult"] == 1.0:
            # Same seed, same batches: identical until the first corrupted update lands.
            c = clean[r["method"], r["seed"]]
            assert r["train_loss"][: first + 1] == c["train_loss"][: first + 1], r["method"]
            if r["scenario"] in ("clean", "non-finite"):  # skipped: the injected steps only
                assert r["nonfinite_steps"] == (3 if r["scenario"] == "non-finite" else 0)
    # A x1e6 spike hurts Adam (its second moment remembers it) and not clip(1)+Adam.
    assert table["adam"]["x1e6"]["delta"] > table["clip(1)+adam"]["x1e6"]["delta"] + 0.1
    # The printed ACClip rule learns its threshold from the spike; the robust form does not.
    assert not table["acclip"]["x1e4"]["survives"]
    assert table["acclip(robust)"]["x1e4"]["survives"]
    assert (tmp_path / "spikes.png").exists() == spikes.available()


# The compiled memory footprint (benchmarks/footprint.py, docs/performance.md). Each optimizer's
# parameter-sized float32 state arrays, from its algorithm (4 bytes each, scalars aside):
STATE_ARRAYS = {
    "acclip": 2,  # momentum and threshold
    "acclip(rms_scale)": 3,  # and the second moment it divides by
    "acclip(robust)": 2,  # the pre-clip reads the threshold it already keeps
    "cclip": 0,  # b1 = 0 by default: no momentum, fixed thresholds
    "clip_momentum_sgd": 1,
    "clipped_gd": 0,
    "gclip": 0,
    "gclip(b1=0.9)": 1,
    "generalized_signsgd": 2,  # m and v
    "signum": 1,  # b2 = 0: the momentum only
    "normalized_gd": 0,
    "normalized_momentum_sgd": 1,
    "spam": 2,  # first moment and sqrt(v)
    "stochastic_ingd": 1,  # the momentum; x - y is a scalar times it
    "zclip+adam": 2,  # Adam's two; ZClip keeps scalars
    "adagc+adam": 2,  # and one threshold per leaf
    "skip_step(adam)": 2,  # and two windows of 128 values
    "optclip.clip_gn+adam": 2,
    "grouped(acclip)": 2,  # packed, the same bytes
    "optax.adam": 2,
    "optax.adamw": 2,
    "optax.sgd": 0,
    "optax.sgd(momentum=0.9)": 1,
    "optax.clip_gn+adam": 2,
    "optax.agc+adam": 2,  # AGC keeps no state
    # Muon: a momentum on the Muon leaves, AdamW's two moments on the rest (the split decides;
    # on a tree of one matrix and small vectors, 1).
    "optax.contrib.muon": 1,
    "muon": 1,
    "scion": 1,  # the average on every leaf
    "gluon": 1,  # the momentum on every leaf
}
MUON_SPLIT = ("optax.contrib.muon", "muon")


def _state_arrays(name, shapes):
    """Parameter-sized float32 arrays per parameter on ``shapes``: 1 on Muon's leaves and 2 on
    AdamW's for the Muon rows, ``STATE_ARRAYS`` otherwise."""
    if name not in MUON_SPLIT:
        return STATE_ARRAYS[name]
    rows = _load("_lmo_rows")
    spectral = lambda k, s: rows.norm_and_dims(k, np.broadcast_to(np.float32(0), s))[0]
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    arrays = sum(sizes[k] * (1 if spectral(k, s) == "spectral" else 2) for k, s in shapes.items())
    return arrays / sum(sizes.values())


SMALL_TREE = {"w": (512, 512), "v": (256, 1024), "b": (512,), "s": (8,)}


def _docs_section():
    footprint = _load("footprint")
    text = footprint.DOCS.read_text()
    return footprint.parse_section(text.split(footprint.BEGIN)[1].split(footprint.END)[0])


def _docs_tree(section, backend="cpu"):
    """The tree and jax version a backend's columns were measured with, from its line."""
    line = section["environments"][backend]
    tree, scale = re.search(r"; (.+) at scale ([\d.]+):", line).groups()
    return tree, float(scale), re.search(r"jax (\S+),", line).group(1)


def _model_trees_shapes(tree, scale):
    return _load("_model_trees").MODELS[tree](scale)


def test_footprint_state_bytes_follow_from_each_algorithm():
    footprint = _load("footprint")
    specs = footprint.optimizers()
    assert set(specs) == set(STATE_ARRAYS)
    shapes = {"w": (1000, 1000), "b": (1000,), "s": (3,)}
    params, n = footprint.abstract(shapes), 1_001_003
    for name, (tx, _) in specs.items():
        measured = footprint.state_bytes(tx, params) / n
        assert measured == pytest.approx(4 * STATE_ARRAYS[name], abs=0.01), name


def test_footprint_measures_a_small_tree():
    footprint = _load("footprint")
    names = ["acclip", "gclip(b1=0.9)", "optax.adam", "optax.sgd(momentum=0.9)"]
    names.append("optax.clip_gn+adam")
    specs = {k: v for k, v in footprint.optimizers().items() if k in names}
    rows = footprint.measure(specs, SMALL_TREE)
    for name, row in rows.items():
        state = 4 * STATE_ARRAYS[name]
        assert row["state_bytes_per_param"] == pytest.approx(state, abs=0.01), name
        # Donated, every output reuses an input buffer; not donated, the step writes new params
        # and a new state (scalars aside), on any backend.
        assert row["unaliased_output_bytes_per_param"] == pytest.approx(0, abs=0.01), name
        fresh = row["unaliased_output_bytes_per_param_not_donated"]
        assert fresh == pytest.approx(4 + state, abs=0.01), name
    assert rows["acclip"]["counterpart"] == "optax.adam"
    if jax.default_backend() == "cpu":
        # XLA:CPU: acclip and gclip need nothing parameter-sized beyond their counterparts, and
        # optax's clip in front of adam writes the divided gradient: one copy.
        assert abs(rows["acclip"]["extra_temp_vs_counterpart"]) < 0.05
        assert abs(rows["gclip(b1=0.9)"]["extra_temp_vs_counterpart"]) < 0.05
        assert rows["optax.clip_gn+adam"]["extra_temp_vs_counterpart"] == pytest.approx(1, abs=0.05)


def test_footprint_main_writes_json_and_markdown(tmp_path, capsys):
    footprint = _load("footprint")
    footprint.main(["--optimizers", "optax.sgd", "--scale", "0.01", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "footprint.json").read_text())
    result = data["backends"][jax.default_backend()]
    assert set(result["rows"]) == {"optax.sgd"} and result["tree"]["leaves"] == 148
    assert result["environment"]["jax"] == jax.__version__
    assert "| `optax.sgd` |" in (tmp_path / "footprint.md").read_text()
    assert "optax.sgd" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a partial run would drop the table's other rows
        footprint.main(["--optimizers", "optax.sgd", "--write-docs", "--out", str(tmp_path)])


def test_footprint_table_keeps_the_other_backends_columns(tmp_path):
    footprint = _load("footprint")

    def result(backend, temp):
        row = dict(counterpart=None, state_bytes_per_param=8.0, temp_bytes_per_param=temp)
        row |= dict(temp_bytes_per_param_not_donated=0.0, unaliased_output_bytes_per_param=0.0)
        env = dict(backend=backend, device="x", jax="1", jaxlib="1", optax="1", date="d")
        tree = dict(name="GPT-2 small", scale=0.25, params=10, leaves=2)
        return dict(environment=env, tree=tree, rows={"optax.adam": row})

    cpu = footprint.markdown(result("cpu", 1.5))
    both = footprint.parse_section(footprint.markdown(result("gpu", 2.5), cpu))
    assert both["header"][:5] == [
        "optimizer",
        "counterpart",
        "state",
        "temp (cpu)",
        "temp, not donated (cpu)",
    ]
    assert set(both["environments"]) == {"cpu", "gpu"}
    row = both["rows"]["optax.adam"]
    assert (row["temp (cpu)"], row["temp (gpu)"]) == ("1.50", "2.50")
    again = footprint.markdown(result("cpu", 0.5), footprint.markdown(result("gpu", 2.5), cpu))
    row = footprint.parse_section(again)["rows"]["optax.adam"]
    assert (row["temp (cpu)"], row["temp (gpu)"]) == ("0.50", "2.50")
    # write_docs replaces the section and nothing else.
    page = tmp_path / "page.md"
    page.write_text(f"before\n{footprint.BEGIN}\nold\n{footprint.END}\nafter\n")
    footprint.write_docs(result("cpu", 1.5), page)
    assert page.read_text() == f"before\n{footprint.BEGIN}\n{cpu}{footprint.END}\nafter\n"


def test_footprint_table_in_the_docs_has_every_optimizer_and_fresh_state_bytes():
    footprint = _load("footprint")
    section, specs = _docs_section(), footprint.optimizers()
    assert list(section["rows"]) == list(specs)
    tree, scale, _ = _docs_tree(section)
    shapes = _model_trees_shapes(tree, scale)
    params, n = footprint.abstract(shapes), _load("_model_trees").size(shapes)
    for name, (tx, counterpart) in specs.items():
        cells = section["rows"][name]
        assert cells["counterpart"].strip("`") == (counterpart or ""), name
        # State bytes do not depend on the backend or the jax version.
        fresh = footprint.state_bytes(tx, params) / n
        assert float(cells["state"]) == pytest.approx(fresh, abs=0.006), name
        want = 4 * _state_arrays(name, shapes)
        assert float(cells["state"]) == pytest.approx(want, abs=0.006), name


def test_every_footprint_pair_is_asserted_by_the_compiled_memory_tests():
    from tests import test_compiled_memory

    pairs = {k: v[1] for k, v in test_compiled_memory.PAIRS.items()}
    for name, (_, counterpart) in _load("footprint").optimizers().items():
        # optax's clip + adam is the check's negative control there (its own test); optax's AGC
        # is measured, not asserted.
        if counterpart is not None and name not in ("optax.clip_gn+adam", "optax.agc+adam"):
            assert pairs.get(name) == counterpart, name


# A fresh compile of every optimizer on the documented tree: about 2 minutes on 2 cores.
@pytest.mark.slow
def test_footprint_temp_columns_in_the_docs_match_a_fresh_compile():
    if jax.default_backend() != "cpu":
        pytest.skip("the documented temp columns checked here are XLA:CPU's")
    footprint = _load("footprint")
    section = _docs_section()
    tree, scale, version = _docs_tree(section)
    if version != jax.__version__:
        pytest.skip(f"the table was measured with jax {version}, this is {jax.__version__}")
    rows = footprint.measure(footprint.optimizers(), _model_trees_shapes(tree, scale))
    for name, row in rows.items():
        cells = section["rows"][name]
        for label, key, _ in footprint.COLUMNS:
            if key in row:
                # Bytes per parameter (the extra is in copies of 4 bytes).
                unit = 4 if key == "extra_temp_vs_counterpart" else 1
                documented = float(cells[f"{label} (cpu)"])
                assert abs(documented - row[key]) * unit <= 0.25, (name, label, row[key])
