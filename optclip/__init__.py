"""optclip: clipping, sign and normalized optimizers for JAX, as optax transformations.

Full optimizers (``acclip``, ``gclip``, ...) take the learning rate first and
return an :class:`optax.GradientTransformation`; the ``scale_by_*``,
``clip_*`` and ``normalize_*`` pieces are directions without a learning rate,
to be combined with :func:`optax.chain`.
"""

from optclip import _requirements

_requirements.check()

import warnings

from optclip import diagnostics, numerics, problems, theory
from optclip._acclip import ScaleByACClipState, scale_by_acclip
from optclip._acclip_threshold import AlphaMomentThresholdState, estimate_alpha_moment_threshold
from optclip._adagc import AdaGCState, adagc
from optclip._alias import (
    acclip,
    cclip,
    clip_momentum_sgd,
    clipped_gd,
    gclip,
    generalized_signsgd,
    normalized_gd,
    normalized_momentum_sgd,
)
from optclip._coordinate_clip import ClipCoordinatewiseState, clip_coordinatewise
from optclip._equivalence import ClippingEquivalent, adam_as_clipping
from optclip._global_clip import ClipByGlobalNormState, clip_by_global_norm
from optclip._grouping import group_small_leaves
from optclip._ingd import IngdResult, IngdStatus, ingd, ingd_oracle_bound
from optclip._lmo import LmoDims, dual_norm, lmo
from optclip._lmo_alias import gluon, muon, scion
from optclip._lmo_assign import default_lmo_norms
from optclip._lmo_transform import (
    LmoMomentumState,
    ScaleByLmoState,
    lmo_momentum,
    scale_by_lmo,
)
from optclip._momentum import EmaMomentumState, ema_momentum
from optclip._normalize import (
    NormalizeByGlobalNormState,
    ScaleByClipMomentumState,
    normalize_by_global_norm,
    scale_by_clip_momentum,
)
from optclip._record_norms import RecordNormsState, record_norms
from optclip._sharding import state_shardings
from optclip._sign import (
    RunningRmsState,
    normalize_by_running_rms,
    scale_by_generalized_sign,
    scale_by_sign,
)
from optclip._skip_step import SkipStepState, skip_step
from optclip._spam import ScaleBySpamState, scale_by_spam, spam
from optclip._spam_pieces import (
    ClipBySecondMomentState,
    ResetPeriodicallyState,
    ScaleByResetWarmupState,
    clip_by_second_moment,
    reset_periodically,
    scale_by_reset_warmup,
)
from optclip._statistics import clip_fraction, statistics
from optclip._stochastic_ingd import (
    StochasticIngdState,
    ingd_iterate,
    ingd_output_index,
    scale_by_stochastic_ingd,
    stochastic_ingd,
)
from optclip._version import __version__ as __version__
from optclip._zclip import ZClipState, zclip

__all__ = [
    # Submodule: measurement tools (noise tails, smoothness, sharpness, statistics).
    "diagnostics",
    # Submodule: hyperparameters from the theorems, and the weighted iterate average.
    "theory",
    # Submodule: test problems with known answers.
    "problems",
    # Submodule: the numerical functions the transforms are made of.
    "numerics",
    # Full optimizers.
    "acclip",
    "cclip",
    "clip_momentum_sgd",
    "clipped_gd",
    "gclip",
    "generalized_signsgd",
    "normalized_gd",
    "normalized_momentum_sgd",
    "spam",
    "stochastic_ingd",
    # Per-layer steps along a linear minimization oracle (LMO): Muon, Scion, Gluon.
    "gluon",
    "muon",
    "scion",
    "default_lmo_norms",
    "dual_norm",
    "lmo",
    "lmo_momentum",
    "scale_by_lmo",
    "LmoDims",
    # Spike-robust clipping, to chain in front of an optimizer (measured before Adam), and a
    # skip-step wrapper.
    "adagc",
    "skip_step",
    "zclip",
    # Nonsmooth: deterministic INGD and Stochastic INGD helpers.
    "ingd",
    "ingd_iterate",
    "ingd_oracle_bound",
    "ingd_output_index",
    "IngdResult",
    "IngdStatus",
    # Directions and pieces.
    "clip_by_global_norm",
    "clip_coordinatewise",
    "ema_momentum",
    "estimate_alpha_moment_threshold",
    "normalize_by_global_norm",
    "normalize_by_running_rms",
    "scale_by_acclip",
    "scale_by_clip_momentum",
    "scale_by_generalized_sign",
    "scale_by_sign",
    "scale_by_spam",
    "scale_by_stochastic_ingd",
    # SPAM's pieces.
    "clip_by_second_moment",
    "reset_periodically",
    "scale_by_reset_warmup",
    # Statistics.
    "clip_fraction",
    "record_norms",
    "statistics",
    # Layout: small leaves packed by dtype (fewer kernels per step).
    "group_small_leaves",
    # Sharding: where the state lives on a mesh (ZeRO stage 1 / FSDP).
    "state_shardings",
    # Adam as clipping.
    "ClippingEquivalent",
    "adam_as_clipping",
    # States.
    "AdaGCState",
    "AlphaMomentThresholdState",
    "ClipBySecondMomentState",
    "ClipByGlobalNormState",
    "ClipCoordinatewiseState",
    "EmaMomentumState",
    "LmoMomentumState",
    "NormalizeByGlobalNormState",
    "RecordNormsState",
    "ResetPeriodicallyState",
    "RunningRmsState",
    "ScaleByACClipState",
    "ScaleByClipMomentumState",
    "ScaleByLmoState",
    "ScaleByResetWarmupState",
    "ScaleBySpamState",
    "SkipStepState",
    "StochasticIngdState",
    "ZClipState",
]

# Helpers that lived at the top level before 0.2.0; they are in `optclip.numerics` now.
_MOVED = set(numerics.__all__)


def __getattr__(name: str) -> object:
    if name in _MOVED:
        warnings.warn(
            f"optclip.{name} moved to optclip.numerics.{name}; the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(numerics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
