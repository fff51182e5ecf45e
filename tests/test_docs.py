"""Every public name has an API entry; every docs page is in the site's navigation; every
file shown in the docs is the file itself."""

from __future__ import annotations

import re
from pathlib import Path

import optclip

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_public_name_is_documented():
    api = (DOCS / "api.md").read_text()
    entries = set(re.findall(r"^::: (optclip\.[\w.]+)$", api, flags=re.M))
    submodules = {"diagnostics", "theory", "problems"}
    missing = [n for n in optclip.__all__ if n not in submodules and f"optclip.{n}" not in entries]
    for sub in ("theory", "problems"):
        names = getattr(optclip, sub).__all__
        missing += [f"{sub}.{n}" for n in names if f"optclip.{sub}.{n}" not in entries]
    missing += [
        f"diagnostics.{n}"
        for n in optclip.diagnostics.__all__
        if f"optclip.diagnostics.{n}" not in entries
    ]
    assert not missing, f"no API entry in docs/api.md for: {missing}"


def test_every_page_is_in_the_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    pages = {p.name for p in DOCS.glob("*.md")}
    absent = sorted(p for p in pages if p not in nav)
    assert not absent, f"docs pages missing from mkdocs.yml nav: {absent}"


# A fenced block right after `<!-- file: PATH -->` (PATH relative to the repository root) shows
# that file whole; the fence may carry a language and must be longer than any backtick run inside.
FILE_BLOCK = re.compile(
    r"^<!-- file: (?P<path>\S+) -->\n(?P<fence>`{3,})[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    flags=re.M | re.S,
)


def test_files_shown_in_the_docs_are_identical_to_the_files():
    pages = [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
    checked, stale = [], []
    for page in pages:
        text = page.read_text()
        blocks = list(FILE_BLOCK.finditer(text))
        assert len(blocks) == text.count("<!-- file: "), (
            f"{page.name}: a `<!-- file: PATH -->` line not followed by a fenced code block"
        )
        for block in blocks:
            path = DOCS.parent / block["path"]
            assert path.is_file(), f"{page.name} shows {block['path']}, which does not exist"
            checked.append(block["path"])
            if block["body"] != path.read_text():
                stale.append(f"{page.name}: {block['path']}")
    assert "examples/nnx_sharded.py" in checked
    assert not stale, f"docs blocks that differ from their files (copy the file in): {stale}"
