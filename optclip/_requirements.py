"""The oldest versions of the core dependencies optclip works with, checked at import.

``pyproject.toml`` declares the same floors (a test keeps the two equal), and CI installs exactly
these versions on the oldest supported Python and runs the tests (``.ci/floor.txt``). A stack
below them fails here, naming the package, instead of with an ``AttributeError`` at the first
step.
"""

from __future__ import annotations

import importlib.metadata
import re

MINIMUM = {
    "jax": "0.6.0",
    "jaxlib": "0.6.0",
    "optax": "0.2.5",
    "chex": "0.1.87",
    "numpy": "1.26",
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"0.12.0.1"`` -> (0, 12, 0, 1), ``"2.1.0rc1"``
    -> (2, 1, 0); pre-release and local parts are ignored."""
    match = re.match(r"\d+(\.\d+)*", version.strip())
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def check(installed: dict[str, str | None] | None = None) -> None:
    """Raises ``ImportError`` for any core dependency below its floor.

    Args:
      installed: package -> version found (``None``: not installed); read from the
        installed distributions when not given.
    """
    if installed is None:
        installed = {name: _installed(name) for name in MINIMUM}
    too_old = [
        f"{name} {found} is installed; optclip needs {name}>={MINIMUM[name]}"
        for name, found in installed.items()
        if found is not None and release(found) < release(MINIMUM[name])
    ]
    if too_old:
        raise ImportError(
            "optclip: "
            + "; ".join(too_old)
            + ". Upgrade with: pip install --upgrade "
            + " ".join(f'"{name}>={MINIMUM[name]}"' for name in MINIMUM)
        )


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None  # a source build without metadata: nothing to compare
