"""One shard of `python -m vlp_jax.data.prepare`: each row checked (caption, label, image decoded once), the
array_record file written under a temporary name and renamed, and the `.json` beside it, written last, holding
the fingerprint of exactly the inputs it was built from (the content addressing prepare.py's re-runs read)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from typing import Any

from vlp_jax.data import records as records_lib
from vlp_jax.data.prepare_images import check_image
from vlp_jax.data.prepare_inputs import Entry

# Part of every fingerprint: bump it when what a shard holds for the same inputs changes, so old shards rebuild.
SHARD_VERSION = 2
SHARD_JSON = re.compile(r'shard-(\d+)\.json')


def shard_name(number: int) -> str:
    return f'shard-{number:05d}'


def check_caption(caption: Any, max_chars: int, truncate: bool) -> tuple[str | None, str | None]:
    """(clean caption or None, reason it was dropped or 'truncated' or None)."""
    if not isinstance(caption, str):
        return None, 'empty_caption'
    try:
        caption.encode('utf-8')
    except UnicodeEncodeError:  # undecodable bytes, read as lone surrogates
        return None, 'invalid_utf8'
    caption = ' '.join(caption.split())
    if not caption:
        return None, 'empty_caption'
    if len(caption) > max_chars:
        if not truncate:
            return None, 'caption_too_long'
        return caption[:max_chars], 'truncated'
    return caption, None


def read_image_bytes(entry: Entry, image: tuple | None = None) -> bytes | None:
    """The bytes of `image` (default: the entry's image), or None when they cannot be read."""
    image = entry.image if image is None else image
    kind = image[0]
    try:
        if kind == 'file':
            with open(image[1], 'rb') as handle:
                return handle.read()
        if kind == 'tar':
            _, path, offset, size = image
            with open(path, 'rb') as handle:
                handle.seek(offset)
                return handle.read(size)
    except OSError:
        return None
    return None


def check_label(label: Any, class_count: int | None) -> tuple[int | None, bool]:
    """(label as int or None, ok)."""
    if label is None:
        return None, True
    try:
        value = int(str(label).strip())
    except ValueError:
        return None, False
    return value, value >= 0 and (class_count is None or value < class_count)


def _image_stamp(image: tuple, stats: dict[str, Any]) -> Any:
    """What says an image's bytes changed without reading them: its file's (or tar's) size and mtime, or None."""
    if image[0] not in ('file', 'tar'):
        return None
    path = image[1]
    if path not in stats:
        try:
            status = os.stat(path)
            stats[path] = [status.st_size, status.st_mtime_ns]
        except OSError:
            stats[path] = None
    return stats[path]


def fingerprint(entries: list[Entry], options: dict, stats: dict[str, Any] | None = None) -> str:
    """sha256 of exactly what a shard is built from: its entries (key, image, captions, label, the image's
    size and mtime) and the options that decide what is kept. Where a row sits in the file is not in it: the
    report maps skipped rows to today's lines."""
    stats = {} if stats is None else stats
    rows = [[e.key, list(e.image), e.captions, e.label, _image_stamp(e.image, stats)] for e in entries]
    for row, e in zip(rows, entries):  # a task's entries (prepare_tasks.py): what else the record is made of
        if e.image1 or e.fields or e.caption_fields or e.problem:
            row += [list(e.image1), e.fields, e.caption_fields, e.problem]
            row.append(_image_stamp(e.image1, stats) if e.image1 else None)
    text = json.dumps([SHARD_VERSION, options, rows], ensure_ascii=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode('ascii')).hexdigest()


def write_shard(output_dir: str, number: int, entries: list[dict], options: dict, stamp: str) -> dict:
    """Checks and writes one shard (in a worker process); returns its summary. Atomic: temp names, then renames.

    Skipped and converted entries are listed by their position in the shard (`entry`, and `caption` for a
    caption), which the report turns into file, line and key."""
    from array_record.python import array_record_module

    name = shard_name(number)
    counts: collections.Counter = collections.Counter()
    skipped: list[dict] = []
    converted: list[dict] = []
    truncated = captions_written = written = 0
    task = bool(options.get('format'))
    texts: list[int] = []  # a task shard: each record's caption count (index.json lists them)
    temporary = os.path.join(output_dir, f'{name}{records_lib.SHARD_SUFFIX}.tmp-{os.getpid()}')
    writer = array_record_module.ArrayRecordWriter(temporary, records_lib.WRITER_OPTIONS)

    def skip(reason: str, position: int, caption: int | None = None, detail: str = '') -> None:
        counts[reason] += 1
        row: dict[str, Any] = {'entry': position, 'reason': reason}
        if caption is not None:
            row['caption'] = caption
        if detail:
            row['detail'] = detail
        skipped.append(row)

    for position, fields in enumerate(entries):
        entry = Entry(**{**fields, 'image': tuple(fields['image']), 'image1': tuple(fields['image1'])})
        if entry.problem:  # a task row that could not be read (prepare_tasks.py)
            skip(entry.problem[0], position, detail=entry.problem[1])
            continue
        captions, caption_fields = [], []
        for index, caption in enumerate(entry.captions):
            clean, reason = check_caption(caption, options['max_caption_chars'], options['truncate'])
            if reason == 'truncated':
                truncated += 1
            elif reason:
                detail = f'{len(caption)} characters' if reason == 'caption_too_long' else ''
                skip(reason, position, index, detail)
            if clean is not None:
                captions.append(clean)
                caption_fields.append(entry.caption_fields[index] if task else None)
        data = read_image_bytes(entry)
        if data is None:
            skip('missing_image', position, detail=f'no file {entry.image[1]}' if entry.image[0] == 'file' else '')
            continue
        image = check_image(data)
        label, label_ok = check_label(entry.label, options['class_count'])
        if image.reason:
            skip(image.reason, position, detail=image.detail)
            continue
        image1 = None
        if entry.image1:  # NLVR2's right image: checked as the left one
            data1 = read_image_bytes(entry, entry.image1)
            if data1 is None:
                skip('missing_image', position, detail=f'no file {entry.image1[1]} (the second image)')
                continue
            image1 = check_image(data1)
            if image1.reason:
                skip(image1.reason, position, detail=f'the second image: {image1.detail}')
                continue
        if not label_ok:
            skip('bad_label', position, detail=f'label {entry.label!r}')
            continue
        if not captions:
            skip('no_caption', position, detail='every caption of the image was dropped')
            continue
        if image.detail:
            converted.append({'entry': position, 'detail': image.detail})
        if image1 is not None and image1.detail:
            converted.append({'entry': position, 'detail': f'the second image: {image1.detail}'})
        record = records_lib.Record(id=entry.key, captions=captions, image=image.data, format=image.format, label=label)
        if task:
            record.fields, record.caption_fields = entry.fields, caption_fields
            if image1 is not None:
                record.image1, record.image1_format = image1.data, image1.format
            texts.append(len(captions))
        writer.write(records_lib.encode_record(record))
        written += 1
        captions_written += len(captions)
    writer.close()
    summary = {
        'file': name + records_lib.SHARD_SUFFIX,
        'fingerprint': stamp,
        'records': written,
        'captions': captions_written,
        'truncated': truncated,
        'skipped': dict(counts),
        'skipped_rows': skipped,
        'converted_rows': converted,
        'labelled': any(fields.get('label') not in (None, '') for fields in entries),
    }
    if task:
        summary['texts'] = texts
    os.replace(temporary, os.path.join(output_dir, summary['file']))
    write_json(os.path.join(output_dir, name + '.json'), summary)  # last: marks the shard finished
    return summary


def write_json(path: str, value: Any) -> None:
    temporary = f'{path}.tmp-{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as handle:
        json.dump(value, handle, indent=1, ensure_ascii=False)
    os.replace(temporary, path)
