"""`prepare --format TASK`: the JSON files the ALBEF family fine-tunes on, read into `prepare`'s entries.

Each format is one row parser, registered in `TASK_FORMATS` (name -> `TaskFormat`). A parser turns one
JSON object into the image paths it names, its texts, the record's own fields and each text's fields, or
raises `RowProblem` (a missing key, a value of the wrong type, a bad label or box): that row alone is
skipped, counted under the reason and named by its position in the report, and its image is never read.
Rows that name the same image(s) merge into one record holding all their texts (an image is stored once
however many questions or hypotheses are asked of it); a source then serves each (record, text) pair as
an example (data/tasks/record_tasks.py). The image checks (missing, corrupt, not an image) and the text
checks (empty, not UTF-8, too long) are `prepare`'s own, in the writer.

A JSON file is a list of objects (ALBEF's layout: its items are counted as `row`s); a `.jsonl` file holds
one object per line (`line`s). Image paths are relative to `--image_root` (default: the file's folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any

from vlp_jax.data.errors import DataError
from vlp_jax.data.prepare_inputs import TEXT_ERRORS, Entry

# Class order of the task sources (the synthetic ones too: data/tasks/shapes_tasks.py).
SNLI_LABELS = ('entailment', 'neutral', 'contradiction')
NLVR2_LABELS = {'true': 1, 'false': 0}


class RowProblem(Exception):
    """A row that cannot become an example: (reason, detail), e.g. ('bad_label', "label 'maybe'")."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass
class Parsed:
    images: tuple[str, ...]  # one path, or two (NLVR2), as written
    texts: list[Any]  # the row's texts (checked by the writer)
    fields: dict[str, Any]  # the record's own fields; rows of one record must agree on them
    text_fields: list[dict[str, Any]]  # one dict per text


@dataclasses.dataclass(frozen=True)
class TaskFormat:
    name: str
    parse: Callable[[dict, dict], Parsed]  # (row, context: boxes) -> Parsed, or raises RowProblem
    keys: str  # the row layout, for messages
    text_word: str  # what a text is, for the summary line ('statements')


TASK_FORMATS: dict[str, TaskFormat] = {}


def task_format(name: str, keys: str, text_word: str) -> Callable:
    """Registers a row parser as `prepare --format NAME`."""

    def register(parse: Callable[[dict, dict], Parsed]) -> Callable[[dict, dict], Parsed]:
        TASK_FORMATS[name] = TaskFormat(name, parse, keys, text_word)
        return parse

    return register


def stable_id(value: Any) -> int:
    """A 31-bit id of a JSON value: equal values (ALBEF's `image_id`s) give equal ids across runs and shards.
    Two different values collide with probability 2**-31 (then their pairs count as positives of each other)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return int.from_bytes(hashlib.sha256(text.encode('ascii')).digest()[:4], 'little') & 0x7FFFFFFF


def _required(row: dict, key: str, kinds: tuple[type, ...], what: str) -> Any:
    if row.get(key) is None:
        raise RowProblem('missing_field', f'no {key!r}')
    value = row[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise RowProblem('wrong_type', f'{key!r} must be {what}, got {type(value).__name__}')
    return value


def _image(row: dict, key: str = 'image') -> str:
    path = _required(row, key, (str,), 'an image path (a string)')
    if not path.strip():
        raise RowProblem('missing_field', f'{key!r} is empty')
    return path


def _texts(row: dict, key: str) -> list[Any]:
    """A string, or (ALBEF's test files) a non-empty list of strings."""
    value = _required(row, key, (str, list), 'a string or a list of strings')
    if isinstance(value, str):
        return [value]
    if not value or not all(isinstance(item, str) for item in value):
        raise RowProblem('wrong_type', f'{key!r} must be a string or a non-empty list of strings')
    return list(value)


def _scalar_id(row: dict, key: str) -> str | int:
    return _required(row, key, (str, int), 'a string or an integer')


@task_format('retrieval', '{image, caption (a string or a list), image_id (optional)}', 'captions')
def _retrieval(row: dict, context: dict) -> Parsed:
    """ALBEF's re_train (`{image, caption, image_id}`) and re_eval (`{image, caption: [...]}`) files. Pairs with
    equal `image_id`s are each other's positives (ALBEF maps image_id to a dense index; here a stable hash);
    without one, the image path is the id."""
    image = _image(row)
    captions = _texts(row, 'caption')
    image_id = _scalar_id(row, 'image_id') if 'image_id' in row else image
    return Parsed((image,), captions, {'image_id': stable_id(image_id)}, [{} for _ in captions])


@task_format('coco_karpathy', '{image, caption (a string or a list)} (COCO Karpathy splits)', 'captions')
def _coco_karpathy(row: dict, context: dict) -> Parsed:
    """BLIP's coco_karpathy_{train,val,test}.json: a caption per row (train) or a list per image (test)."""
    return _retrieval(row, context)


@task_format('snli_ve', '{image, sentence, label: entailment | neutral | contradiction}', 'hypotheses')
def _snli_ve(row: dict, context: dict) -> Parsed:
    image = _image(row)
    sentence = _required(row, 'sentence', (str,), 'a string')
    label = _required(row, 'label', (str,), 'entailment, neutral or contradiction')
    if label.strip().lower() not in SNLI_LABELS:
        raise RowProblem('bad_label', f'label {label!r} is not entailment, neutral or contradiction')
    return Parsed((image,), [sentence], {}, [{'label': SNLI_LABELS.index(label.strip().lower())}])


@task_format('nlvr2', "{images: [left, right], sentence, label: 'True' | 'False' (or a bool)}", 'statements')
def _nlvr2(row: dict, context: dict) -> Parsed:
    images = _required(row, 'images', (list,), 'a list of two image paths')
    if len(images) != 2 or not all(isinstance(path, str) and path.strip() for path in images):
        raise RowProblem('wrong_type', f"'images' must be a list of two image paths, got {len(images)} item(s)")
    sentence = _required(row, 'sentence', (str,), 'a string')
    label = _required(row, 'label', (str, bool), "'True', 'False' or a bool")
    value = int(label) if isinstance(label, bool) else NLVR2_LABELS.get(label.strip().lower())
    if value is None:
        raise RowProblem('bad_label', f"label {label!r} is not 'True' or 'False'")
    return Parsed(tuple(images), [sentence], {}, [{'label': value}])


def _box(value: Any, what: str) -> list[float]:
    """[x, y, w, h] in pixels of the original image, w and h > 0."""
    numbers = isinstance(value, list) and len(value) == 4
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not all(math.isfinite(v) for v in value) or value[2] <= 0 or value[3] <= 0:
        raise RowProblem('bad_box', f'{what} {value!r} is not [x, y, w, h] with w, h > 0')
    return [float(v) for v in value]


@task_format('grounding', '{image, text, ref_id} (+ --boxes {ref_id: {box, proposals}})', 'expressions')
def _grounding(row: dict, context: dict) -> Parsed:
    """ALBEF's RefCOCO+ files. With `--boxes`, each ref_id's referred box and proposals (test sets); without,
    box-free training pairs (the image path is the image id)."""
    image = _image(row)
    text = _required(row, 'text', (str,), 'a string')
    ref_id = _scalar_id(row, 'ref_id')
    fields: dict[str, Any] = {'ref_id': ref_id}
    boxes = context.get('boxes')
    if boxes is not None:
        entry = boxes.get(str(ref_id))
        if not isinstance(entry, dict):
            raise RowProblem('no_box', f'ref_id {ref_id!r} has no entry in the --boxes file')
        fields['box'] = _box(entry.get('box'), 'box')
        proposals = entry.get('proposals')
        if not isinstance(proposals, list) or not proposals:
            raise RowProblem('bad_box', f'ref_id {ref_id!r} has no list of proposals')
        fields['proposals'] = [_box(p, 'proposal') for p in proposals]
    return Parsed((image,), [text], {'image_id': stable_id(image)}, [fields])


@task_format(
    'vqa', '{question_id (an integer), image, question, answer: [...] (training sets)} (+ --answer_list)', 'questions'
)
def _vqa(row: dict, context: dict) -> Parsed:
    """ALBEF's vqa_{train,val,test}.json and vg_qa.json. Each question keeps its human answers as given,
    duplicates too: ALBEF's weights (times given / answers given) and the official accuracy (humans agreeing)
    both count them; a test question has none."""
    question_id = _required(row, 'question_id', (int,), 'an integer')
    image = _image(row)
    question = _required(row, 'question', (str,), 'a string')
    answers = row.get('answer', [])
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise RowProblem('wrong_type', "'answer' must be a list of strings")
    return Parsed((image,), [question], {}, [{'question_id': question_id, 'answers': list(answers)}])


def _rows(path: str) -> tuple[list[tuple[int, Any]], str]:
    """[(position, item)] and what positions count ('row' in a JSON list, 'line' in JSONL)."""
    with open(path, encoding='utf-8', errors=TEXT_ERRORS) as handle:
        if path.lower().endswith('.jsonl'):
            rows = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append((number, json.loads(line)))
                    except json.JSONDecodeError as error:
                        raise DataError(f'{path} line {number} is not JSON ({error.msg}); fix or remove it.') from None
            return rows, 'line'
        try:
            items = json.load(handle)
        except json.JSONDecodeError as error:
            raise DataError(f'{path} is not JSON ({error.msg} at line {error.lineno}); fix it.') from None
    if not isinstance(items, list):
        raise DataError(f"{path} holds a JSON {type(items).__name__}, not a list of examples (ALBEF's layout).")
    return list(enumerate(items, 1)), 'row'


def _json_file(path: str | None, option: str, kind: type) -> Any:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise DataError(f'{option} file {path!r} does not exist.')
    with open(path, encoding='utf-8') as handle:
        try:
            value = json.load(handle)
        except json.JSONDecodeError as error:
            raise DataError(f'{option} file {path!r} is not JSON ({error.msg}); fix it.') from None
    if not isinstance(value, kind):
        raise DataError(f'{option} file {path!r} must hold a JSON {kind.__name__}, not a {type(value).__name__}.')
    return value


def read_answer_list(path: str | None) -> list[str] | None:
    """ALBEF's answer_list.json: the candidate answers VQA ranks."""
    answers = _json_file(path, '--answer_list', list)
    if answers is not None and not all(isinstance(a, str) for a in answers):
        raise DataError(f'--answer_list file {path!r} must be a JSON list of strings.')
    return answers


def _row_key(row: Any) -> str:
    """A bad row's image path(s) as written, for the report ('' when it names none)."""
    if not isinstance(row, dict):
        return ''
    images = row.get('images', row.get('image', ''))
    images = images if isinstance(images, list) else [images]
    return ' + '.join(str(image) for image in images if image is not None)


def read_task_entries(path: str, name: str, image_root: str | None = None, boxes: str | None = None) -> list[Entry]:
    """The entries of a task file: one per distinct image (NLVR2: image pair), holding its rows' texts in row
    order, plus one entry per row that cannot be read (its `problem` set)."""
    fmt = TASK_FORMATS[name]
    if not os.path.isfile(path):
        state = 'is a folder' if os.path.isdir(path) else 'does not exist'
        raise DataError(f'input {path!r} {state}; pass a {name} JSON file (rows {fmt.keys}).')
    if boxes is not None and name != 'grounding':
        raise DataError(f'--boxes belongs to --format grounding, not {name}.')
    context = {'boxes': _json_file(boxes, '--boxes', dict)}
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    source = os.path.basename(path)
    rows, position = _rows(path)
    entries: dict[tuple[str, ...], Entry] = {}
    out: list[Entry] = []
    for number, row in rows:
        bad = Entry(key='', image=('missing',), source=source, lines=[number], position=position)
        try:
            if not isinstance(row, dict):
                raise RowProblem('wrong_type', f'a {type(row).__name__}, not an object {fmt.keys}')
            parsed = fmt.parse(row, context)
        except RowProblem as problem:
            bad.key = _row_key(row)
            bad.problem = [problem.reason, problem.detail]
            out.append(bad)
            continue
        paths = tuple(p if os.path.isabs(p) else os.path.join(root, p) for p in parsed.images)
        entry = entries.get(paths)
        if entry is None:
            entry = entries[paths] = Entry(
                key=' + '.join(parsed.images),
                image=('file', paths[0]),
                image1=('file', paths[1]) if len(paths) > 1 else (),
                fields=parsed.fields,
                source=source,
                position=position,
            )
            out.append(entry)
        elif entry.fields != parsed.fields:
            bad.key, bad.problem = entry.key, ['conflicting_image_id', 'another image_id than its earlier rows']
            out.append(bad)
            continue
        entry.captions.extend(parsed.texts)
        entry.caption_fields.extend(parsed.text_fields)
        entry.lines.extend([number] * len(parsed.texts))
    if rows and all(e.problem and e.problem[0] == 'missing_field' for e in out):
        raise DataError(f'no row of {path} has the keys of --format {name} ({fmt.keys}); is it another format?')
    return out
