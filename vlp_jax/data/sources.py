"""Random-access data sources by name, and the protocol the pipeline reads.

Three kinds: the built-in shapes world (with ground truth), prepared records
(`data.name=records`, data/record_source.py) and TFDS sets (`data.name=tfds`,
data/tfds_source.py). Splits of records: training reads `data.path`; evaluation reads
`data.eval_path` when given (the same path evaluates in-sample), else the last
`data.test_size` records of `data.path`, which training then leaves out.
"""

from __future__ import annotations

from typing import Any, Protocol

import ml_collections
import numpy as np

from vlp_jax.config import DATA_SOURCES
from vlp_jax.data.errors import DataError
from vlp_jax.data.synthetic import ShapesWorld, ShapesWorldConfig
from vlp_jax.data.synthetic_source import ShapesSource

__all__ = ['DataError', 'Source', 'build_source', 'shapes_world_config', 'train_size']


class Source(Protocol):
    """What the pipeline needs from a data set: random access by index, in batches.

    `batch(indices)` returns 'image' uint8 [B, H, W, 3] or, for sources with `encoded =
    True`, 'image_bytes' (B encoded images of any size); 'captions' (B lists of strings;
    an empty list marks a record that failed to load); 'probes' {key: array} for each of
    `probe_keys` (batch-spec probe keys; caption probes carry a caption axis [B, C, ...]);
    optionally 'label' int [B] (-1: none; `class_names` then names them) and
    'flip_sensitive' bool [B, C] (captions a horizontal flip would make false).
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


def records_source(data: ml_collections.ConfigDict, split: str):
    from vlp_jax.data.record_source import RecordSource, split_positions
    from vlp_jax.data.records import read_index

    if not data.path:
        raise DataError('data.name=records needs data.path: the OUTPUT_DIR of `python -m vlp_jax.data.prepare`.')
    if data.eval_path and split != 'train':
        return RecordSource(data.eval_path)
    if data.eval_path:
        return RecordSource(data.path)
    total = int(read_index(data.path)['records'])
    return RecordSource(data.path, split_positions(total, int(data.test_size), split))


def tfds_source(data: ml_collections.ConfigDict, split: str, captions: bool = True, labels: bool = False):
    from vlp_jax.data.tfds_source import TfdsSource

    tfds = data.tfds
    return TfdsSource(
        tfds.name,
        tfds.train_split if split == 'train' else tfds.eval_split,
        data.tfds_dir,
        tfds.image_key,
        tfds.caption_key if captions else None,
        (tfds.label_key or None) if labels else None,
    )


def build_source(config: ml_collections.ConfigDict, split: str) -> Source:
    """The data set `config.data.name` at `split` ('train', or 'val'/'test' for evaluation)."""
    name = config.data.name
    if name == 'shapes':
        return ShapesSource(ShapesWorld(shapes_world_config(config.data), seed=int(config.seed), split=split))
    if name == 'records':
        return records_source(config.data, split)
    if name == 'tfds':
        return tfds_source(config.data, split)
    raise DataError(f'unknown data set data.name={name!r}; choose one of {DATA_SOURCES}.')


def train_size(config: ml_collections.ConfigDict) -> int:
    """Examples in the training split (opens the set: a missing or unprepared one raises DataError)."""
    if config.data.name == 'shapes':
        return int(config.data.train_size)
    return len(build_source(config, 'train'))
