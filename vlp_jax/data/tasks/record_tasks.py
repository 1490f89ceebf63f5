"""Prepared fine-tuning sets (`python -m vlp_jax.data.prepare --format TASK`) as task sources.

Each yields the batch its synthetic twin in shapes_tasks.py yields, so the same objective and evaluator
run on real data: swap `data.name` and point `data.<name>.path` at the prepared folder.

- 'records_retrieval' (`--format retrieval` or `coco_karpathy`): train = (image, caption) pairs with the
  record's `image_id`; test = images with all their captions;
- 'records_snli_ve' (`--format snli_ve`): (premise, hypothesis) with `label` (0 entailment, 1 neutral,
  2 contradiction), both splits;
- 'records_nlvr2' (`--format nlvr2`): (left = `image`, right = `image1`, statement) with `label` (1: true);
- 'records_grounding' (`--format grounding`): train = (image, expression) pairs with `image_id`; test =
  expressions with the referred `box` and the `proposals` (a folder prepared with `--boxes`);
- 'records_vqa' (`--format vqa`): (image, question) with the VQA fields of data/tasks/vqa_fields.py (the
  distinct answers weighted by the human answers, question_id, human_answers) and the folder's answer list
  (`--answer_list`) as the ranking evaluator's candidates.

A record holds one image (NLVR2: one pair) and every text asked of it; an example is one (record, text) pair,
enumerated from the per-record text counts in index.json without reading the records. Evaluation reads
`eval_path`, or the last `test_size` records of `path` (which training then leaves out).

Images are decoded on the host (Pillow) and squashed to the model's square input, as ALBEF's fine-tuning
transforms resize them (`transforms.Resize((res, res))`); training then takes the pipeline's random crop and
flip of that square. Boxes ([x, y, w, h] in the original image's pixels in the JSON) are scaled with it.
"""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import numpy as np

from vlp_jax.config import key, positive_int
from vlp_jax.data.errors import DataError
from vlp_jax.data.prepare_tasks import SNLI_LABELS
from vlp_jax.data.record_source import split_positions
from vlp_jax.data.records import Record, RecordSet, decode_record
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.data.tasks.vqa_fields import (
    ANSWER_WEIGHT,
    ANSWERS,
    HUMAN_ANSWERS,
    QUESTION_ID,
    VQA_FIELDS,
    weighted_answers,
)
from vlp_jax.registry import SOURCES

LATERAL = re.compile(r'\b(left|right)\b', re.IGNORECASE)  # texts a horizontal flip may make false
SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')  # Pillow modes of 16-bit PNGs: scaled by 1/257, as TF does


@dataclasses.dataclass(frozen=True)
class TaskRecordsSettings:
    """A prepared task folder (`prepare --format TASK`) and what evaluates."""

    path: str = key('', "the training folder: `prepare --format TASK`'s OUTPUT_DIR")
    eval_path: str = key('', "a prepared folder to evaluate on ('' = hold out the last test_size records of path)")
    test_size: int = key(1000, 'records of path held out for evaluation when eval_path is empty', check=positive_int)


# One settings class per source: a config group is found by its dataclass (config.settings_of).
@dataclasses.dataclass(frozen=True)
class RetrievalRecordsSettings(TaskRecordsSettings):
    """Retrieval fine-tuning on prepared records (`prepare --format retrieval` or `coco_karpathy`)."""


@dataclasses.dataclass(frozen=True)
class SnliVeRecordsSettings(TaskRecordsSettings):
    """SNLI-VE on prepared records (`prepare --format snli_ve`)."""


@dataclasses.dataclass(frozen=True)
class Nlvr2RecordsSettings(TaskRecordsSettings):
    """NLVR2 on prepared records (`prepare --format nlvr2`)."""


@dataclasses.dataclass(frozen=True)
class VqaRecordsSettings(TaskRecordsSettings):
    """VQA on prepared records (`prepare --format vqa`, with `--answer_list` for the ranking evaluator)."""

    answer_slots: int = key(10, 'distinct answers kept per question (VQA v2 asks 10 humans)', check=positive_int)


@dataclasses.dataclass(frozen=True)
class GroundingRecordsSettings(TaskRecordsSettings):
    """Weakly-supervised grounding on prepared records (`prepare --format grounding`; the test set with
    `--boxes`)."""


def decode_square(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image -> (uint8 [size, size, 3] resized bicubically without keeping the aspect, (width, height)
    of the original). A JPEG is decoded at the smallest scale still >= size (Pillow's draft mode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        original = image.size
        image.draft('RGB', (size, size))
        if image.mode in SIXTEEN_BIT:
            pixels = np.clip(np.asarray(image, np.float64) / 257.0, 0, 255).round().astype(np.uint8)
            image = Image.fromarray(pixels)
        square = image.convert('RGB').resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(square, np.uint8), original


def scale_boxes(boxes: np.ndarray, original: tuple[int, int], size: int) -> np.ndarray:
    """[..., 4] [x, y, w, h] boxes in the original image's pixels -> in the squashed size x size image's."""
    width, height = original
    return np.asarray(boxes, np.float32) * np.asarray([size / width, size / height] * 2, np.float32)


class TaskRecords:
    """A prepared task folder: its records and each record's text count (index.json)."""

    def __init__(self, directory: str, formats: tuple[str, ...], source: str):
        self.records = RecordSet(directory)
        self.format = self.records.index.get('task_format')
        if self.format not in formats:
            prepared = f'--format {self.format}' if self.format else 'as an image-caption table (no --format)'
            raise DataError(
                f'{directory!r} was prepared {prepared}; source {source!r} reads folders prepared with --format '
                f'{" or ".join(formats)}: run `python -m vlp_jax.data.prepare JSON DIR --format {formats[0]}`.'
            )
        self.texts = np.asarray(
            [n for shard in self.records.index['shards'] for n in shard['captions']], np.int64
        ).reshape(-1)
        self.directory = directory

    def __len__(self) -> int:
        return len(self.records)

    def read(self, positions: np.ndarray) -> list[Record]:
        return [decode_record(data) for data in self.records.raw(positions)]


class TaskRecordSource(Source):
    """Examples of a task folder: each (record, text) pair among `positions` (records), or each record with all
    its texts (`per_record`: a retrieval test set). Subclasses add the task's fields. A record whose image no
    longer decodes (prepare decoded every one, so only a file damaged since) comes with no captions, which the
    pipeline replaces by a stand-in record (train/bad_records)."""

    two_images = False  # NLVR2: also decode each record's second image, for `fields`

    def __init__(self, data: TaskRecords, positions: np.ndarray, image_size: int, per_record: bool = False):
        self.data, self.image_size, self.per_record = data, int(image_size), per_record
        positions = np.asarray(positions, np.int64)
        if per_record:
            self.examples = np.stack([positions, np.full(len(positions), -1)], axis=1)
        else:
            rows = [(p, slot) for p in positions for slot in range(int(data.texts[p]))]
            self.examples = np.asarray(rows, np.int64).reshape(-1, 2)
        self.name = data.directory

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        chosen = self.examples[np.asarray(indices, np.int64)]
        records = self.data.read(chosen[:, 0])
        slots = [int(slot) for slot in chosen[:, 1]]
        images, originals, failed = self._images([r.image for r in records])
        second = None
        if self.two_images:
            second, _, failed_second = self._images([r.image1 for r in records])
            failed |= failed_second
        captions = [
            [] if row in failed else r.captions if slot < 0 else [r.captions[slot]]
            for row, (r, slot) in enumerate(zip(records, slots))
        ]
        return {
            'image': images,
            'captions': captions,
            'fields': self.fields(records, slots, originals, second),
            'flip_sensitive': [np.asarray([bool(LATERAL.search(c)) for c in texts]) for texts in captions],
            'ids': [r.id for r in records],
        }

    def _images(self, encoded: list[bytes | None]) -> tuple[np.ndarray, list[tuple[int, int]], set[int]]:
        """(uint8 squares, original (width, height)s, rows that did not decode: zeros, size x size)."""
        size = self.image_size
        out = np.zeros((len(encoded), size, size, 3), np.uint8)
        originals, failed = [], set()
        for row, data in enumerate(encoded):
            try:
                out[row], original = decode_square(data or b'', size)
            except (OSError, ValueError, SyntaxError):  # what Pillow raises for damaged or unknown bytes
                original = (size, size)
                failed.add(row)
            originals.append(original)
        return out, originals, failed

    def fields(
        self, records: list[Record], slots: list[int], originals: list[tuple[int, int]], image1: np.ndarray | None
    ) -> dict[str, Any]:
        """The task's fields of the examples (records[i]'s text slots[i]; -1: all texts)."""
        return {}


def _caption_field(records: list[Record], slots: list[int], name: str) -> list[Any]:
    return [record.caption_fields[slot][name] for record, slot in zip(records, slots)]


class ImageIdPairs(TaskRecordSource):
    """(image, text) pairs with the record's `image_id`: captions of one image are each other's positives."""

    field_keys = ('image_id',)

    def fields(self, records, slots, originals, image1):
        return {'image_id': np.asarray([record.fields['image_id'] for record in records], np.int64)}


class LabelledPairs(TaskRecordSource):
    """(image, text) pairs with the text's class as 'label' [B, 1] (a field of the caption)."""

    field_keys = ('label',)

    def fields(self, records, slots, originals, image1):
        return {'label': np.asarray(_caption_field(records, slots, 'label'), np.int32)[:, None]}


class SnliVePairs(LabelledPairs):
    class_names = SNLI_LABELS


class Nlvr2Pairs(LabelledPairs):
    """Statements about an image pair: 'image' the left one, 'image1' the right one, 'label' 1 when true."""

    field_keys = ('label', 'image1')
    two_images = True

    def fields(self, records, slots, originals, image1):
        return {**super().fields(records, slots, originals, image1), 'image1': image1}


class GroundingExpressions(TaskRecordSource):
    """Referring expressions with the referred `box` [B, 4] and the `proposals` [B, P, 4] ([x, y, w, h] in the
    model's input pixels; -1 rows pad to the most proposals in the batch), as the 'grounding' evaluator reads."""

    def fields(self, records, slots, originals, image1):
        size = self.image_size
        boxes = [scale_boxes(f, o, size) for f, o in zip(_caption_field(records, slots, 'box'), originals)]
        lists = [scale_boxes(p, o, size) for p, o in zip(_caption_field(records, slots, 'proposals'), originals)]
        proposals = np.full((len(records), max((len(p) for p in lists), default=0), 4), -1.0, np.float32)
        for row, candidates in enumerate(lists):
            proposals[row, : len(candidates)] = candidates
        return {'box': np.asarray(boxes, np.float32).reshape(-1, 4), 'proposals': proposals}


class VqaQuestions(TaskRecordSource):
    """(image, question) pairs with each question's answers (vqa_fields.py), and the folder's answer list."""

    field_keys = VQA_FIELDS

    def __init__(self, data: TaskRecords, positions: np.ndarray, image_size: int, answer_slots: int):
        super().__init__(data, positions, image_size)
        self.answer_slots = int(answer_slots)
        self.answer_list = tuple(data.records.index.get('answer_list') or ())

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        out = super().batch(indices)
        answers = out['fields'][HUMAN_ANSWERS]
        out['flip_sensitive'] = [  # an answer that says left or right is made false by a flip, as a question is
            flags | any(LATERAL.search(a) for a in said) for flags, said in zip(out['flip_sensitive'], answers)
        ]
        return out

    def fields(self, records, slots, originals, image1):
        humans = [list(answers) for answers in _caption_field(records, slots, 'answers')]
        weighted = [weighted_answers(said, self.answer_slots) for said in humans]
        return {
            ANSWERS: [answers for answers, _ in weighted],
            ANSWER_WEIGHT: np.asarray([weights for _, weights in weighted], np.float32).reshape(-1, self.answer_slots),
            QUESTION_ID: np.asarray(_caption_field(records, slots, 'question_id'), np.int64),
            HUMAN_ANSWERS: humans,
        }


class TaskRecordsPlugin(SourcePlugin):
    """A prepared task folder: `path` trains; `eval_path` (or the last `test_size` records of `path`) evaluates;
    `where` in an eval spec names another prepared folder, read whole."""

    formats: tuple[str, ...] = ()
    name = ''
    train_class: type[TaskRecordSource] = TaskRecordSource
    test_class: type[TaskRecordSource] = TaskRecordSource
    eval_sets: tuple[tuple[str, str, str], ...] = ()

    def _data(self, directory: str) -> TaskRecords:
        return TaskRecords(directory, self.formats, self.name)

    def _positions(self, split: str) -> tuple[TaskRecords, np.ndarray]:
        settings = self.settings
        if not settings.path:
            raise DataError(
                f'data.name={self.name} needs data.{self.name}.path: the OUTPUT_DIR of '
                f'`python -m vlp_jax.data.prepare JSON DIR --format {self.formats[0]}`.'
            )
        if settings.eval_path:
            data = self._data(settings.eval_path if split != 'train' else settings.path)
            return data, np.arange(len(data))
        data = self._data(settings.path)
        if not 0 < settings.test_size < len(data):
            raise DataError(
                f'cannot hold out data.{self.name}.test_size={settings.test_size} of the {len(data)} records in '
                f'{settings.path!r} for evaluation; lower it or give a test set with data.{self.name}.eval_path.'
            )
        return data, split_positions(len(data), settings.test_size, split)

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        if where:
            data = self._data(where)
            return self.test_source(data, np.arange(len(data)))
        data, positions = self._positions(split)
        if split == 'train':
            return self.train_source(data, positions)
        return self.test_source(data, positions)

    def train_source(self, data: TaskRecords, positions: np.ndarray) -> Source:
        return self.train_class(data, positions, self.context.image_size)

    def test_source(self, data: TaskRecords, positions: np.ndarray) -> Source:
        return self.test_class(data, positions, self.context.image_size)

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return self.eval_sets


@SOURCES.register('records_retrieval')
class RetrievalRecordsPlugin(TaskRecordsPlugin):
    """Retrieval fine-tuning: train = (image, caption) pairs with image ids; test = images with all their captions
    (evaluator 'retrieval_ft')."""

    Settings = RetrievalRecordsSettings
    formats = ('retrieval', 'coco_karpathy')
    name = 'records_retrieval'
    train_class = ImageIdPairs
    eval_sets = (('retrieval_ft', '', ''),)

    def test_source(self, data: TaskRecords, positions: np.ndarray) -> Source:
        return TaskRecordSource(data, positions, self.context.image_size, per_record=True)


@SOURCES.register('records_snli_ve')
class SnliVeRecordsPlugin(TaskRecordsPlugin):
    """SNLI-VE (evaluator 'accuracy', reported as eval/snli_ve/accuracy)."""

    Settings = SnliVeRecordsSettings
    formats = ('snli_ve',)
    name = 'records_snli_ve'
    train_class = test_class = SnliVePairs
    eval_sets = (('accuracy', '', 'snli_ve'),)


@SOURCES.register('records_nlvr2')
class Nlvr2RecordsPlugin(TaskRecordsPlugin):
    """NLVR2 (evaluator 'accuracy', reported as eval/nlvr2/accuracy)."""

    Settings = Nlvr2RecordsSettings
    formats = ('nlvr2',)
    name = 'records_nlvr2'
    train_class = test_class = Nlvr2Pairs
    eval_sets = (('accuracy', '', 'nlvr2'),)


@SOURCES.register('records_grounding')
class GroundingRecordsPlugin(TaskRecordsPlugin):
    """Weakly-supervised grounding: trained on box-free (image, expression) pairs with image ids, evaluated on
    expressions with boxes (evaluator 'grounding'); the evaluated folder must be prepared with `--boxes`."""

    Settings = GroundingRecordsSettings
    formats = ('grounding',)
    name = 'records_grounding'
    train_class = ImageIdPairs
    eval_sets = (('grounding', '', ''),)

    def test_source(self, data: TaskRecords, positions: np.ndarray) -> Source:
        if not data.records.index.get('boxes'):
            raise DataError(
                f'{data.directory!r} has no boxes to evaluate grounding on; prepare the test JSON with '
                '--boxes FILE and name it in data.records_grounding.eval_path.'
            )
        return GroundingExpressions(data, positions, self.context.image_size)


@SOURCES.register('records_vqa')
class VqaRecordsPlugin(TaskRecordsPlugin):
    """VQA (objective 'vqa', evaluator 'vqa': eval/vqa/accuracy by ranking the folder's answer list and
    eval/vqa/accuracy_generate)."""

    Settings = VqaRecordsSettings
    formats = ('vqa',)
    name = 'records_vqa'
    eval_sets = (('vqa', '', ''),)

    def train_source(self, data: TaskRecords, positions: np.ndarray) -> Source:
        return VqaQuestions(data, positions, self.context.image_size, self.settings.answer_slots)

    test_source = train_source
