"""Validation of a whole config: every value a user can get wrong, one sentence per mistake.

Called through `config.validate` after flags are parsed and before anything is compiled
or written; raises `ConfigError` naming the key and what to do.
"""

from vlp_jax.validation.data import SAMPLERS, SAMPLING_SCOPES, validate_data, validate_sampling
from vlp_jax.validation.fusion import validate_fusion_loss, validate_momentum
from vlp_jax.validation.model import validate_model, validate_optim
from vlp_jax.validation.regulators import (
    ALPHA_SHAPES,
    COSMO_MIN_BATCH,
    DISCRIMINATORS,
    REGULATORS,
    validate_loss,
)
from vlp_jax.validation.top_level import CAPTION_DETAILS, validate_config

__all__ = [
    'ALPHA_SHAPES',
    'CAPTION_DETAILS',
    'COSMO_MIN_BATCH',
    'DISCRIMINATORS',
    'REGULATORS',
    'SAMPLERS',
    'SAMPLING_SCOPES',
    'validate_config',
    'validate_data',
    'validate_fusion_loss',
    'validate_loss',
    'validate_model',
    'validate_momentum',
    'validate_optim',
    'validate_sampling',
]
