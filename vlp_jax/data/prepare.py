"""`python -m vlp_jax.data.prepare INPUT OUTPUT_DIR [options]`: image-text data -> array_record shards.

INPUT is a .csv/.tsv/.jsonl table (`image`, `caption`, optional `label`) or a folder of
webdataset .tar shards (img2dataset's layout). Every image is decoded once here, so a
corrupt image, an empty, over-long or non-UTF-8 caption is dropped (or truncated) and
counted now rather than met in the middle of a run. The entries are cut into fixed
shards of `--shard_size` images, written by parallel processes; each finished shard is
renamed into place atomically with a small `.json` beside it, so re-running the same
command skips finished shards (never rewrites them) and continues. OUTPUT_DIR ends
with `index.json` (shards, counts, class names) and `report.json`
(`{"written": N, "skipped": {reason: count}, ...}`). Record layout: data/records.py.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import os
import sys
from typing import Any

from vlp_jax.data import records as records_lib
from vlp_jax.data.errors import DataError
from vlp_jax.data.prepare_inputs import Entry, read_entries

PLAN_FILE = 'plan.json'
REPORT_FILE = 'report.json'
# Why an entry was dropped. Image reasons count images; caption reasons count captions
# (an image whose every caption was dropped is then counted once more, as `no_caption`).
IMAGE_REASONS = ('missing_image', 'not_an_image', 'corrupt_image', 'bad_label', 'no_caption')
CAPTION_REASONS = ('empty_caption', 'invalid_utf8', 'caption_too_long')
FORMAT_ALIASES = {'mpo': 'jpeg'}  # camera JPEGs that PIL names by their multi-picture extension


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


def read_image_bytes(entry: Entry) -> bytes | None:
    kind = entry.image[0]
    try:
        if kind == 'file':
            with open(entry.image[1], 'rb') as handle:
                return handle.read()
        if kind == 'tar':
            _, path, offset, size = entry.image
            with open(path, 'rb') as handle:
                handle.seek(offset)
                return handle.read(size)
    except OSError:
        return None
    return None


def check_image(data: bytes) -> tuple[bytes | None, str, str | None]:
    """Decodes the whole image once: (bytes to store, format, reason it was dropped or None).

    Formats tf.io.decode_image cannot read are stored re-encoded as PNG (lossless).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = FORMAT_ALIASES.get((image.format or '').lower(), (image.format or '').lower())
            image.load()
            if image.width < 1 or image.height < 1:
                return None, '', 'corrupt_image'
            if image_format in records_lib.DECODABLE_FORMATS:
                return data, image_format, None
            buffer = io.BytesIO()
            image.convert('RGB').save(buffer, format='PNG')
            return buffer.getvalue(), 'png', None
    except UnidentifiedImageError:
        return None, '', 'not_an_image'
    except Exception:  # truncated or damaged data, decompression bombs: PIL raises many types
        return None, '', 'corrupt_image'


def check_label(label: Any, class_count: int | None) -> tuple[int | None, bool]:
    """(label as int or None, ok)."""
    if label is None:
        return None, True
    try:
        value = int(str(label).strip())
    except ValueError:
        return None, False
    return value, value >= 0 and (class_count is None or value < class_count)


def write_shard(output_dir: str, number: int, entries: list[dict], options: dict) -> dict:
    """Checks and writes one shard (in a worker process); returns its counts. Atomic: temp names, then renames."""
    from array_record.python import array_record_module

    name = shard_name(number)
    counts: collections.Counter = collections.Counter()
    truncated = captions_written = written = 0
    temporary = os.path.join(output_dir, f'{name}{records_lib.SHARD_SUFFIX}.tmp-{os.getpid()}')
    writer = array_record_module.ArrayRecordWriter(temporary, records_lib.WRITER_OPTIONS)
    for fields in entries:
        entry = Entry(**{**fields, 'image': tuple(fields['image'])})
        captions = []
        for caption in entry.captions:
            clean, reason = check_caption(caption, options['max_caption_chars'], options['truncate'])
            if reason == 'truncated':
                truncated += 1
            elif reason:
                counts[reason] += 1
            if clean is not None:
                captions.append(clean)
        data = read_image_bytes(entry)
        if data is None:
            counts['missing_image'] += 1
            continue
        image, image_format, reason = check_image(data)
        label, label_ok = check_label(entry.label, options['class_count'])
        reason = reason or (None if label_ok else 'bad_label') or (None if captions else 'no_caption')
        if reason:
            counts[reason] += 1
            continue
        record = records_lib.Record(id=entry.key, captions=captions, image=image, format=image_format, label=label)
        writer.write(records_lib.encode_record(record))
        written += 1
        captions_written += len(captions)
    writer.close()
    summary = {
        'file': name + records_lib.SHARD_SUFFIX,
        'records': written,
        'captions': captions_written,
        'truncated': truncated,
        'skipped': dict(counts),
        'labelled': any(fields.get('label') not in (None, '') for fields in entries),
    }
    os.replace(temporary, os.path.join(output_dir, summary['file']))
    _write_json(os.path.join(output_dir, name + '.json'), summary)  # last: marks the shard finished
    return summary


def _write_json(path: str, value: Any) -> None:
    temporary = f'{path}.tmp-{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as handle:
        json.dump(value, handle, indent=1, ensure_ascii=False)
    os.replace(temporary, path)


def _finished(output_dir: str, number: int) -> dict | None:
    path = os.path.join(output_dir, shard_name(number) + '.json')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as handle:
        summary = json.load(handle)
    return summary if os.path.isfile(os.path.join(output_dir, summary['file'])) else None


def _read_class_names(path: str | None) -> list[str] | None:
    if not path:
        return None
    if not os.path.isfile(path):
        raise DataError(f'--class_names file {path!r} does not exist; pass a text file with one class name per line.')
    with open(path, encoding='utf-8') as handle:
        names = [line.strip() for line in handle if line.strip()]
    if not names:
        raise DataError(f'--class_names file {path!r} holds no names; write one class name per line.')
    return names


def _check_plan(output_dir: str, plan: dict) -> None:
    """A re-run must continue the same job: same input, entries and options, else shards would mix."""
    path = os.path.join(output_dir, PLAN_FILE)
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as handle:
            previous = json.load(handle)
        if previous != plan:
            changed = sorted(key for key in plan if previous.get(key) != plan[key])
            raise DataError(
                f'{output_dir!r} holds shards prepared with other settings ({", ".join(changed)} differ); '
                'use a new OUTPUT_DIR or the same command as before.'
            )
    else:
        _write_json(path, plan)


def prepare(
    input_path: str,
    output_dir: str,
    shard_size: int = 1000,
    workers: int = 0,
    max_caption_chars: int = 1000,
    truncate: bool = False,
    class_names_file: str | None = None,
    progress: bool = True,
) -> dict:
    """Writes (or completes) OUTPUT_DIR; returns the report. Raises DataError for inputs that cannot be read."""
    if shard_size < 1 or max_caption_chars < 1:
        raise DataError('--shard_size and --max_caption_chars must be positive integers.')
    class_names = _read_class_names(class_names_file)
    entries = read_entries(input_path)
    os.makedirs(output_dir, exist_ok=True)
    options = {
        'max_caption_chars': max_caption_chars,
        'truncate': truncate,
        'class_count': None if class_names is None else len(class_names),
    }
    plan = {'input': os.path.abspath(input_path), 'entries': len(entries), 'shard_size': shard_size, **options}
    plan['class_names'] = class_names
    _check_plan(output_dir, plan)
    numbers = range((len(entries) + shard_size - 1) // shard_size)
    chunk = lambda n: [entry.to_json() for entry in entries[n * shard_size : (n + 1) * shard_size]]
    summaries = {n: summary for n in numbers if (summary := _finished(output_dir, n)) is not None}
    todo = [n for n in numbers if n not in summaries]
    bar = _progress_bar(len(entries), sum(len(chunk(n)) for n in summaries), progress)
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        futures = {pool.submit(write_shard, output_dir, n, chunk(n), options): n for n in todo}
        for future in concurrent.futures.as_completed(futures):
            n = futures[future]
            summaries[n] = future.result()
            bar.update(len(chunk(n)))
    bar.close()
    ordered = [summaries[n] for n in numbers]
    records_lib.write_index(output_dir, [{'file': s['file'], 'records': s['records']} for s in ordered], class_names)
    report = _report(ordered, len(entries))
    _write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


def _report(summaries: list[dict], entries: int) -> dict:
    skipped: collections.Counter = collections.Counter()
    for summary in summaries:
        skipped.update(summary['skipped'])
    return {
        'written': sum(s['records'] for s in summaries),
        'captions': sum(s['captions'] for s in summaries),
        'skipped': {reason: skipped[reason] for reason in (*IMAGE_REASONS, *CAPTION_REASONS) if skipped[reason]},
        'truncated': sum(s['truncated'] for s in summaries),
        'input_images': entries,
        'shards': len(summaries),
        'labelled': any(s['labelled'] for s in summaries),
    }


def _progress_bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit='image', desc='prepare', disable=not enabled, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m vlp_jax.data.prepare', description=__doc__.split('\n')[0])
    parser.add_argument('input', help='a .csv/.tsv/.jsonl file (image, caption[, label]) or a folder of .tar shards')
    parser.add_argument('output_dir', help='where the array_record shards, index.json and report.json go')
    parser.add_argument('--shard_size', type=int, default=1000, help='images per shard (default 1000)')
    parser.add_argument('--workers', type=int, default=0, help='parallel processes (default: one per CPU core)')
    parser.add_argument('--max_caption_chars', type=int, default=1000, help='longer captions are dropped or cut')
    parser.add_argument('--truncate_long_captions', action='store_true', help='cut long captions instead of dropping')
    parser.add_argument('--class_names', default=None, help='text file, one class name per line (labelled sets)')
    parser.add_argument('--no_progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        report = prepare(
            args.input,
            args.output_dir,
            shard_size=args.shard_size,
            workers=args.workers,
            max_caption_chars=args.max_caption_chars,
            truncate=args.truncate_long_captions,
            class_names_file=args.class_names,
            progress=not args.no_progress,
        )
    except DataError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return 2
    skipped = ', '.join(f'{reason} {count}' for reason, count in report['skipped'].items()) or 'none'
    print(
        f'wrote {report["written"]} images with {report["captions"]} captions to {args.output_dir} '
        f'({report["shards"]} shards); skipped: {skipped}; truncated captions: {report["truncated"]}',
        flush=True,
    )
    print(json.dumps(report), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
