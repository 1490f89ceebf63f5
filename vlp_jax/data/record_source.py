"""Prepared records (data/records.py) as a pipeline source: encoded images, captions, optional labels.

Real data knows no ground truth, so `field_keys` is empty and no probe runs. Images
stay encoded here; the tf.data graph decodes them (data/tf_augment.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlp_jax.config import key, positive_int
from vlp_jax.data.errors import DataError
from vlp_jax.data.records import RecordSet, decode_record, read_index
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.registry import SOURCES

# prepare's formats whose texts are captions of their image (None: a table or tar shards), which this source reads.
CAPTION_FORMATS = (None, 'retrieval', 'coco_karpathy')


@dataclasses.dataclass(frozen=True)
class RecordsSettings:
    """Prepared records (`python -m vlp_jax.data.prepare`): the training folder and what evaluates."""

    path: str = key('', "the training folder: prepare's OUTPUT_DIR")
    eval_path: str = key('', "a prepared folder to evaluate on ('' = hold out the last test_size records of path)")
    test_size: int = key(1000, 'records of path held out for evaluation when eval_path is empty', check=positive_int)


class RecordSource(Source):
    """Random access to a prepared folder, or to a slice of it (`positions`: record numbers in order)."""

    encoded = True  # 'image_bytes', not 'image'

    def __init__(self, directory: str, positions: Sequence[int] | None = None):
        self.records = RecordSet(directory)
        task = self.records.index.get('task_format')
        if task not in CAPTION_FORMATS:  # its texts are statements, questions ...: the task's own source reads it
            raise DataError(
                f'{directory!r} was prepared with --format {task}; read it with data.name=records_{task}, not records.'
            )
        self.positions = np.arange(len(self.records)) if positions is None else np.asarray(positions, np.int64)
        self.class_names = tuple(self.records.class_names or ())
        self.name = directory

    def __len__(self) -> int:
        return len(self.positions)

    def raw(self, indices: np.ndarray) -> list[bytes]:
        return self.records.raw(self.positions[np.asarray(indices, np.int64)])

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        """'image_bytes' [B] encoded images, 'captions' B lists, 'label' int [B] (-1 where a record has none)."""
        records = [decode_record(data) for data in self.raw(indices)]
        return {
            'image_bytes': [record.image for record in records],
            'captions': [record.captions for record in records],
            'label': np.asarray([-1 if record.label is None else record.label for record in records], np.int64),
            'ids': [record.id for record in records],
            'fields': {},
        }


def split_positions(total: int, held_out: int, split: str) -> np.ndarray:
    """Record numbers of `split` when the last `held_out` records are the evaluation slice."""
    if not 0 < held_out < total:
        raise DataError(
            f'cannot hold out data.records.test_size={held_out} of {total} prepared records for evaluation; '
            'lower data.records.test_size or give a separate set with data.records.eval_path.'
        )
    return np.arange(total - held_out) if split == 'train' else np.arange(total - held_out, total)


@SOURCES.register('records')
class RecordsPlugin(SourcePlugin):
    """Prepared folders. Training reads `path`; evaluation reads `eval_path` when given (the same path
    evaluates in-sample), else the last `test_size` records of `path`, which training then leaves out.
    `where` in an eval spec names any other prepared folder, read whole."""

    Settings = RecordsSettings
    needs_tensorflow = True  # encoded images: the tf.data graph decodes them

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        settings = self.settings
        if where:
            return RecordSource(where)
        if not settings.path:
            raise DataError(
                'data.name=records needs data.records.path: the OUTPUT_DIR of `python -m vlp_jax.data.prepare`.'
            )
        if settings.eval_path:
            return RecordSource(settings.eval_path if split != 'train' else settings.path)
        total = int(read_index(settings.path)['records'])
        return RecordSource(settings.path, split_positions(total, settings.test_size, split))

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        source = self.open('test')
        sets = [('retrieval', '', '')]
        if source.class_names:
            sets.append(('classification', '', os.path.basename(os.path.normpath(source.name))))
        return tuple(sets)
