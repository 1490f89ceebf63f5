"""Data sources: the `Source` a pipeline or an evaluator reads, and the registered plug-in that opens one.

A registered source plug-in (registry SOURCES, named by `data.name` and in `eval.sets`) gets
its typed settings (`data.<name>`) and a `SourceContext`, and opens splits: 'train' for the
pipeline, 'test' (or 'val') for evaluation. `where` is the plug-in's own way of naming
another set in an eval spec (a folder, a TFDS name, a view of the world); '' is the run's own.
Built-ins: 'shapes' (data/synthetic_source.py), 'records' (data/record_source.py), 'tfds'
(data/tfds_source.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlp_jax.data.errors import DataError

__all__ = ['DataError', 'Source', 'SourceContext', 'SourcePlugin']


class Source:
    """Random access to one split, in batches: what the pipeline and the evaluators read.

    `batch(indices)` returns 'image' uint8 [B, H, W, 3] or, when `encoded`, 'image_bytes' (B encoded
    images of any size); 'captions' (B lists of strings; an empty list marks a record that failed to
    load); 'fields' {key: values} for each of `field_keys` (declared batch-spec fields, data/batch.py:
    probes and task fields; a field of the caption carries a caption axis [B, C, ...]; an image field
    uint8 [B, H, W, 3]; a text field strings); optionally 'label' int [B] (a classification set's class,
    -1: none; `class_names` names them) and 'flip_sensitive' bool [B, C] (captions a horizontal flip
    would make false).
    """

    field_keys: tuple[str, ...] = ()
    encoded: bool = False
    class_names: tuple[str, ...] = ()  # a labelled set's classes
    prompt_templates: tuple[str, ...] = ()  # its own zero-shot prompts ('' = eval.prompt_templates)
    name: str = ''
    block: int = 1  # consecutive indices k*block .. (k+1)*block - 1 that belong in one batch (twins: 2)

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def caption_truth(self, examples: Mapping[str, Any]) -> np.ndarray | None:
        """bool [captions (image-major), images]: which caption is true of which image, if the set knows."""
        return None

    def ground_truth_probe(self) -> Any:
        """A probes.GroundTruthProbe for the train step when the set knows its false negatives, else None."""
        return None


@dataclasses.dataclass(frozen=True)
class SourceContext:
    """What a source may know about the run."""

    seed: int
    image_size: int  # the model's input side (a rendered world draws at it)


class SourcePlugin:
    """Base class of a registered data source; `Settings` is its config group `data.<name>`."""

    Settings: Any = None
    # Its sets need TensorFlow (encoded images the tf.data graph decodes, or TFDS): the numpy input
    # path (data/backend.py) refuses it in data.name and eval.sets.
    needs_tensorflow: bool = False

    def __init__(self, settings: Any, context: SourceContext):
        self.settings = settings
        self.context = context

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        """Split 'train' / 'val' / 'test' of the run's set, or of the set `where` names; `captions` and
        `labels` say what the reader needs (a source may skip reading the rest)."""
        raise NotImplementedError

    def train_size(self) -> int:
        """Examples in the training split (opening it: a missing or unprepared set raises DataError)."""
        return len(self.open('train'))

    def train_fields(self) -> tuple[str, ...]:
        """The declared batch fields its training split gives (Source.field_keys), for the checks."""
        return tuple(self.open('train').field_keys)

    def train_block(self) -> int:
        """The training split's Source.block, from the settings alone (for the checks)."""
        return 1

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        """What eval.sets 'default' means for this source: (evaluator, where, set name) triples; name ''
        reports under the bare keys (eval/retrieval/i2t_r1)."""
        return (('retrieval', '', ''),)

    def check(self) -> str | None:
        """One sentence on what is wrong with the settings (cheap, before anything is opened), or None."""
        return None
