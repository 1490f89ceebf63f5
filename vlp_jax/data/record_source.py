"""Prepared records (data/records.py) as a pipeline source: encoded images, captions, optional labels.

Real data knows no ground truth, so `probe_keys` is empty and no probe runs. Images
stay encoded here; the tf.data graph decodes them (data/tf_augment.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlp_jax.data.errors import DataError
from vlp_jax.data.records import RecordSet, decode_record


class RecordSource:
    """Random access to a prepared folder, or to a slice of it (`positions`: record numbers in order)."""

    probe_keys: tuple[str, ...] = ()
    encoded = True  # 'image_bytes', not 'image'

    def __init__(self, directory: str, positions: Sequence[int] | None = None):
        self.records = RecordSet(directory)
        self.positions = np.arange(len(self.records)) if positions is None else np.asarray(positions, np.int64)
        self.class_names = self.records.class_names
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
            'probes': {},
        }


def split_positions(total: int, held_out: int, split: str) -> np.ndarray:
    """Record numbers of `split` when the last `held_out` records are the evaluation slice."""
    if not 0 < held_out < total:
        raise DataError(
            f'cannot hold out data.test_size={held_out} of {total} prepared records for evaluation; '
            'lower data.test_size or give a separate set with data.eval_path.'
        )
    return np.arange(total - held_out) if split == 'train' else np.arange(total - held_out, total)
