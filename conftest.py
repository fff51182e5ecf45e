"""Repository-wide pytest settings."""

import os

# Notebooks executed by `pytest --nbmake` run their short configuration.
os.environ.setdefault("OPTCLIP_FAST", "1")
