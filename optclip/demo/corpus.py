"""The demo's training text: a frozen snapshot of optclip's own sources and documentation.

Shipped with the package (``corpus.txt.gz``), so the demo trains on the same
characters on every Python version and machine, with no download. Python code
with docstrings and English prose, about 0.47M characters.

Rebuild the snapshot from a checkout (only when the demo's text should change,
since it moves every number the demo prints)::

    python -m optclip.demo.corpus /path/to/optclip
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

PATH = Path(__file__).with_name("corpus.txt.gz")

# The snapshot's parts, in this order: prose first, code after.
_PARTS = ("README.md", "docs/*.md", "optclip/**/*.py", "examples/*.py", "benchmarks/*.py")


def text(max_chars: int | None = None) -> str:
    """The snapshot's text, or its first ``max_chars`` characters.

    Args:
      max_chars: how many characters to return; all of them if ``None``.

    Returns:
      The text.
    """
    with gzip.open(PATH, "rt", encoding="utf-8") as f:
        out = f.read()
    return out if max_chars is None else out[:max_chars]


def build(root: Path) -> str:
    """Concatenates the files of a checkout in the snapshot's fixed order.

    Args:
      root: the repository's root folder.

    Returns:
      The text.
    """
    files: list[Path] = []
    for pattern in _PARTS:
        files.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    return "".join(p.read_text(encoding="utf-8") for p in files)


def write(text_: str, path: Path = PATH) -> None:
    """Writes ``text_`` gzipped with a zero timestamp, so equal text gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(text_.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m optclip.demo.corpus REPOSITORY_ROOT")
    write(build(Path(sys.argv[1])))
    print(f"{PATH} ({len(text()):,} characters)")
