"""prepare's report: counts, and every skipped or converted row named by file, line and key.

Shard summaries list what they dropped by position (entry, caption) in the shard; the report maps
those to the current input's file, line and key, so a shard kept from an earlier run reports the
lines of today's file. The end-of-run summary prints the first few rows and the report's path.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from vlp_jax.data.prepare_inputs import Entry

REPORT_FILE = 'report.json'
# Why an entry was dropped. Image reasons count images; caption reasons count captions
# (an image whose every caption was dropped is then counted once more, as `no_caption`).
IMAGE_REASONS = ('missing_image', 'not_an_image', 'unsupported_image', 'corrupt_image', 'bad_label', 'no_caption')
CAPTION_REASONS = ('empty_caption', 'invalid_utf8', 'caption_too_long')
# Why a task row (prepare --format, data/prepare_tasks.py) was dropped: each counts one row ('bad_label' too).
ROW_REASONS = ('missing_field', 'wrong_type', 'no_box', 'bad_box', 'conflicting_image_id')
SHOWN_SKIPPED = 5  # skipped rows the end-of-run summary prints


def _where(entry: Entry, caption: int | None) -> dict[str, Any]:
    """file, line (tables; 'row' in a task's JSON list) and key of an entry, or of one of its captions."""
    out: dict[str, Any] = {'file': entry.source}
    lines = [line for line in entry.lines if line is not None]
    word = entry.position
    if caption is not None and caption < len(entry.lines) and entry.lines[caption] is not None:
        out[word] = entry.lines[caption]
    elif lines:
        out[word] = lines[0]
        if len(set(lines)) > 1:
            out[word + 's'] = sorted(set(lines))
    out['key'] = entry.key
    return out


def build_report(summaries: list[dict], chunks: list[list[Entry]], entries: int) -> dict:
    skipped: collections.Counter = collections.Counter()
    rows, converted = [], []
    for summary, chunk in zip(summaries, chunks):
        skipped.update(summary['skipped'])
        for row in summary['skipped_rows']:
            item = {**_where(chunk[row['entry']], row.get('caption')), 'reason': row['reason']}
            rows.append({**item, 'detail': row['detail']} if row.get('detail') else item)
        for row in summary['converted_rows']:
            converted.append({**_where(chunk[row['entry']], None), 'how': row['detail']})
    return {
        'written': sum(s['records'] for s in summaries),
        'captions': sum(s['captions'] for s in summaries),
        'skipped': {
            reason: skipped[reason] for reason in (*IMAGE_REASONS, *CAPTION_REASONS, *ROW_REASONS) if skipped[reason]
        },
        'truncated': sum(s['truncated'] for s in summaries),
        'converted': len(converted),
        'input_images': entries,
        'shards': len(summaries),
        'labelled': any(s['labelled'] for s in summaries),
        'skipped_rows': rows,
        'converted_rows': converted,
    }


def describe_row(row: dict) -> str:
    """One skipped or converted row in words: 'pairs.csv line 7 (text.jpg): not_an_image (...)'."""
    position = next((word for word in ('line', 'row') if word in row), None)
    where = f'{row["file"]} {position} {row[position]}' if position else row['file']
    key = f' ({row["key"]})' if row.get('key') and row['key'] != row['file'] else ''
    if 'how' in row:
        return f'{where}{key}: {row["how"]}'
    return f'{where}{key}: {row["reason"]}' + (f' ({row["detail"]})' if row.get('detail') else '')


def summary_lines(report: dict, output_dir: str) -> list[str]:
    """The end-of-run summary: counts, what this run built, the first skipped rows and where the rest are."""
    skipped = ', '.join(f'{reason} {count}' for reason, count in report['skipped'].items()) or 'none'
    run = report['last_run']
    things, texts = report.get('words', ('images', 'captions'))  # a task set: records with its texts
    lines = [
        f'wrote {report["written"]} {things} with {report["captions"]} {texts} to {output_dir} '
        f'({report["shards"]} shards); skipped: {skipped}; truncated captions: {report["truncated"]}'
    ]
    if run['rebuilt_shards'] or run['removed_shards']:
        lines.append(
            f'the inputs of {run["rebuilt_shards"] + run["removed_shards"]} finished shard(s) changed: rebuilt '
            f'{run["rebuilt_shards"]}, removed {run["removed_shards"]}, kept {run["kept_shards"]} unchanged, '
            f'wrote {run["new_shards"]} new'
        )
    elif run['kept_shards']:
        lines.append(f'kept {run["kept_shards"]} finished shards whose inputs are unchanged; wrote {run["new_shards"]}')
    path = os.path.join(output_dir, REPORT_FILE)
    rows = report['skipped_rows']
    if rows:
        lines.append(f'skipped rows (all {len(rows)} are listed in {path}):')
        lines += [f'  {describe_row(row)}' for row in rows[:SHOWN_SKIPPED]]
        if len(rows) > SHOWN_SKIPPED:
            lines.append(f'  ... and {len(rows) - SHOWN_SKIPPED} more')
    if report['converted']:
        lines.append(f'converted {report["converted"]} image(s) to PNG (each is listed in {path}), e.g.')
        lines.append(f'  {describe_row(report["converted_rows"][0])}')
    return lines
