"""`validate_config`: the top-level keys, the batch and mesh arithmetic, and the order the subject checks run in.

The order matters: cheap checks first, then those that build the model's shapes or read files.
"""

from __future__ import annotations

import ml_collections

from vlp_jax.config import DATA_SOURCES, ConfigError, _positive_int, _require, mesh_shape
from vlp_jax.models.layers import REMAT_POLICIES
from vlp_jax.validation.data import validate_data, validate_sampling
from vlp_jax.validation.model import validate_model, validate_optim
from vlp_jax.validation.regulators import validate_loss

CAPTION_DETAILS = ('coarse', 'mixed', 'fine')


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
