"""A jax.distributed job's processes on this machine: start them, and join one.

Used by ``sharded_training.py --processes N`` and by the multi-process tests.
Everything listens on 127.0.0.1 only; every process started is bounded in time
and killed when the job ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import jax

# How JAX's coordination service ends a process whose peer stopped sending heartbeats
# (SIGABRT), when no failed collective raised first.
JAX_FATAL = "Terminating process because the JAX distributed service detected fatal errors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command, processes, devices_per_process, timeout=300.0, grace=30.0):
    """Runs ``command`` as ``processes`` local processes of one jax.distributed job.

    Each gets ``--process-id I --num-processes N --coordinator 127.0.0.1:PORT``
    and ``devices_per_process`` CPU devices. Returns ``(exit status, output,
    seconds from start to exit)`` per process. Bounded: every process is killed
    at ``timeout``, and the rest ``grace`` seconds after the first one fails.
    """
    port = free_port()
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        "XLA_FLAGS": " ".join(
            [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        logs = [open(Path(tmp) / f"{i}.log", "w+") for i in range(processes)]
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    *command,
                    "--process-id",
                    str(i),
                    "--num-processes",
                    str(processes),
                    "--coordinator",
                    f"127.0.0.1:{port}",
                ],
                stdout=logs[i],
                stderr=subprocess.STDOUT,
                env=env,
            )
            for i in range(processes)
        ]
        ended = [None] * processes
        first_failure = None
        try:
            while None in ended:
                now = time.monotonic()
                for i, p in enumerate(procs):
                    if ended[i] is None and p.poll() is not None:
                        ended[i] = now - start
                        if p.returncode != 0 and first_failure is None:
                            first_failure = now
                late = first_failure is not None and now - first_failure > grace
                if now - start > timeout or late:
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        results = []
        for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
            log.seek(0)
            results.append((p.returncode, log.read(), ended[i]))
            log.close()
    return results


def initialize(coordinator, num_processes, process_id, heartbeat_timeout=10):
    """Joins the job; a process silent for ``heartbeat_timeout`` seconds fails the others."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=heartbeat_timeout,
    )
