"""Random-access data sources by name, and the protocol the pipeline reads. Today: the shapes world."""

from __future__ import annotations

from typing import Any, Protocol

import ml_collections
import numpy as np

from vlp_jax.config import DATA_SOURCES
from vlp_jax.data.synthetic import ShapesWorld, ShapesWorldConfig
from vlp_jax.data.synthetic_source import ShapesSource


class DataError(ValueError):
    """A problem with the data the user pointed at; one sentence naming it."""


class Source(Protocol):
    """What the pipeline needs from a data set: random access by index, in batches.

    `batch(indices)` returns 'image' uint8 [B, H, W, 3], 'captions' (B lists of C
    strings), 'probes' {key: array} for each of `probe_keys` (batch-spec probe keys;
    caption probes carry a caption axis [B, C, ...]) and optionally 'flip_sensitive'
    bool [B, C] (captions a horizontal flip would make false).
    """

    probe_keys: tuple[str, ...]

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> dict[str, Any]: ...


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


def build_source(config: ml_collections.ConfigDict, split: str) -> ShapesSource:
    """The data set `config.data.name` at `split` ('train', 'val' or 'test')."""
    if config.data.name != 'shapes':
        raise DataError(f'unknown data set data.name={config.data.name!r}; choose one of {DATA_SOURCES}.')
    return ShapesSource(ShapesWorld(shapes_world_config(config.data), seed=int(config.seed), split=split))
