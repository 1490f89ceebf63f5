"""What `prepare` reads: CSV/TSV/JSONL tables or webdataset tar shards, as a list of image entries.

An entry is one image and all its captions, in input order (a table may list an image on
several rows; they merge into one entry). Entries name where the image bytes are (a
file, or an offset in a tar) instead of holding them, so the list is small and workers
read the bytes themselves; each caption keeps the line it came from, so the report can
name a dropped row. Text is read with `surrogateescape`, so a caption that is not
valid UTF-8 reaches the checks (and is counted) instead of stopping the reading.

Table formats are a table too (`TABLE_READERS`: file suffix -> reader of `Row`s), so a new
input format (another JSON layout, say) is one reader function and one entry there.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import tarfile
from collections.abc import Callable
from typing import Any

from vlp_jax.data.errors import DataError

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff')
TEXT_ERRORS = 'surrogateescape'  # undecodable bytes survive reading as lone surrogates


@dataclasses.dataclass
class Entry:
    key: str  # the record id: the image path as written, or 'shard.tar/key'
    image: tuple  # ('file', path) | ('tar', tar_path, offset, size) | ('missing',)
    captions: list[Any] = dataclasses.field(default_factory=list)  # str (may hold surrogates), or None
    label: Any = None  # as written; checked by the writer
    source: str = ''  # the input file it came from (the table, or the .tar), for the report
    lines: list[int | None] = dataclasses.field(default_factory=list)  # each caption's line in `source` (tar: None)
    # A fine-tuning task's entries (data/prepare_tasks.py) also have:
    image1: tuple = ()  # a second image, as `image` (NLVR2's right one)
    fields: dict = dataclasses.field(default_factory=dict)  # the record's own fields (image_id)
    caption_fields: list[dict] = dataclasses.field(default_factory=list)  # per caption: its fields or its problem
    problem: list = dataclasses.field(default_factory=list)  # [reason, detail]: the whole entry is skipped
    position: str = 'line'  # what `lines` count: 'line' (a table, JSONL) or 'row' (the items of a JSON list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Row:
    """One row of a table: its fields (`image`, `caption` (a string or a list), optional `label`) and its line."""

    fields: dict[str, Any]
    line: int | None = None


# suffix -> reader: path -> rows in file order (DataError for a file it cannot read). Add a format here.
TABLE_READERS: dict[str, Callable[[str], list[Row]]] = {}
INPUT_KINDS = 'a .csv, .tsv or .jsonl file or a folder of webdataset .tar shards'


def table_reader(*suffixes: str) -> Callable:
    """Registers a table reader for file suffixes ('.csv')."""

    def register(reader: Callable[[str], list[Row]]) -> Callable[[str], list[Row]]:
        TABLE_READERS.update({suffix: reader for suffix in suffixes})
        return reader

    return register


def read_entries(input_path: str) -> list[Entry]:
    """All entries of a table file (TABLE_READERS) or a folder of webdataset .tar shards, in input order."""
    if os.path.isdir(input_path):
        return _webdataset_entries(input_path)
    if not os.path.isfile(input_path):
        raise DataError(f'input {input_path!r} does not exist; pass {INPUT_KINDS}.')
    reader = TABLE_READERS.get(os.path.splitext(input_path)[1].lower())
    if reader is None:
        raise DataError(f'input {input_path!r} is not {INPUT_KINDS}.')
    return _merge_rows(reader(input_path), os.path.dirname(os.path.abspath(input_path)), os.path.basename(input_path))


def _table_rows(path: str, delimiter: str) -> list[Row]:
    with open(path, encoding='utf-8', errors=TEXT_ERRORS, newline='') as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [name for name in ('image', 'caption') if name not in columns]
        if missing:
            raise DataError(
                f'{path} has no {missing[0]!r} column (it has {columns}); name the columns image,caption[,label].'
            )
        rows, end = [], reader.line_num  # the line a row starts on: one after where the previous one ended
        for row in reader:
            rows.append(Row(dict(row), end + 1))
            end = reader.line_num
        return rows


@table_reader('.csv')
def csv_rows(path: str) -> list[Row]:
    return _table_rows(path, ',')


@table_reader('.tsv')
def tsv_rows(path: str) -> list[Row]:
    return _table_rows(path, '\t')


@table_reader('.jsonl')
def jsonl_rows(path: str) -> list[Row]:
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
            rows.append(Row(row, number))
    return rows


def _merge_rows(rows: list[Row], base_dir: str, source: str) -> list[Entry]:
    """One entry per distinct image path, captions in row order; a caption may be a list of captions."""
    entries: dict[str, Entry] = {}
    for row in rows:
        image = str(row.fields['image'] or '')
        path = image if os.path.isabs(image) else os.path.join(base_dir, image)
        entry = entries.get(path)
        if entry is None:
            entry = entries[path] = Entry(key=image, image=('file', path), source=source)
        captions = row.fields['caption']
        captions = captions if isinstance(captions, list) else [captions]
        entry.captions.extend(captions)
        entry.lines.extend([row.line] * len(captions))
        label = row.fields.get('label')
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
                    entry = grouped.setdefault(key, Entry(key=f'{shard}/{key}', image=('missing',), source=shard))
                    if extension in IMAGE_EXTENSIONS:
                        entry.image = ('tar', path, member.offset_data, member.size)
                    elif extension == 'txt':
                        text = archive.extractfile(member).read().decode('utf-8', errors=TEXT_ERRORS)
                        entry.captions, entry.lines = [text], [None]
                    elif extension == 'json':
                        caption, entry.label = _json_fields(archive.extractfile(member).read())
                        entry.captions, entry.lines = entry.captions or [caption], entry.lines or [None]
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
