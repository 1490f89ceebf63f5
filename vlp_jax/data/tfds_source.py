"""TFDS data sets as pipeline sources, through `tfds.data_source` (array_record, random access).

Image features are read undecoded (`SkipDecoding`) so the tf.data graph decodes them
like prepared records; only the features named in config are read (`PartialDecoding`).
Nothing downloads at run time: a set that is not prepared stops with the command that
prepares it. TFDS is imported here only, and lazily.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from vlp_jax.config import key as config_key
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.registry import SOURCES


@dataclasses.dataclass(frozen=True)
class TfdsSettings:
    """A TFDS data set read through tfds.data_source (array_record, prepared beforehand: nothing downloads)."""

    name: str = config_key('coco_captions', 'the TFDS data set (data.name=tfds trains on it)')
    data_dir: str = config_key('', "TFDS's data_dir ('' = TFDS's default)")
    train_split: str = config_key('train', 'the split training reads')
    eval_split: str = config_key('test', 'the split evaluation reads')
    image_key: str = config_key('image', 'the image feature')
    caption_key: str = config_key('captions/text', 'the caption feature (a nested one as a/b)')
    label_key: str = config_key('', "a class-label feature, for zero-shot classification ('' = none)")


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = f' --data_dir={data_dir}' if data_dir else ''
    return f'prepare it once with: tfds build {name}{where} --file_format=array_record'


def _nested(example: dict, path: str) -> Any:
    value = example
    for part in path.split('/') if path not in example else [path]:
        value = value[part]
    return value


def _partial_spec(path: str) -> dict:
    """'captions/text' -> {'captions': {'text': True}}; a flat TFDS feature name stays flat."""
    spec: Any = True
    for part in reversed(path.split('/')):
        spec = {part: spec}
    return spec


def _strings(value: Any) -> list[str]:
    """A TFDS text value (bytes, str, arrays or lists of them) as a list of str."""
    if isinstance(value, (bytes, str, np.bytes_, np.str_)):
        items = [value]
    else:
        items = list(np.asarray(value, dtype=object).reshape(-1))
    return [item.decode('utf-8') if isinstance(item, bytes) else str(item) for item in items]


class TfdsSource(Source):
    """One split of a TFDS set: images (encoded) with captions and/or class labels."""

    encoded = True

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str,
        image_key: str,
        caption_key: str | None,
        label_key: str | None,
    ):
        import tensorflow_datasets as tfds

        data_dir = data_dir or None
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # DatasetNotFoundError and friends
            raise DataError(f'TFDS has no data set {name!r} ({type(error).__name__}); check data.tfds.name.') from None
        features = builder.info.features
        self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
        wanted = [key for key in (image_key, caption_key, label_key) if key]
        for key in wanted:
            try:
                _nested(features, key)
            except (KeyError, TypeError):
                raise DataError(
                    f'TFDS set {name!r} has no feature {key!r} (it has {sorted(features.keys())}); '
                    'set data.tfds.image_key / caption_key / label_key.'
                ) from None
        spec = {}
        for key in wanted:
            spec.update(_partial_spec(key) if key not in features else {key: True})
        decoders = tfds.decode.PartialDecoding(spec, decoders={image_key: tfds.decode.SkipDecoding()})
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
            length = len(self._source)
        except Exception as error:
            if not builder.is_prepared():
                where, hint = builder.data_dir_root, _prepare_hint(name, data_dir)
                raise DataError(f'TFDS data set {name!r} is not prepared in {where}; {hint}.') from None
            first = str(error).splitlines()[0]
            raise DataError(
                f'TFDS data set {name!r} split {split!r} cannot be read ({first}); {_prepare_hint(name, data_dir)}.'
            ) from None
        if length < 1:
            raise DataError(f'TFDS data set {name!r} split {split!r} is empty; choose another split.')
        self.class_names = tuple(_nested(features, label_key).names) if label_key else ()
        self.name = f'{name}:{split}'

    def __len__(self) -> int:
        return len(self._source)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        """'image_bytes' [B], 'captions' B lists (when captioned), 'label' int [B] (-1 when unlabelled)."""
        examples = [self._source[int(i)] for i in np.asarray(indices)]
        return {
            'image_bytes': [bytes(_nested(example, self.image_key)) for example in examples],
            'captions': [
                _strings(_nested(example, self.caption_key)) if self.caption_key else [] for example in examples
            ],
            'label': np.asarray(
                [int(_nested(example, self.label_key)) if self.label_key else -1 for example in examples], np.int64
            ),
            'fields': {},
        }


@SOURCES.register('tfds')
class TfdsPlugin(SourcePlugin):
    """TFDS sets; `where` in an eval spec is NAME[:SPLIT] of another TFDS set (same feature keys)."""

    Settings = TfdsSettings
    needs_tensorflow = True  # tfds.data_source, and encoded images

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        settings = self.settings
        name, _, where_split = where.partition(':')
        default_split = settings.train_split if split == 'train' else settings.eval_split
        label_key = (settings.label_key or 'label') if labels else ''
        return TfdsSource(
            name or settings.name,
            where_split or default_split,
            settings.data_dir,
            settings.image_key,
            settings.caption_key if captions else None,
            label_key or None,
        )

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        sets = [('retrieval', '', '')]
        if self.settings.label_key:
            name = os.path.basename(os.path.normpath(f'{self.settings.name}:{self.settings.eval_split}'))
            sets.append(('classification', '', name))
        return tuple(sets)
