"""The floor run's tests (.ci/floor_tests.txt): the fewest test-seconds that run every line of
optclip, jax, optax, chex and flax that the core test files run on the floor stack.

The floor exists to catch an API the oldest stack lacks or treats differently (a missing optax
helper, a batching rule jax 0.4.35 did not have), which shows in the dependencies' lines as much
as in optclip's: a test of `jax.vmap` reaches jax's batching code that no other test does. So the
measurement covers the dependencies too, per test, and a greedy weighted set cover keeps the
tests that add lines at the least time. Rerun it when tests are added or renamed (pytest refuses
a listed test that no longer exists), on the floor stack (.ci/floor.txt, Python 3.11):

    python .ci/floor_cover.py measure        # about 4 minutes on 2 cores
    python .ci/floor_cover.py select > .ci/floor_tests.txt

`measure` runs the core files with coverage contexts and test durations into .floor-cover/;
`select` prints the list, with a summary on standard error.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".floor-cover"
PACKAGES = ("optclip", "jax", "optax", "chex", "flax")

# Every test file whose code runs on the floor stack: the examples, notebooks, demo, benchmarks,
# documentation and multi-process jobs need the extras' newest APIs and stay on the newest stack.
CORE = (
    "test_adagc",
    "test_alias",
    "test_bad_input",
    "test_checks",
    "test_convergence",
    "test_diagnostics",
    "test_ecosystem",
    "test_equivalence",
    "test_grouping",
    "test_ingd",
    "test_layer_smoothness",
    "test_lmo",
    "test_lmo_alias",
    "test_lmo_reference",
    "test_numerics",
    "test_numerics_range",
    "test_optax_harness",
    "test_package",
    "test_problems",
    "test_properties",
    "test_record_norms",
    "test_sharding",
    "test_skip_step",
    "test_spam",
    "test_statistics",
    "test_stochastic_ingd",
    "test_theory",
    "test_transforms",
    "test_zclip",
)

HEADER = """\
# The floor run's tests (.ci/run, stage "floor"): they run every line of optclip, jax, optax,
# chex and flax that the core test files run on the floor stack, in the fewest test-seconds.
# Made by `.ci/floor_cover.py` (its docstring says how); regenerate, do not edit.
"""


def measure() -> int:
    WORK.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-n",
        "auto",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=-m 'not slow'",
        "--durations=0",
        "-vv",  # with -q, a line per test in the log; durations under 5 ms stay hidden (0 s)
        "--cov-context=test",
        "--cov-report=",
        *(f"--cov={p}" for p in PACKAGES),
        *(f"tests/{name}.py" for name in CORE),
    ]
    env = {**os.environ, "COVERAGE_FILE": str(WORK / "coverage")}
    with open(WORK / "durations.log", "w") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return done.returncode


def _durations() -> dict[str, float]:
    seconds: dict[str, float] = collections.Counter()
    pattern = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S.*)$")
    for line in (WORK / "durations.log").read_text().splitlines():
        if match := pattern.match(line):
            seconds[match.group(2).strip()] += float(match.group(1))
    return seconds


def _lines() -> dict[str, set[tuple[str, int]]]:
    import coverage

    data = coverage.CoverageData(str(WORK / "coverage"))
    data.read()
    lines = collections.defaultdict(set)  # test node id -> {(source file, line)}
    for source in data.measured_files():
        for line, contexts in data.contexts_by_lineno(source).items():
            for context in filter(None, contexts):
                lines[context.rsplit("|", 1)[0]].add((source, line))
    return lines


def select() -> int:
    lines, seconds = _lines(), _durations()
    every = set().union(*lines.values())
    chosen, covered = [], set()
    # Ties go to the first node id in order, so the list is the same from the same measurement.
    candidates = sorted(lines)
    while covered != every:
        best = max(candidates, key=lambda t: len(lines[t] - covered) / (seconds.get(t, 0) + 0.05))
        chosen.append(best)
        covered |= lines[best]
    print(HEADER + "\n".join(sorted(chosen)))
    per_package = collections.Counter(_package(s) for s, _ in every)
    print(
        f"{len(chosen)} of {len(lines)} tests, {sum(seconds.get(t, 0) for t in chosen):.0f} of "
        f"{sum(seconds.values()):.0f} test-seconds, run all {len(every)} lines "
        f"({', '.join(f'{p} {n}' for p, n in sorted(per_package.items()))})",
        file=sys.stderr,
    )
    return 0


def _package(source: str) -> str:
    parts = Path(source).parts
    return next((p for p in reversed(parts) if p in PACKAGES), "?")


if __name__ == "__main__":
    commands = {"measure": measure, "select": select}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python {sys.argv[0]} measure|select")
    sys.exit(commands[sys.argv[1]]())
