"""``python -m optclip.demo``: see :mod:`optclip.demo`."""

from optclip.demo import main

raise SystemExit(main())
