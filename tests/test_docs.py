"""Every public name has an API entry; every docs page is in the site's navigation."""

from __future__ import annotations

import re
from pathlib import Path

import optclip

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_public_name_is_documented():
    api = (DOCS / "api.md").read_text()
    entries = set(re.findall(r"^::: (optclip\.[\w.]+)$", api, flags=re.M))
    submodules = {"diagnostics", "theory", "problems", "numerics"}
    missing = [n for n in optclip.__all__ if n not in submodules and f"optclip.{n}" not in entries]
    for sub in ("theory", "problems", "numerics"):
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


def _empty_blocks(text: str) -> list[int]:
    """The line numbers of fenced blocks with nothing but whitespace inside."""
    empty, opened, body = [], None, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("```"):
            body.append(line)
        elif opened is None:
            opened, body = number, []
        else:
            if not "".join(body).strip():
                empty.append(opened)
            opened = None
    return empty


def test_no_page_has_an_empty_code_block():
    pages = [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]
    empty = [f"{p.name}:{n}" for p in pages for n in _empty_blocks(p.read_text())]
    assert not empty, f"empty code blocks at {empty}"
    assert _empty_blocks("a\n```python\n```\n```\nx\n```\n") == [2]
