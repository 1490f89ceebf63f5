"""Regulators: what turns similarities into the contrastive loss's log-weights and targets.

One protocol (base.py) serves the dense loss (the one-tile case, chain.py) and the chunked loss
(objectives/chunked/). Built-ins, each registered by name: 'srcl' (srcl.py), 'cosmo' (cosmo.py),
'smoothing' (smoothing.py). functional.py has them as functions of [B, B] matrices.
"""

from vlp_jax.objectives.regulators.base import (
    DIRECTIONS,
    MASKED_LOG_WEIGHT,
    MASKED_THRESHOLD,
    Regulator,
    RegulatorContext,
    Tile,
    TileTargets,
)
from vlp_jax.objectives.regulators.chain import RegulatorChain, build_regulators, regulation_of
from vlp_jax.objectives.regulators.cosmo import (
    DISCRIMINATOR,
    STATE_AT_THRESHOLD,
    STATE_CONVERTED,
    STATE_DROPPED,
    STATE_KEPT,
    Cosmo,
    CosmoSettings,
    conversion_stats,
)
from vlp_jax.objectives.regulators.functional import Pair, cosmo_regulation, smoothing_regulation, srcl_regulation
from vlp_jax.objectives.regulators.smoothing import Smoothing, SmoothingSettings
from vlp_jax.objectives.regulators.srcl import REFERENCE, Srcl, SrclSettings, srcl_alpha, srcl_log_s, srcl_weight_stats

__all__ = [
    'DIRECTIONS',
    'DISCRIMINATOR',
    'MASKED_LOG_WEIGHT',
    'MASKED_THRESHOLD',
    'REFERENCE',
    'STATE_AT_THRESHOLD',
    'STATE_CONVERTED',
    'STATE_DROPPED',
    'STATE_KEPT',
    'Cosmo',
    'CosmoSettings',
    'Pair',
    'Regulator',
    'RegulatorChain',
    'RegulatorContext',
    'Smoothing',
    'SmoothingSettings',
    'Srcl',
    'SrclSettings',
    'Tile',
    'TileTargets',
    'build_regulators',
    'conversion_stats',
    'cosmo_regulation',
    'regulation_of',
    'smoothing_regulation',
    'srcl_alpha',
    'srcl_log_s',
    'srcl_regulation',
    'srcl_weight_stats',
]
