"""Validation of a whole config: every value a user can get wrong, one sentence per mistake.

Called through `config.validate` after flags are parsed and before anything is compiled
or written; raises `ConfigError` naming the key and what to do.
"""

from __future__ import annotations

import ml_collections

from vlp_jax.config import (
    DATA_SOURCES,
    ConfigError,
    _positive_int,
    _require,
    mesh_shape,
    srcl_needs_reference,
)
from vlp_jax.models.layers import REMAT_POLICIES

CAPTION_DETAILS = ('coarse', 'mixed', 'fine')
SAMPLERS = ('random', 'grit')
SAMPLING_SCOPES = ('global', 'local')
REGULATORS = ('srcl', 'cosmo', 'smoothing')  # also the order they must be applied in
ALPHA_SHAPES = ('linear', 'cosine')
DISCRIMINATORS = ('cosine', 'itm')
COSMO_MIN_BATCH = 3  # an anchor needs a hardest and a second-hardest negative


def validate_config(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Checks values that would otherwise fail late (after compilation) or silently."""
    for key in (
        'total_steps',
        'batch_size',
        'log_every',
        'eval_every',
        'checkpoint_every',
        'keep_checkpoints',
        'data.image_size',
        'data.max_text_len',
        'data.captions_per_image',
        'eval.batch_size',
        'model.embed_dim',
        'nonfinite_patience',
    ):
        _positive_int(config, key)
    _require(config.seed >= 0, f'config key seed must be >= 0, got {config.seed}.')
    _require(config.warmup_steps >= 0, f'config key warmup_steps must be >= 0, got {config.warmup_steps}.')
    _require(config.lr > 0, f'config key lr must be > 0, got {config.lr}.')
    _require(config.weight_decay >= 0, f'config key weight_decay must be >= 0, got {config.weight_decay}.')
    _require(config.grad_clip >= 0, f'config key grad_clip must be >= 0 (0 disables clipping), got {config.grad_clip}.')
    _require(
        0.0 <= config.data.caption_noise <= 1.0,
        f'config key data.caption_noise must be in [0, 1], got {config.data.caption_noise}.',
    )
    _require(
        config.loss.form in ('softmax', 'sigmoid'),
        f"config key loss.form must be 'softmax' or 'sigmoid', got {config.loss.form!r}.",
    )
    _require(
        config.model.dtype in ('float32', 'bfloat16'),
        f"config key model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}.",
    )
    for key, policy in (
        ('model.remat', config.model.get('remat', 'none')),
        ('model.vision.remat', config.model.vision.get('remat', '') or 'none'),
        ('model.text.remat', config.model.text.get('remat', '') or 'none'),
    ):
        _require(
            policy in REMAT_POLICIES,
            f'config key {key} must be one of {tuple(REMAT_POLICIES)}, got {policy!r}.',
        )
    _require(
        config.data.flip in ('auto', 'always', 'never'),
        f"config key data.flip must be 'auto', 'always' or 'never', got {config.data.flip!r}.",
    )
    _require(
        config.data.name in DATA_SOURCES,
        f'config key data.name must be one of {DATA_SOURCES}, got {config.data.name!r}.',
    )
    _require(
        config.data.detail in CAPTION_DETAILS,
        f'config key data.detail must be one of {CAPTION_DETAILS}, got {config.data.detail!r}.',
    )
    low, high = config.data.crop_scale
    _require(
        0.0 < low <= high <= 1.0, f'config key data.crop_scale must satisfy 0 < low <= high <= 1, got {(low, high)}.'
    )
    _require(
        config.model.image_size == config.data.image_size,
        f'model.image_size ({config.model.image_size}) must equal data.image_size ({config.data.image_size}).',
    )
    _require(
        config.model.max_text_len == config.data.max_text_len,
        f'model.max_text_len ({config.model.max_text_len}) must equal data.max_text_len ({config.data.max_text_len}).',
    )
    validate_model(config)
    validate_optim(config)
    rerank_k = config.eval.get('rerank_k', 0)
    _require(
        isinstance(rerank_k, int) and rerank_k >= 0 and (rerank_k == 0 or config.model.get('kind') == 'fusion'),
        f"config key eval.rerank_k must be 0, or a positive int with model.kind='fusion' (ITM re-ranks), "
        f'got {rerank_k!r}.',
    )
    validate_loss(config)
    _require(
        config.loss.consistency_weight >= 0,
        f'config key loss.consistency_weight must be >= 0, got {config.loss.consistency_weight}.',
    )
    impl = config.loss.get('impl', 'dense')
    _require(impl in ('dense', 'chunked'), f"config key loss.impl must be 'dense' or 'chunked', got {impl!r}.")
    _require(
        impl == 'dense' or (config.model.get('kind', 'dual') == 'dual' and config.loss.negatives == 'global'),
        "config key loss.impl='chunked' supports dual encoders with global negatives for now "
        "(ALBEF's ITM choice and queue read [B, B] similarities); use loss.impl='dense'.",
    )
    _require(
        config.loss.negatives in ('global', 'local'),
        f"config key loss.negatives must be 'global' or 'local', got {config.loss.negatives!r}.",
    )
    _require(
        config.loss.negatives == 'global' or not tuple(config.loss.regulators),
        'loss.negatives=local cannot be combined with loss.regulators yet; use global negatives.',
    )
    validate_sampling(config)
    sizes = mesh_shape(config, device_count)
    batch_shards = sizes['data'] * sizes['fsdp']
    _require(
        config.batch_size % batch_shards == 0,
        f'config key batch_size ({config.batch_size}) must be divisible by the {batch_shards} batch shards '
        f'(mesh data x fsdp over {device_count} devices).',
    )
    local = int(config.mesh.get('local_shards', -1))
    _require(
        local == -1 or (local >= 1 and config.batch_size % local == 0),
        f'config key mesh.local_shards must be -1 (one per batch shard) or a positive divisor of batch_size '
        f'({config.batch_size}), got {local}.',
    )
    peak = config.get('peak_flops_per_device', 0.0)
    _require(
        isinstance(peak, (int, float)) and peak >= 0,
        f'config key peak_flops_per_device must be >= 0 (0 = the device table), got {peak!r}.',
    )
    micro = config.get('micro_batches', 1)
    _require(
        isinstance(micro, int) and micro >= 1 and config.batch_size % (batch_shards * micro) == 0,
        f"config key micro_batches must be a positive int dividing each batch shard's rows (batch_size "
        f'{config.batch_size} / {batch_shards} batch shards), got {micro!r}.',
    )
    _require(
        micro == 1 or config.model.kind == 'dual',
        "config key micro_batches > 1 (GradCache accumulation) needs model.kind='dual': ALBEF's ITM and MLM "
        'are not functions of the embeddings alone; set micro_batches=1.',
    )
    _require(
        config.eval.batch_size % batch_shards == 0,
        f'config key eval.batch_size ({config.eval.batch_size}) must be divisible by the {batch_shards} batch shards.',
    )
    from vlp_jax.layout import layout_problem  # builds the model's shapes: after the cheap checks

    problem = layout_problem(config, sizes)
    _require(problem is None, problem or '')
    validate_data(config)
    from vlp_jax.models.importers import ImportWeightsError, check_inits  # reads only the files' headers

    try:
        check_inits(config)
    except ImportWeightsError as error:
        raise ConfigError(str(error)) from error
    steps_per_epoch = config.data.train_size // config.batch_size
    _require(
        steps_per_epoch >= 1,
        f'config key data.train_size ({config.data.train_size}) is smaller than batch_size ({config.batch_size}).',
    )


def validate_data(config: ml_collections.ConfigDict) -> None:
    """eval.sets, and for real data the set itself: it must exist and be prepared (one line saying how);
    its training split's size becomes data.train_size, so every count derived from it holds."""
    from vlp_jax.data import eval_specs  # no TensorFlow: parsing only
    from vlp_jax.data.errors import DataError

    try:
        eval_specs.parse_all(config.eval.get('sets', ('default',)))
        if config.data.name != 'shapes':
            from vlp_jax.data.sources import train_size

            config.data.train_size = train_size(config)
    except DataError as error:
        raise ConfigError(str(error)) from None


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


def validate_fusion_loss(config: ml_collections.ConfigDict) -> None:
    """loss.weights, loss.itm, loss.mlm: ALBEF's terms (model.kind='fusion')."""
    from vlp_jax.objectives.matching import NEGATIVE_CHOICES

    loss = config.loss
    for term in ('itc', 'itm', 'mlm'):
        _require(loss.weights[term] >= 0, f'config key loss.weights.{term} must be >= 0, got {loss.weights[term]}.')
    _require(
        loss.itm.negatives in NEGATIVE_CHOICES,
        f'config key loss.itm.negatives must be one of {NEGATIVE_CHOICES}, got {loss.itm.negatives!r}.',
    )
    _require(
        0.0 < loss.mlm.mask_ratio < 1.0, f'config key loss.mlm.mask_ratio must be in (0, 1), got {loss.mlm.mask_ratio}.'
    )
    _require(
        loss.negatives == 'global',
        "config key loss.negatives must be 'global' with model.kind='fusion' "
        '(ITM chooses its negatives from the global batch).',
    )
    validate_momentum(config)


def validate_momentum(config: ml_collections.ConfigDict) -> None:
    """loss.momentum and loss.queue_size: ALBEF's momentum model (fusion models only)."""
    loss = config.loss
    momentum = loss.get('momentum', None)
    enabled = bool(momentum is not None and momentum.enabled)
    queue = int(loss.get('queue_size', 0))
    _require(
        queue >= 0 and (queue == 0 or enabled),
        f'config key loss.queue_size ({queue}) needs loss.momentum.enabled=True (the queue holds momentum features); '
        'set it to 0 or enable the momentum model.',
    )
    _require(
        queue % config.batch_size == 0,
        f'config key loss.queue_size ({queue}) must be a multiple of batch_size ({config.batch_size}).',
    )
    if not enabled:
        return
    _require(0.0 <= momentum.decay < 1.0, f'config key loss.momentum.decay must be in [0, 1), got {momentum.decay}.')
    _require(
        0.0 <= momentum.distill_alpha <= 1.0,
        f'config key loss.momentum.distill_alpha must be in [0, 1], got {momentum.distill_alpha}.',
    )
    _require(
        momentum.alpha_ramp_steps >= -1,
        f'config key loss.momentum.alpha_ramp_steps must be -1 (one epoch) or >= 0, got {momentum.alpha_ramp_steps}.',
    )
    _require(
        loss.form == 'softmax',
        "config key loss.form must be 'softmax' with loss.momentum.enabled (distillation targets are soft).",
    )
    _require(
        not loss.stop_grad_keys and loss.consistency_weight == 0,
        'config keys loss.stop_grad_keys and loss.consistency_weight are GRIT-VLP options that do not apply with '
        'loss.momentum.enabled (the momentum keys carry no gradient; candidates are not square); turn them off.',
    )


def validate_loss(config: ml_collections.ConfigDict) -> None:
    """The regulators: names, order, and each one's block (only the blocks of those selected)."""
    loss = config.loss
    regulators = tuple(loss.get('regulators', ()))
    for name in regulators:
        _require(
            name in REGULATORS, f'config key loss.regulators has unknown regulator {name!r}; choose from {REGULATORS}.'
        )
    _require(
        len(set(regulators)) == len(regulators), f'config key loss.regulators lists a regulator twice: {regulators}.'
    )
    ordered = tuple(name for name in REGULATORS if name in regulators)
    _require(
        regulators == ordered,
        f'config key loss.regulators must be in the order {ordered} '
        f'(weights, then converted targets, then smoothing), got {regulators}.',
    )
    _require(
        not {'cosmo', 'smoothing'} <= set(regulators),
        "config key loss.regulators has both 'cosmo' and 'smoothing'; COSMO smooths its own targets, "
        "so drop 'smoothing' and set loss.cosmo.eps.",
    )
    sigmoid = loss.form == 'sigmoid'
    if 'srcl' in regulators:
        srcl = loss.srcl
        for key in ('alpha_start', 'alpha_end'):
            _require(0.0 <= srcl[key] <= 1.0, f'config key loss.srcl.{key} must be in [0, 1], got {srcl[key]}.')
        _require(
            srcl.alpha_shape in ALPHA_SHAPES,
            f'config key loss.srcl.alpha_shape must be one of {ALPHA_SHAPES}, got {srcl.alpha_shape!r}.',
        )
        _require(
            srcl.alpha_decay_start >= 0,
            f'config key loss.srcl.alpha_decay_start must be >= 0, got {srcl.alpha_decay_start}.',
        )
        _require(
            srcl.alpha_decay_end >= -1,
            f'config key loss.srcl.alpha_decay_end must be >= 0 (or -1 = total_steps), got {srcl.alpha_decay_end}.',
        )
        _require(srcl.tau_w > 0, f'config key loss.srcl.tau_w must be > 0, got {srcl.tau_w}.')
        _require(0.0 <= srcl.w_min < 1.0, f'config key loss.srcl.w_min must be in [0, 1) (0 = off), got {srcl.w_min}.')
        _require(
            not srcl_needs_reference(config) or srcl.reference_checkpoint,
            'config key loss.srcl.reference_checkpoint is empty but the alpha schedule uses the reference '
            'model (alpha_start or alpha_end > 0); pass a reference run, e.g. '
            '--config.loss.srcl.reference_checkpoint=workdirs/reference, or set both alphas to 0.',
        )
    if 'cosmo' in regulators:
        cosmo = loss.cosmo
        _require(
            cosmo.discriminator in DISCRIMINATORS,
            f'config key loss.cosmo.discriminator must be one of {DISCRIMINATORS}, got {cosmo.discriminator!r}.',
        )
        if cosmo.discriminator == 'itm':
            _require(
                0.0 <= cosmo.low <= cosmo.high <= 1.0,
                'config keys loss.cosmo.low and loss.cosmo.high are ITM match probabilities with the itm '
                f'discriminator and must satisfy 0 <= low <= high <= 1, got low={cosmo.low}, high={cosmo.high}.',
            )
        else:
            _require(
                -1.0 <= cosmo.low <= cosmo.high <= 1.0,
                'config keys loss.cosmo.low and loss.cosmo.high are cosine '
                f'thresholds and must satisfy -1 <= low <= high <= 1, got low={cosmo.low}, high={cosmo.high}.',
            )
        _require(
            config.model.get('kind', 'dual') != 'fusion' or loss.itm.negatives == 'hardest',
            "config key loss.itm.negatives must be 'hardest' with loss.regulators 'cosmo' on a fusion model: "
            "MAFA's ITM negatives are the mined j1 or j2 (METHODS.md).",
        )
        _require(0.0 <= cosmo.eps <= 1.0, f'config key loss.cosmo.eps must be in [0, 1], got {cosmo.eps}.')
        _require(
            cosmo.smoothing_start_step >= -1,
            'config key loss.cosmo.smoothing_start_step must be >= 0 '
            f'(or -1 = the first step of epoch 1), got {cosmo.smoothing_start_step}.',
        )
        _require(
            bool(cosmo.reference_checkpoint),
            'config key loss.cosmo.reference_checkpoint is empty but the '
            'discriminator scores pairs with a frozen model; pass a trained run, e.g. '
            '--config.loss.cosmo.reference_checkpoint=workdirs/reference.',
        )
        _require(
            not (sigmoid and cosmo.eps > 0),
            "config key loss.cosmo.eps must be 0 with loss.form='sigmoid': "
            'the sigmoid loss treats every target > 0 as a positive, so smoothing would make all pairs positive.',
        )
        _require(
            config.batch_size >= COSMO_MIN_BATCH,
            f'config key batch_size must be >= {COSMO_MIN_BATCH} for COSMO (hardest and second-hardest negatives).',
        )
    if 'smoothing' in regulators:
        smoothing = loss.smoothing
        _require(0.0 <= smoothing.eps <= 1.0, f'config key loss.smoothing.eps must be in [0, 1], got {smoothing.eps}.')
        _require(
            smoothing.start_step >= -1,
            'config key loss.smoothing.start_step must be >= 0 '
            f'(or -1 = the first step of epoch 1), got {smoothing.start_step}.',
        )
        _require(
            not sigmoid,
            "config key loss.regulators has 'smoothing', which the sigmoid loss cannot take "
            "(it treats every target > 0 as a positive); use loss.form='softmax'.",
        )


def validate_sampling(config: ml_collections.ConfigDict) -> None:
    """sampling.*: 'random' or 'grit' with queue/search-space sizes that tile the global batch."""
    sampling = config.sampling
    _require(sampling.name in SAMPLERS, f'config key sampling.name must be one of {SAMPLERS}, got {sampling.name!r}.')
    _require(
        sampling.scope in SAMPLING_SCOPES,
        f'config key sampling.scope must be one of {SAMPLING_SCOPES}, got {sampling.scope!r}.',
    )
    if sampling.name == 'grit':
        from vlp_jax.sampling.grit import validate_grit  # jax-only module; imported here to keep this file light

        error = validate_grit(sampling.queue_size, sampling.search_space, config.batch_size)
        _require(error is None, str(error))
