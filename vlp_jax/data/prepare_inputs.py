"""What `prepare` reads: CSV/TSV/JSONL tables or webdataset tar shards, as a list of image entries.

An entry is one image and all its captions, in input order (a table may list an image on
several rows; they merge into one entry). Entries name where the image bytes are (a
file, or an offset in a tar) instead of holding them, so the list is small and workers
read the bytes themselves. Text is read with `surrogateescape`, so a caption that is not
valid UTF-8 reaches the checks (and is counted) instead of stopping the reading.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import tarfile
from typing import Any

from vlp_jax.data.errors import DataError

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif')
TABLE_SUFFIXES = {'.csv': ',', '.tsv': '\t'}
TEXT_ERRORS = 'surrogateescape'  # undecodable bytes survive reading as lone surrogates


@dataclasses.dataclass
class Entry:
    key: str  # the record id: the image path as written, or 'shard.tar/key'
    image: tuple  # ('file', path) | ('tar', tar_path, offset, size) | ('missing',)
    captions: list[Any] = dataclasses.field(default_factory=list)  # str (may hold surrogates), or None
    label: Any = None  # as written; checked by the writer

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def read_entries(input_path: str) -> list[Entry]:
    """All entries of a .csv/.tsv/.jsonl file or a folder of webdataset .tar shards, in input order."""
    if os.path.isdir(input_path):
        return _webdataset_entries(input_path)
    if not os.path.isfile(input_path):
        raise DataError(
            f'input {input_path!r} does not exist; pass a .csv, .tsv or .jsonl file or a folder of .tar shards.'
        )
    suffix = os.path.splitext(input_path)[1].lower()
    if suffix in TABLE_SUFFIXES:
        rows = _table_rows(input_path, TABLE_SUFFIXES[suffix])
    elif suffix == '.jsonl':
        rows = _jsonl_rows(input_path)
    else:
        raise DataError(
            f'input {input_path!r} is not a .csv, .tsv or .jsonl file nor a folder of webdataset .tar shards.'
        )
    return _merge_rows(rows, os.path.dirname(os.path.abspath(input_path)))


def _table_rows(path: str, delimiter: str) -> list[dict[str, Any]]:
    with open(path, encoding='utf-8', errors=TEXT_ERRORS, newline='') as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [name for name in ('image', 'caption') if name not in columns]
        if missing:
            raise DataError(
                f'{path} has no {missing[0]!r} column (it has {columns}); name the columns image,caption[,label].'
            )
        return [dict(row) for row in reader]


def _jsonl_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, 'rb') as handle:
        for number, line in enumerate(handle, 1):
            text = line.decode('utf-8', errors=TEXT_ERRORS).strip()
            if not text:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f'{path} line {number} is not JSON ({error.msg}); fix or remove that line.') from None
            if not isinstance(row, dict) or 'image' not in row or 'caption' not in row:
                raise DataError(f'{path} line {number} needs the keys "image" and "caption" (and optionally "label").')
            rows.append(row)
    return rows


def _merge_rows(rows: list[dict[str, Any]], base_dir: str) -> list[Entry]:
    """One entry per distinct image path, captions in row order; a caption may be a list of captions."""
    entries: dict[str, Entry] = {}
    for row in rows:
        image = str(row['image'] or '')
        path = image if os.path.isabs(image) else os.path.join(base_dir, image)
        entry = entries.get(path)
        if entry is None:
            entry = entries[path] = Entry(key=image, image=('file', path))
        captions = row['caption']
        entry.captions.extend(captions if isinstance(captions, list) else [captions])
        label = row.get('label')
        if label not in (None, ''):
            entry.label = label if entry.label is None or entry.label == label else 'conflicting'
    return list(entries.values())


def _webdataset_entries(folder: str) -> list[Entry]:
    """img2dataset's layout: in each .tar, KEY.jpg (or another image type) with KEY.txt and/or KEY.json."""
    shards = sorted(name for name in os.listdir(folder) if name.endswith('.tar'))
    if not shards:
        raise DataError(f'folder {folder!r} holds no .tar shards; pass a folder of webdataset shards or a table file.')
    entries = []
    for shard in shards:
        path = os.path.join(folder, shard)
        grouped: dict[str, Entry] = {}
        try:
            with tarfile.open(path, 'r:') as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, _, extension = member.name.rpartition('.')
                    extension = extension.lower()
                    entry = grouped.setdefault(key, Entry(key=f'{shard}/{key}', image=('missing',)))
                    if extension in IMAGE_EXTENSIONS:
                        entry.image = ('tar', path, member.offset_data, member.size)
                    elif extension == 'txt':
                        text = archive.extractfile(member).read().decode('utf-8', errors=TEXT_ERRORS)
                        entry.captions = [text]
                    elif extension == 'json':
                        caption, entry.label = _json_fields(archive.extractfile(member).read())
                        entry.captions = entry.captions or [caption]
        except tarfile.TarError as error:
            raise DataError(f'{path} is not a readable tar file ({error}); remove or re-create it.') from None
        entries.extend(grouped.values())
    return entries


def _json_fields(data: bytes) -> tuple[str | None, Any]:
    """(caption, label) from img2dataset's per-sample JSON; None where absent or unreadable."""
    try:
        fields = json.loads(data.decode('utf-8', errors=TEXT_ERRORS))
    except json.JSONDecodeError:
        return None, None
    if not isinstance(fields, dict):
        return None, None
    caption = fields.get('caption')
    return (caption if isinstance(caption, str) else None), fields.get('label')
