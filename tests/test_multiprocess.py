"""Real multi-process runs: jax.distributed on 127.0.0.1, CPU devices, every optimizer.

Each job is a set of local processes started by the examples' launcher
(``examples/local_processes.py``), each bounded in time and killed at the end.
The processes run on the CPU whatever the test's backend, so these tests hold on
any machine. ``tests/distributed_worker.py`` is the program each process runs.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "distributed_worker.py")]
sys.path.insert(0, str(ROOT / "examples"))
import local_processes  # noqa: E402

from tests import distributed_worker as worker  # noqa: E402
from tests.conftest import subprocess_env  # noqa: E402

pytest.importorskip("orbax.checkpoint")

# Real jobs of several processes take two minutes of the two cores: the slow tier, which CI runs.
pytestmark = pytest.mark.slow

TIMEOUT = 240.0  # seconds for one job; the longest takes about 35 s on 2 cores


def _bounded(command, timeout):
    """Runs ``command`` in a process group of its own; the whole group dies at ``timeout``."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=subprocess_env(),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _job(processes, devices, *args):
    results = local_processes.launch([*WORKER, *args], processes, devices, timeout=TIMEOUT)
    for status, output, _ in results:
        assert status == 0, output[-3000:]
    return results


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Three jobs. 2 processes train on a 2x4 mesh and checkpoint; 1 process trains on
    2x4, checkpoints, and finishes the 2-process checkpoints on 4x2; 2 processes
    finish the 1-process checkpoints on 4x2.

    Run once per pytest run: each pytest-xdist worker has a session of its own, so the first
    worker to need the jobs runs them under a file lock in the run's shared temporary folder,
    and the others wait for it and read the results (the jobs' processes keep both cores busy
    meanwhile)."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    tmp = root / "multiprocess"
    with open(root / "multiprocess.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tmp / "done").exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a failed attempt's leftovers
            for name in ("two", "one", "back", "ckpt2", "ckpt1"):
                (tmp / name).mkdir(parents=True)
            _job(2, 4, "--out", str(tmp / "two"), "--save-ckpt", str(tmp / "ckpt2"))
            _job(
                1,
                8,
                "--out",
                str(tmp / "one"),
                "--save-ckpt",
                str(tmp / "ckpt1"),
                "--resume",
                str(tmp / "ckpt2"),
            )
            _job(2, 4, "--out", str(tmp / "back"), "--no-train", "--resume", str(tmp / "ckpt1"))
            (tmp / "done").touch()
    load = lambda d, p: dict(np.load(tmp / d / f"p{p}.npz"))
    return {
        "two": [load("two", 0), load("two", 1)],
        "one": load("one", 0),
        "back": [load("back", 0), load("back", 1)],
    }


def _close(a, b, keys, tol=1e-5):
    assert keys
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


def _arrays(run, layout):
    return [k for k in run if f"/{layout}[" in k or k.endswith(f"/{layout}")]


def test_every_optimizer_agrees_across_processes_and_with_one_process(runs):
    two, one = runs["two"], runs["one"]
    # Each process holds half of each parameter: the data axis spans the processes.
    assert two[0]["w1_local_fraction"][0] == two[1]["w1_local_fraction"][0] == 0.5
    for case in worker.ALL:
        for layout in worker.LAYOUTS if case.name in worker.ZERO_CASES else ("follow",):
            keys = [k for k in one if k.startswith(f"{case.name}/{layout}") and "bytes" not in k]
            # Both processes hold the same values, bit for bit ...
            for k in keys:
                np.testing.assert_array_equal(two[0][k], two[1][k], err_msg=k)
            # ... and equal one process on the same global mesh.
            _close(two[0], one, keys)


def test_zero_state_trains_like_replicated_state_and_halves_the_bytes(runs):
    for run in (*runs["two"], runs["one"]):
        for case in worker.ALL:
            if case.name not in worker.ZERO_CASES:
                continue
            zero = [k for k in run if k.startswith(f"{case.name}/zero") and "bytes" not in k]
            repl = [k.replace("/zero", "/replicated", 1) for k in zero]
            _close(run, {z: run[r] for z, r in zip(zero, repl, strict=True)}, zero)
            per_zero = run[f"{case.name}/zero/state_bytes_per_device"][0]
            per_repl = run[f"{case.name}/replicated/state_bytes_per_device"][0]
            total = run[f"{case.name}/zero/state_bytes"][0]
            assert per_repl == total
            # Every parameter-sized leaf is split over the 2-way data axis; only
            # scalars (counts, keys, statistics: < 64 bytes) stay whole.
            if total > 1000:
                assert per_zero * 2 - total < 64 * 2, (case.name, per_zero, total)
                assert per_zero < total


def test_checkpoint_moves_between_process_counts_and_meshes(runs):
    for name in worker.CKPT_CASES:
        # 2 processes (2x4) wrote it; 1 process (4x2) finished the run.
        keys = [k for k in runs["one"] if k.startswith(f"{name}/resumed")]
        ref = {k: runs["two"][0][k.replace("/resumed", "/follow", 1)] for k in keys}
        _close(runs["one"], ref, keys)
        # 1 process (2x4) wrote it; 2 processes (4x2) finished the run.
        keys = [k for k in runs["back"][0] if k.startswith(f"{name}/resumed")]
        ref = {k: runs["one"][k.replace("/resumed", "/follow", 1)] for k in keys}
        _close(runs["back"][0], ref, keys)
        _close(runs["back"][1], ref, keys)


def test_example_survives_a_lost_process_and_resumes_bit_for_bit():
    """The example's --fail-at: the survivor stops with a clear error within seconds."""
    command = [sys.executable, str(ROOT / "examples" / "sharded_training.py"), "--processes", "2"]
    command += ["--steps", "40", "--checkpoint-every", "10", "--fail-at", "25"]
    proc = _bounded([*command, "--heartbeat-timeout", "5"], timeout=3 * TIMEOUT)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert re.search(r"\[1\] process 1: dying at step 25", out), out
    assert re.search(r"\[1\] exit status 3 ", out), out
    # The survivor either caught the failed collective (status 75, the example's message) or,
    # when it was not in one, was ended by the coordination service's heartbeat check.
    caught = re.search(
        r"\[0\] process 0: lost contact with the other processes .* last checkpoint is step 20 .*"
        r"restart all 2 processes with --resume\.\n  \[0\] exit status 75 ",
        out,
    )
    ended = re.search(
        r"\[0\] JAX: Terminating process because the JAX distributed service detected fatal "
        r"errors\. This most likely indicates that another task died\n  \[0\] exit status -6 ",
        out,
    )
    assert caught or ended, out
    seconds = float(re.search(r"the survivors exited ([\d.]+) s after the loss", out).group(1))
    assert seconds < 15.0  # bounded by the 5 s heartbeat, not a hang
    assert "[0] steps 20..40" in out  # the restart began at the checkpoint
    assert "optimizer state: " in out and "per device" in out
    assert "resumed run equals the uninterrupted run bit for bit: True" in out
