"""The numerical functions optclip's transforms are made of, for users who build their own.

Every function here keeps the numerics rule (``docs/numerics.md``): a finite input of any size
gives a finite result, and a non-finite input is never hidden. The optimizers and transforms are
at the top level (``optclip.acclip``, ``optclip.clip_by_global_norm``, ...); these were there
too before 0.2.0 and still resolve there, with a ``DeprecationWarning``.
"""

from optclip._acclip_threshold import alpha_moment_update
from optclip._coordinate_clip import coordinate_clip
from optclip._momentum import ema_update
from optclip._numerics import clip_factor, global_norm

__all__ = [
    "alpha_moment_update",
    "clip_factor",
    "coordinate_clip",
    "ema_update",
    "global_norm",
]
