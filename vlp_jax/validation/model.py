"""model.* and optim.*: checks that need the model's classes, or its parameter shapes."""

from __future__ import annotations

import ml_collections

from vlp_jax.config import ConfigError, _require
from vlp_jax.validation.fusion import validate_fusion_loss


def validate_model(config: ml_collections.ConfigDict) -> None:
    """model.*: tower variants, dropout, and sizes the towers can be built with."""
    from vlp_jax.models.text import TEXT_VARIANTS  # flax: imported only once flags are parsed
    from vlp_jax.models.vit import VIT_VARIANTS
    from vlp_jax.models.vlp import CUSTOM_VARIANT, MODEL_KINDS, model_config_from_dict

    for tower, variants in (('vision', VIT_VARIANTS), ('text', TEXT_VARIANTS)):
        block = config.model[tower]
        choices = (CUSTOM_VARIANT, *variants)
        _require(
            block.variant in choices,
            f'config key model.{tower}.variant must be one of {choices}, got {block.variant!r}.',
        )
        dropout = block.get('dropout', 0.0)
        _require(0.0 <= dropout < 1.0, f'config key model.{tower}.dropout must be in [0, 1), got {dropout}.')
    kind = config.model.get('kind', 'dual')
    _require(kind in MODEL_KINDS, f'config key model.kind must be one of {MODEL_KINDS}, got {kind!r}.')
    fusion_layers = config.model.text.get('fusion_layers', 0)
    _require(
        isinstance(fusion_layers, int) and fusion_layers >= 0 and (kind == 'fusion') == (fusion_layers > 0),
        f'config keys model.kind={kind!r} and model.text.fusion_layers={fusion_layers!r} disagree: '
        "'fusion' needs fusion_layers > 0 and 'dual' needs 0.",
    )
    if kind == 'fusion':
        validate_fusion_loss(config)
    else:
        momentum = config.loss.get('momentum', None)
        _require(
            not (momentum is not None and momentum.enabled) and config.loss.get('queue_size', 0) == 0,
            "config keys loss.momentum.enabled and loss.queue_size need model.kind='fusion' (ALBEF's momentum "
            'model); turn them off for a dual encoder.',
        )
    try:
        model_config_from_dict(config.model)
    except ValueError as error:
        raise ConfigError(f'config group model.* cannot be built: {error}; change those model keys.') from error


def validate_optim(config: ml_collections.ConfigDict) -> None:
    """optim.frozen and optim.lr_multipliers: valid regexes that match the model's param paths."""
    import jax

    from vlp_jax import optim
    from vlp_jax import state as state_lib

    group = config.get('optim') or {}
    if group.get('frozen', '') == '' and not group.get('lr_multipliers', ()):
        return  # the defaults: nothing to match, so no model shapes to build
    model = state_lib.create_model(config)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *state_lib.dummy_inputs(config))['params'])
    problem = optim.optim_problem(config, optim.param_names(params))
    _require(problem is None, problem or '')
