"""`python -m vlp_jax.data.prepare INPUT OUTPUT_DIR [options]`: image-text data -> array_record shards.

INPUT is a .csv/.tsv/.jsonl table (`image`, `caption`, optional `label`) or a folder of
webdataset .tar shards (img2dataset's layout); with `--format TASK`, a fine-tuning task's JSON file
in the ALBEF family's layout (retrieval, coco_karpathy, snli_ve, nlvr2, grounding, vqa:
data/prepare_tasks.py), whose records also carry the task's labels, ids, boxes, answers or second image.
Every image is decoded once here, so a corrupt image, an empty, over-long or non-UTF-8 caption
is dropped (or truncated) and counted now rather than met in the middle of a run; images TF cannot decode as given
(TIFF, 16-bit, float, multi-page) are converted (prepare_images.py).

The entries are cut into fixed shards of `--shard_size` images, written by parallel
processes. Each shard is content-addressed: its `.json` records a fingerprint of exactly the
input rows it was built from (paths, captions, labels, each image file's size and mtime), and is
written last, after the shard has been renamed into place. A re-run keeps every finished shard
whose fingerprint still matches (never rewriting it), builds the missing ones (a killed run
continues) and rebuilds the ones whose inputs changed, saying how many; `--no_rebuild` refuses
instead. OUTPUT_DIR ends with `index.json` (shards, counts, class names) and `report.json`
(counts, and every skipped row by file, line and key, with the reason). Record layout: data/records.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
from typing import Any

from vlp_jax.data import records as records_lib
from vlp_jax.data.errors import DataError
from vlp_jax.data.prepare_inputs import read_entries
from vlp_jax.data.prepare_report import REPORT_FILE, build_report, summary_lines
from vlp_jax.data.prepare_shards import SHARD_JSON, fingerprint, shard_name, write_json, write_shard
from vlp_jax.data.prepare_tasks import TASK_FORMATS, read_answer_list, read_task_entries

PLAN_FILE = 'plan.json'


def _finished_shards(output_dir: str) -> dict[int, dict]:
    """{number: summary} of every shard whose .json (written last) and array_record are both there."""
    out = {}
    for name in os.listdir(output_dir):
        match = SHARD_JSON.fullmatch(name)
        if not match:
            continue
        try:
            with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
                summary = json.load(handle)
        except (OSError, ValueError):
            continue  # damaged: rebuilt like a missing shard
        if isinstance(summary, dict) and os.path.isfile(os.path.join(output_dir, str(summary.get('file')))):
            out[int(match[1])] = summary
    return out


def _remove_shard(output_dir: str, number: int) -> None:
    """Its .json first (the shard is no longer finished), then its records."""
    for suffix in ('.json', records_lib.SHARD_SUFFIX):
        path = os.path.join(output_dir, shard_name(number) + suffix)
        if os.path.exists(path):
            os.remove(path)


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
    """A re-run must be the same job (same input and options; the input's content may change), else shards
    would mix. A plan.json of an older prepare also named the entry count: that key is not compared."""
    path = os.path.join(output_dir, PLAN_FILE)
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as handle:
            previous = json.load(handle)
        changed = sorted(key for key in plan if previous.get(key) != plan[key])
        if changed:
            raise DataError(
                f'{output_dir!r} holds shards prepared with other settings ({", ".join(changed)} differ); '
                'use a new OUTPUT_DIR or the same command as before.'
            )
    write_json(path, plan)


def prepare(
    input_path: str,
    output_dir: str,
    shard_size: int = 1000,
    workers: int = 0,
    max_caption_chars: int = 1000,
    truncate: bool = False,
    class_names_file: str | None = None,
    progress: bool = True,
    rebuild: bool = True,
    task_format: str = 'captions',
    image_root: str | None = None,
    boxes: str | None = None,
    answer_list: str | None = None,
) -> dict:
    """Writes, completes or updates OUTPUT_DIR; returns the report. Raises DataError for inputs that cannot be
    read, and (with rebuild=False) when a finished shard's inputs changed. `task_format` other than
    'captions' reads a fine-tuning task's JSON (prepare_tasks.py); `image_root`, `boxes` (grounding) and
    `answer_list` (vqa) belong to those."""
    if shard_size < 1 or max_caption_chars < 1:
        raise DataError('--shard_size and --max_caption_chars must be positive integers.')
    task = task_format != 'captions'
    if task_format not in ('captions', *TASK_FORMATS):
        raise DataError(f'--format {task_format!r} is not one of captions, {", ".join(TASK_FORMATS)}.')
    if not task and (image_root or boxes or answer_list):
        raise DataError('--image_root, --boxes and --answer_list belong to a task --format, not to captions tables.')
    if answer_list and task_format != 'vqa':
        raise DataError(f'--answer_list belongs to --format vqa, not {task_format}.')
    class_names = _read_class_names(class_names_file)
    answers = read_answer_list(answer_list)
    if task:
        entries = read_task_entries(input_path, task_format, image_root, boxes)
    else:
        entries = read_entries(input_path)
    os.makedirs(output_dir, exist_ok=True)
    options = {
        'max_caption_chars': max_caption_chars,
        'truncate': truncate,
        'class_count': None if class_names is None else len(class_names),
    }
    if task:  # only then: a captions folder's plan and fingerprints stay those of earlier versions
        options['format'] = task_format
    plan = {'input': os.path.abspath(input_path), 'shard_size': shard_size, **options, 'class_names': class_names}
    if task:
        plan['image_root'] = None if image_root is None else os.path.abspath(image_root)
        plan['boxes'] = None if boxes is None else os.path.abspath(boxes)
    numbers = range((len(entries) + shard_size - 1) // shard_size)
    chunks = {n: entries[n * shard_size : (n + 1) * shard_size] for n in numbers}
    stats: dict[str, Any] = {}
    stamps = {n: fingerprint(chunks[n], options, stats) for n in numbers}
    _check_plan(output_dir, plan)
    finished = _finished_shards(output_dir)
    kept = {n: s for n, s in finished.items() if n in stamps and s.get('fingerprint') == stamps[n]}
    changed = sorted(n for n in finished if n not in kept and n in stamps)
    removed = sorted(n for n in finished if n not in stamps)
    if not rebuild and (changed or removed):
        stale = [shard_name(n) for n in changed + removed]
        raise DataError(
            f'the inputs of {len(stale)} of the {len(finished)} finished shards in {output_dir!r} changed since they '
            f'were prepared ({", ".join(stale[:3])}{", ..." if len(stale) > 3 else ""}); re-run without '
            '--no_rebuild to rebuild them, or prepare into a new OUTPUT_DIR.'
        )
    if changed or removed:  # readers must not meet half-updated data: no index until it is whole again
        for name in (records_lib.INDEX_FILE, REPORT_FILE):
            if os.path.exists(os.path.join(output_dir, name)):
                os.remove(os.path.join(output_dir, name))
        for n in changed + removed:
            _remove_shard(output_dir, n)
    todo = [n for n in numbers if n not in kept]
    summaries = dict(kept)
    bar = _progress_bar(len(entries), sum(len(chunks[n]) for n in kept), progress)
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        futures = {
            pool.submit(write_shard, output_dir, n, [e.to_json() for e in chunks[n]], options, stamps[n]): n
            for n in todo
        }
        for future in concurrent.futures.as_completed(futures):
            n = futures[future]
            summaries[n] = future.result()
            bar.update(len(chunks[n]))
    bar.close()
    ordered = [summaries[n] for n in numbers]
    shards = [{'file': s['file'], 'records': s['records']} for s in ordered]
    extra = None
    if task:
        shards = [{**shard, 'captions': s['texts']} for shard, s in zip(shards, ordered)]
        extra = {'task_format': task_format, 'boxes': boxes is not None, 'answer_list': answers}
    records_lib.write_index(output_dir, shards, class_names, extra)
    report = build_report(ordered, [chunks[n] for n in numbers], len(entries))
    if task:
        report['format'] = task_format
        report['words'] = ['records', TASK_FORMATS[task_format].text_word]
    report['last_run'] = {
        'kept_shards': len(kept),
        'new_shards': len(todo) - len(changed),
        'rebuilt_shards': len(changed),
        'removed_shards': len(removed),
    }
    write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


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
    parser.add_argument(
        '--no_rebuild',
        action='store_true',
        help='refuse (exit 2) instead of rebuilding finished shards whose inputs changed',
    )
    parser.add_argument('--no_progress', action='store_true', help='no progress bar')
    parser.add_argument(
        '--format',
        default='captions',
        choices=('captions', *TASK_FORMATS),
        help="INPUT's layout: 'captions' (a table or tar shards, the default) or a fine-tuning task's JSON",
    )
    parser.add_argument('--image_root', default=None, help="a task JSON's image folder (default: the JSON's folder)")
    parser.add_argument('--boxes', default=None, help='grounding: JSON {ref_id: {box: [x,y,w,h], proposals: [...]}}')
    parser.add_argument('--answer_list', default=None, help="vqa: ALBEF's answer_list.json (the ranked candidates)")
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
            rebuild=not args.no_rebuild,
            task_format=args.format,
            image_root=args.image_root,
            boxes=args.boxes,
            answer_list=args.answer_list,
        )
    except DataError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return 2
    print('\n'.join(summary_lines(report, args.output_dir)), flush=True)
    compact = {key: value for key, value in report.items() if not key.endswith('_rows')}
    print(json.dumps(compact), flush=True)  # the lists are in report.json
    return 0


if __name__ == '__main__':
    sys.exit(main())
