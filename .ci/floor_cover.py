"""Which test files the floor run (.ci/run, FLOOR_TESTS) can leave out without losing a line.

Run the candidate files on the floor stack with per-test coverage contexts, then this:

    python -m pytest -q -n auto -p no:cacheprovider -o addopts="-m 'not slow'" \\
        --cov=optclip --cov-context=test --cov-report= tests/test_a.py tests/test_b.py ...
    python .ci/floor_cover.py .coverage test_b.py,test_c.py

It prints, per test file, the lines of optclip it runs and how many of them no other file runs,
then the lines that leaving out the comma-separated files would lose (none, or the run keeps
them).
"""

from __future__ import annotations

import collections
import sys

import coverage


def main(path: str, leave_out: list[str]) -> int:
    data = coverage.CoverageData(path)
    data.read()
    lines = collections.defaultdict(set)  # test file -> {(source file, line)}
    for source in data.measured_files():
        for line, contexts in data.contexts_by_lineno(source).items():
            for context in filter(None, contexts):
                lines[context.split("::")[0]].add((source, line))
    every = set().union(*lines.values())
    print(f"{len(every)} lines of optclip run by {len(lines)} test files")
    for test, covered in sorted(lines.items()):
        others = set().union(*(v for k, v in lines.items() if k != test))
        print(f"  {test}: {len(covered)} lines, {len(covered - others)} no other file runs")
    dropped = [t for t in lines if any(t.endswith(name) for name in leave_out)]
    kept = set().union(*(v for k, v in lines.items() if k not in dropped))
    lost = sorted(every - kept)
    print(f"leaving out {dropped} loses {len(lost)} lines")
    for source, line in lost:
        print(f"  {source}:{line}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else []))
