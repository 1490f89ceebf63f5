"""Prepared records: the byte layout of one record, the index file, and random access by index.

`python -m vlp_jax.data.prepare` writes a folder of array_record shards plus `index.json`;
training and evaluation read them back here (no TensorFlow: decoding happens in the
tf.data graph, see data/tf_augment.py). No pickle: a record is

    b'VLPR' | header length (uint32, little-endian) | header (UTF-8 JSON) | image bytes

where the header is `{"id": str, "captions": [str, ...], "format": "jpeg"|"png"|..., "label": int}`
("label" only in labelled sets) and the image bytes are the file as it was given (JPEG,
PNG, WebP, GIF or BMP: the formats tf.io.decode_image reads); `prepare` re-encodes any other
format as PNG, so one decode op serves all.

Records of a fine-tuning task (`prepare --format`, data/prepare_tasks.py) add to the header
`"fields"` (the record's own: its `image_id`), `"caption_fields"` (one dict per caption, in caption
order: a label, a box and proposals, a question id and answers) and, for a second image (NLVR2's
right one), `"image1": {"format": str, "bytes": int}`: those are the last bytes of the record, after
the first image's. A header without them is a plain image-caption record, read as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

from vlp_jax.data.errors import DataError

MAGIC = b'VLPR'
_HEADER_LEN = struct.Struct('<I')
INDEX_FILE = 'index.json'
INDEX_FORMAT = 'vlp_jax records v1'
SHARD_SUFFIX = '.array_record'
DECODABLE_FORMATS = ('jpeg', 'png', 'webp', 'gif', 'bmp')  # what tf.io.decode_image reads
WRITER_OPTIONS = 'group_size:1'  # one record per chunk: random access reads one record


@dataclasses.dataclass
class Record:
    id: str
    captions: list[str]
    image: bytes  # encoded, in `format`
    format: str
    label: int | None = None
    fields: dict[str, Any] | None = None  # a task record's own fields (image_id)
    caption_fields: list[dict[str, Any]] | None = None  # a task record's fields of each caption, in caption order
    image1: bytes | None = None  # a second image (NLVR2's right one), encoded, in `image1_format`
    image1_format: str = ''


def encode_record(record: Record) -> bytes:
    header: dict[str, Any] = {'id': record.id, 'captions': list(record.captions), 'format': record.format}
    if record.label is not None:
        header['label'] = int(record.label)
    if record.fields is not None:
        header['fields'] = record.fields
    if record.caption_fields is not None:
        assert len(record.caption_fields) == len(record.captions), 'one caption_fields dict per caption'
        header['caption_fields'] = list(record.caption_fields)
    second = b''
    if record.image1 is not None:
        header['image1'] = {'format': record.image1_format, 'bytes': len(record.image1)}
        second = record.image1
    text = json.dumps(header, ensure_ascii=False).encode('utf-8')
    return MAGIC + _HEADER_LEN.pack(len(text)) + text + record.image + second


def decode_record(data: bytes) -> Record:
    """The inverse of encode_record; a damaged header raises DataError."""
    start = len(MAGIC) + _HEADER_LEN.size
    if len(data) < start or data[: len(MAGIC)] != MAGIC:
        raise DataError('not a vlp_jax record (bad magic bytes)')
    (length,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(data[start : start + length].decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f'record header is damaged: {error}') from None
    images = bytes(data[start + length :])
    second = header.get('image1')
    image1, image1_format = None, ''
    if second is not None:
        cut = len(images) - int(second['bytes'])
        images, image1, image1_format = images[:cut], images[cut:], str(second['format'])
    return Record(
        id=str(header['id']),
        captions=list(header['captions']),
        image=images,
        format=str(header['format']),
        label=header.get('label'),
        fields=header.get('fields'),
        caption_fields=header.get('caption_fields'),
        image1=image1,
        image1_format=image1_format,
    )


def write_index(
    directory: str,
    shards: Sequence[dict[str, Any]],
    class_names: Sequence[str] | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """index.json: the shards in order with their record counts, and class names (labelled sets); atomic.
    `extra`: a task set's own keys (`task_format`, its answer list, ...); a task shard also lists `captions`,
    each record's caption count, so a source can enumerate (record, caption) examples without reading them."""
    index = {
        'format': INDEX_FORMAT,
        'records': int(sum(shard['records'] for shard in shards)),
        'shards': list(shards),
        'class_names': None if class_names is None else list(class_names),
        **(extra or {}),
    }
    temporary = os.path.join(directory, INDEX_FILE + '.tmp')
    with open(temporary, 'w', encoding='utf-8') as handle:
        json.dump(index, handle, indent=1, ensure_ascii=False)
    os.replace(temporary, os.path.join(directory, INDEX_FILE))


def read_index(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(path):
        raise DataError(
            f'{directory!r} holds no prepared records ({INDEX_FILE} is missing); '
            f'run `python -m vlp_jax.data.prepare INPUT {directory}` first.'
        )
    with open(path, encoding='utf-8') as handle:
        index = json.load(handle)
    if index.get('format') != INDEX_FORMAT:
        raise DataError(f'{path} is not a {INDEX_FORMAT!r} index; prepare the data again.')
    return index


class RecordSet:
    """Random access to the records of a prepared folder, by global index (shards in index order)."""

    def __init__(self, directory: str):
        from array_record.python import array_record_data_source  # data-side import only

        self.directory = directory
        self.index = read_index(directory)
        paths = [os.path.join(directory, shard['file']) for shard in self.index['shards'] if shard['records']]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise DataError(f'shard {missing[0]} listed in {INDEX_FILE} is missing; prepare the data again.')
        self._source = array_record_data_source.ArrayRecordDataSource(paths) if paths else None
        self.class_names: list[str] | None = self.index.get('class_names')
        assert self._source is None or len(self._source) == self.index['records'], 'index and shards disagree'

    def __len__(self) -> int:
        return int(self.index['records'])

    def raw(self, indices: Sequence[int]) -> list[bytes]:
        """The stored bytes of each record (decode_record reads them)."""
        return list(self._source.__getitems__([int(i) for i in indices]))

    def records(self, indices: Sequence[int]) -> list[Record]:
        return [decode_record(data) for data in self.raw(indices)]
