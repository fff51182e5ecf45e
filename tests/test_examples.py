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
