"""The examples run end to end in a short configuration."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Slow tier (10 s): INGD's training is covered fast by tests/test_stochastic_ingd.py.
@pytest.mark.slow
def test_ingd_relu_mlp_trains_every_optimizer(tmp_path, capsys):
    example = _load("ingd_relu_mlp")
    curves = example.main(["--epochs", "2", "--seeds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for name in ("stochastic_ingd", "sgd_momentum", "adam"):
        assert name in out
        # Two epochs are enough for a ReLU MLP to beat chance (0.1) by far on digits.
        assert curves[name][0][-1][1] > 0.6


@pytest.mark.slow  # two models trained and measured: half a minute
def test_noise_diagnostics_reports_both_models(tmp_path, capsys):
    example = _load("noise_diagnostics")
    rows = example.main(["--quick", "--out", str(tmp_path)])
    assert set(rows) == {"char transformer (text)", "MLP (digits)"}
    for r in rows.values():
        assert 0 < r["stable"] <= 2 and r["hill"] > 0
    assert "Reading:" in capsys.readouterr().out


@pytest.mark.slow  # about 9 s on two shared cores, most of it compiling
def test_nnx_muon_trains_a_tiny_transformer(capsys):
    pytest.importorskip("flax")
    example = _load("nnx_muon")
    losses = example.main(["--steps", "20"])
    out = capsys.readouterr().out
    # The default assignment: hidden matrices to Muon, embedding, head and vectors to AdamW.
    assert "block/up/kernel: spectral -> Muon" in out
    assert "block/attn/query/kernel: spectral -> Muon" in out
    assert "embed/embedding: column -> AdamW" in out and "head/kernel: sign -> AdamW" in out
    assert "block/down/kernel: dual norm" in out
    assert losses[-1] < 0.5 * losses[0]


def _run_on_8_cpu_devices(script: str, *args: str) -> str:
    """An example's stdout, run in a process of its own with 8 CPU devices, whatever this test's
    backend is; fails with its output if the example does."""
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


# Slow tier (10 s): tests/test_ecosystem.py checks a bitwise resume for every optimizer.
@pytest.mark.slow
def test_sharded_training_resumes_bitwise_from_checkpoint():
    out = _run_on_8_cpu_devices("sharded_training.py", "--steps", "40")
    assert "per-device shard (16, 16)" in out
    assert "restored the step-20 checkpoint and resumed: bitwise identical = True" in out
    first, last = map(float, re.search(r"loss: first ([\d.]+), last ([\d.]+)", out).groups())
    assert last < first
    # ZeRO-1 over the 2-way data axis halves the state that followed the params.
    zero, follow = map(int, re.search(r"per device (\d+) with .* (\d+) if it only", out).groups())
    assert follow // 2 <= zero < follow // 2 + 64


# Slow tier (10 s, a subprocess on 8 devices); CI runs it with the slow tests.
@pytest.mark.slow
def test_nnx_sharded_recipe_puts_params_and_adam_state_where_promised():
    # The recipe of docs/nnx_sharding.md; the script itself asserts that the moment's sharding
    # is state_shardings' and that the loss fell.
    out = _run_on_8_cpu_devices("nnx_sharded.py")
    assert "8 devices, mesh {'data': 4, 'model': 2}" in out
    assert "up.kernel (16, 128): P(None, 'model'), (16, 64) per device" in out
    # ZeRO-1: the moment adds the 4-way data axis to the kernel's free dimension.
    assert "its Adam mu (16, 128): P('data', 'model'), (4, 64) per device" in out
    first, last = map(float, re.search(r"loss: step 0 ([\d.]+), step 19 ([\d.]+)", out).groups())
    assert last < first


def test_notebooks_match_their_paired_sources():
    jupytext = pytest.importorskip("jupytext", reason="jupytext (the test extra) pairs them")

    for source in sorted((ROOT / "examples" / "notebooks").glob("*.py")):
        notebook = source.with_suffix(".ipynb")
        assert notebook.exists(), f"{notebook.name} is missing: run `jupytext --sync {source}`"
        a = [c.source for c in jupytext.read(source).cells]
        b = [c.source for c in jupytext.read(notebook).cells]
        assert a == b, f"{notebook.name} is out of sync with {source.name}: run jupytext --sync"


def _scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files in ``logdir``, by tag and step: TFRecord framing (length,
    its CRC, the record, its CRC) around ``Event`` protos, read without TensorBoard."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_logging_writes_every_statistic_per_layer(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    example = _load("tensorboard_logging")
    last = example.main(["--logdir", str(tmp_path), "--steps", "12", "--spike-step", "10"])
    assert "layers.1.kernel" in capsys.readouterr().out
    scalars = _scalars(tmp_path)
    # The tags, from the chain's definition: the named links' keys and the guard's.
    leaves = [f"layers.{i}.{name}" for i in (0, 1) for name in ("bias", "kernel")]
    per_leaf = {
        f"agc/record_norms/{field}/{leaf}"
        for field in ("grad_norm", "update_norm", "removed")
        for leaf in leaves
    }
    guard = {f"apply_if_finite/{k}" for k in ("notfinite_count", "last_finite", "total_notfinite")}
    assert set(scalars) == {"loss", "adam/scale_by_adam/count"} | guard | per_leaf
    assert all(sorted(steps) == list(range(1, 13)) for steps in scalars.values())
    assert scalars["adam/scale_by_adam/count"] == {s: float(s) for s in range(1, 13)}
    for key, value in last.items():  # the file holds what the step returned
        assert scalars[key][12] == pytest.approx(value, rel=1e-6), key
    for leaf in leaves:
        grad = scalars[f"agc/record_norms/grad_norm/{leaf}"]
        out = scalars[f"agc/record_norms/update_norm/{leaf}"]
        removed = scalars[f"agc/record_norms/removed/{leaf}"]
        assert grad[10] > 20 * grad[9], leaf  # targets scaled 100x: every layer's gradient spikes
        assert removed[10] == pytest.approx(1.0 - out[10] / grad[10], abs=1e-6), leaf
