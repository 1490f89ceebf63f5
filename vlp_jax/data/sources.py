"""Random-access data sources by name. Today: the built-in synthetic shapes world."""
from __future__ import annotations

import ml_collections

from vlp_jax.config import DATA_SOURCES
from vlp_jax.data.synthetic import ShapesWorld, ShapesWorldConfig


class DataError(ValueError):
    """A problem with the data the user pointed at; one sentence naming it."""


def shapes_world_config(data: ml_collections.ConfigDict) -> ShapesWorldConfig:
    return ShapesWorldConfig(
        image_size=int(data.image_size),
        captions_per_image=int(data.captions_per_image),
        caption_noise=float(data.caption_noise),
        detail=str(data.detail),
        train_size=int(data.train_size),
        val_size=int(data.val_size),
        test_size=int(data.test_size),
    )


def build_source(config: ml_collections.ConfigDict, split: str) -> ShapesWorld:
    """The data set `config.data.name` at `split` ('train', 'val' or 'test')."""
    if config.data.name != 'shapes':
        raise DataError(f'unknown data set data.name={config.data.name!r}; choose one of {DATA_SOURCES}.')
    return ShapesWorld(shapes_world_config(config.data), seed=int(config.seed), split=split)
