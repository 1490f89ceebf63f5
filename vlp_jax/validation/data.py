"""What the input pipeline is asked for: the data set and eval sets, and how batches are sampled."""

from __future__ import annotations

import ml_collections

from vlp_jax.config import ConfigError, _require

SAMPLERS = ('random', 'grit')
SAMPLING_SCOPES = ('global', 'local')


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
