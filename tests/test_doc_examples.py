"""Every example a user can copy runs as shown: each module's doctests, and each Python block of
README.md and docs/ (a page's blocks in order, in one namespace, as a reader pastes them).

A Python block followed directly by a ```text block is an example with its output: what it
prints must be that text. A block preceded by ``<!-- file: PATH -->`` is a copy of a file in the
repository: it must equal the file, and is not run here (the file's own test runs it).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import optclip

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `optclip.demo.__main__` runs the demo when imported; its doctest-free text is tested by
# tests/test_demo.py.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(optclip.__path__, "optclip.")
    if not m.name.endswith("__main__")
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", flags=re.M | re.S)
# A fenced block right after `<!-- file: PATH -->` (PATH relative to the repository root) shows
# that file whole; the fence may carry a language and must be longer than any backtick run inside.
FILE_BLOCK = re.compile(
    r"^<!-- file: (?P<path>\S+) -->\n(?P<fence>`{3,})[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    flags=re.M | re.S,
)


def blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, expected output or None) for each runnable Python block of a page."""
    fences = list(FENCE.finditer(text))
    copies = {m.start("fence") for m in FILE_BLOCK.finditer(text)}
    found = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python" or fence.start() in copies:
            continue
        output = None
        after = fences[i + 1] if i + 1 < len(fences) else None
        if after is not None and after.group(1) == "text":
            if not text[fence.end() : after.start()].strip():
                output = after.group(2)
        found.append((text.count("\n", 0, fence.start()) + 1, fence.group(2), output))
    return found


@pytest.mark.parametrize("name", MODULES)
def test_doctests_of_every_module(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_the_package_has_doctests_to_run():
    # The test above passes on a module without examples; most public modules have one.
    finder = doctest.DocTestFinder()
    found = [t for m in MODULES for t in finder.find(importlib.import_module(m)) if t.examples]
    assert len(found) >= 25, [t.name for t in found]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_of_every_page_run(page):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code, output in blocks(page.read_text()):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as error:
                pytest.fail(f"{page.name}, the block at line {line}: {error!r}")
        if output is not None:
            assert printed.getvalue().split() == output.split(), f"{page.name}:{line}"


def test_the_runner_reads_outputs_and_skips_file_copies():
    text = (
        "```python\nprint(1)\n```\n\n```text\n1\n```\n"
        "<!-- file: examples/x.py -->\n```python\nraise SystemExit\n```\n"
        "```python\nx = 2\n```\n"
    )
    assert [(code, out) for _, code, out in blocks(text)] == [
        ("print(1)\n", "1\n"),
        ("x = 2\n", None),
    ]


def test_files_shown_in_the_docs_are_identical_to_the_files():
    checked, stale = [], []
    for page in PAGES:
        text = page.read_text()
        copies = list(FILE_BLOCK.finditer(text))
        assert len(copies) == text.count("<!-- file: "), (
            f"{page.name}: a `<!-- file: PATH -->` line not followed by a fenced code block"
        )
        for block in copies:
            path = ROOT / block["path"]
            assert path.is_file(), f"{page.name} shows {block['path']}, which does not exist"
            checked.append(block["path"])
            if block["body"] != path.read_text():
                stale.append(f"{page.name}: {block['path']}")
    assert "examples/nnx_sharded.py" in checked
    assert not stale, f"docs blocks that differ from their files (copy the file in): {stale}"
