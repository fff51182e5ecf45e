"""Repository-wide pytest settings."""

import os

import pytest

# Notebooks executed by `pytest --nbmake` run their short configuration.
os.environ.setdefault("OPTCLIP_FAST", "1")

# The longest notebook (30 s of compiles on 2 cores) runs in the slow tier, which CI also runs;
# the other two run by default.
SLOW_NOTEBOOKS = ("acclip_vs_adam.ipynb",)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_NOTEBOOKS:
            item.add_marker(pytest.mark.slow)
