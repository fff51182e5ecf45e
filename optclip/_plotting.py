"""The one place that sets up matplotlib: an optional extra, never imported by ``import optclip``.

The diagnostics' plots, the demo, the benchmarks and the examples all draw
through :func:`pyplot` and save through :func:`save`, so they share one
backend choice (``Agg`` when no display is set, for headless machines and CI)
and one style.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` in the package's style; an ``ImportError`` says what to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'optclip[plot]'") from e
    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use(STYLE)
    return plt


def available() -> bool:
    """Whether matplotlib can be imported (scripts skip their plot without it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save(fig: Figure, path: str | Path) -> Path:
    """Saves ``fig`` to ``path`` (creating its folder), closes it, and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
