"""Index-addressed, deterministic input pipeline: sampler -> load -> augment -> tokenize -> batch.

The order of examples is a pure function of (seed, epoch); the batch at step k is a
pure function of (seed, k), so a restart at step k reproduces batch k exactly and the
pipeline's whole position is the step number. Each process loads only its slice of
every global batch. Loading runs as parallel host calls in a tf.data graph (why
tf.data: see docs/data.md); decoding (sources that hand encoded images)
and augmentation run as TF image ops. Where TensorFlow is absent (or `data.backend='numpy'`),
in-memory sources take the numpy path instead (data/np_augment.py): the same loader, the same
crop boxes and flips, numpy crops and a thread pool.

A record that fails to load (an empty or damaged record, an image TF cannot decode) never
stops the run: another record stands in for it, drawn from (seed, step, index) alone, so
a resumed run makes the same choice. It is flagged in the batch's 'replaced' key (the
loop counts it as train/bad_records); its 'index' stays the sampler's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from vlp_jax.config import DataSettings
from vlp_jax.data import backend as input_backend
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.errors import DataError
from vlp_jax.data.np_augment import numpy_batches
from vlp_jax.data.sources import Source
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.sampling.base import Sampler

AUGMENT_STREAM = 2  # RNG stream ids keep the augmentations and stand-ins apart (the sampler's order: 1)
REPLACE_STREAM = 3  # which record stands in for one that fails to load
MIN_ASPECT, MAX_ASPECT = 3 / 4, 4 / 3
FLIP_PROBABILITY = 0.5


class TrainPipeline:
    """The training stream: global batch k, this process's rows only, in the order the sampler gives."""

    def __init__(
        self,
        source: Source,
        sampler: Sampler,
        data: DataSettings,
        *,
        seed: int,
        batch_size: int,
        image_size: int,
        max_text_len: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.seed = int(seed)
        self.global_batch_size = int(batch_size)
        assert self.global_batch_size % process_count == 0, 'the checks refuse a batch the processes do not divide'
        self.local_batch_size = self.global_batch_size // process_count
        self.process_index = process_index
        self.source = source
        self.sampler = sampler
        self.field_keys = tuple(source.field_keys)
        self.encoded = bool(source.encoded)
        self.loaded_keys = batch_spec.loaded_keys(self.field_keys, self.encoded)
        self.bad_records: set[int] = set()  # source indices found not to load (grows as they are met)
        self.steps_per_epoch = len(source) // self.global_batch_size
        assert self.steps_per_epoch >= 1
        self.image_size = int(image_size)
        self.crop_scale = tuple(float(s) for s in data.crop_scale)
        self.flip_mode = data.flip
        self.workers = int(data.workers)
        self.prefetch = int(data.prefetch)
        self.backend = input_backend.resolve(data.backend)  # 'tf' | 'numpy'
        self.backend_reason = input_backend.why(data.backend)
        if self.backend == input_backend.NUMPY and self.encoded:
            what = f'data source {source.name!r}' if source.name else 'the training source'
            raise DataError(input_backend.source_problem(data.backend, what))
        self.tokenizer = shared_tokenizer(int(max_text_len))
        # The fast tokenizer sets its padding and truncation on its first call (a write to the Rust object):
        # done here, once, so the parallel loading calls of either path only ever read it.
        self.tokenizer([''])
        self._order_cache: tuple[int, np.ndarray] | None = None

    # -- order ---------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sampler's order of epoch `epoch` (asked once per epoch; a tail short of a batch is dropped)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = np.asarray(self.sampler.epoch_order(epoch), np.int64)
            assert len(order) >= self.steps_per_epoch * self.global_batch_size, (len(order), self.steps_per_epoch)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def global_indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.global_batch_size
        return self.epoch_order(epoch)[start : start + self.global_batch_size]

    def local_indices(self, step: int) -> np.ndarray:
        start = self.process_index * self.local_batch_size
        return self.global_indices(step)[start : start + self.local_batch_size]

    # -- per-example randomness ----------------------------------------------------------
    def _example_choices(
        self, epoch: int, index: int, num_captions: int, flip_sensitive: np.ndarray | None
    ) -> tuple[int, np.ndarray, bool]:
        """Caption slot, crop box (normalised y0, x0, y1, x1) and flip for one example of one epoch."""
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, epoch, int(index)])
        caption = int(rng.integers(num_captions))
        area = rng.uniform(*self.crop_scale)
        aspect = np.exp(rng.uniform(np.log(MIN_ASPECT), np.log(MAX_ASPECT)))
        height = min(1.0, np.sqrt(area / aspect))
        width = min(1.0, np.sqrt(area * aspect))
        top = rng.uniform(0.0, 1.0 - height)
        left = rng.uniform(0.0, 1.0 - width)
        box = np.array([top, left, top + height, left + width], dtype=np.float32)
        wants_flip = rng.random() < FLIP_PROBABILITY
        if self.flip_mode == 'never':
            flip = False
        elif self.flip_mode == 'always':
            flip = wants_flip
        else:  # 'auto': no flip where it would make the caption false ('left'/'right')
            flip = wants_flip and not (flip_sensitive is not None and bool(flip_sensitive[caption]))
        return caption, box, flip

    def stand_in(self, step: int, index: int, tried: set[int]) -> int:
        """The record that replaces `index` at `step`: the first of a seeded sequence not known to be bad."""
        if len(self.bad_records | tried) >= len(self.source):
            raise DataError(f'no record of {self.source.name or "the data set"} loads; prepare it again.')
        rng = np.random.default_rng([self.seed, REPLACE_STREAM, step, int(index)])
        while True:
            candidate = int(rng.integers(len(self.source)))
            if candidate not in self.bad_records and candidate not in tried:
                return candidate

    def _examples(self, step: int, indices: np.ndarray) -> tuple[dict, np.ndarray]:
        """The source's examples for `indices` with every known-bad or empty record replaced;
        also the source index each row really came from."""
        examples = self.source.batch(indices)
        used = np.asarray(indices, np.int64).copy()
        for row, index in enumerate(indices):
            tried: set[int] = set()
            while used[row] in self.bad_records or not _loads(examples, row, self.encoded):
                self.bad_records.add(int(used[row]))
                tried.add(int(used[row]))
                used[row] = self.stand_in(step, index, tried)
                single = self.source.batch(used[row : row + 1])
                for key, value in single.items():
                    if key != 'fields':
                        examples[key][row] = value[0]
                for key, value in single['fields'].items():
                    examples['fields'][key][row] = value[0]
        return examples, used

    def raw_batch(self, step: int) -> dict[str, np.ndarray]:
        """Un-augmented images plus everything needed to augment them (pure function of step).

        Keys: `self.loaded_keys` (batch spec), with the loader dtypes the spec states.
        """
        epoch = step // self.steps_per_epoch
        indices = self.local_indices(step)
        examples, used = self._examples(step, indices)
        sensitive = examples.get('flip_sensitive')
        chosen, captions, boxes, flips = [], [], [], []
        for row, index in enumerate(indices):
            slot, box, flip = self._example_choices(
                epoch, index, len(examples['captions'][row]), None if sensitive is None else sensitive[row]
            )
            chosen.append(slot)
            captions.append(examples['captions'][row][slot])
            boxes.append(box)
            flips.append(flip)
        image_key = 'image_bytes' if self.encoded else 'image'
        images = examples[image_key]
        if self.encoded:
            images = np.empty(len(indices), dtype=object)
            images[:] = examples['image_bytes']
        raw = {
            **self.tokenizer(captions),
            image_key: images,
            'index': indices,
            'crop_box': np.stack(boxes),
            'flip': np.asarray(flips),
            'replaced': used != np.asarray(indices),
        }
        for key in self.field_keys:  # a field of the caption is the chosen caption's
            field, value = batch_spec.FIELDS[key], examples['fields'][key]
            if field.of_caption:
                value = [value[row][slot] for row, slot in enumerate(chosen)]
            raw[key] = self.tokenize_field(field, value) if field.text else value
        raw = {key: np.asarray(value, batch_spec.FIELDS[key].loader_dtype) for key, value in raw.items()}
        batch_spec.check(raw, self.loaded_keys, loaded=True)
        return raw

    def tokenize_field(self, field: batch_spec.Field, values) -> np.ndarray:
        """A text field's strings -> ids: [B] strings -> [B, L]; a rank-3 field (VQA's answers) holds a list of
        strings per example, the same number in every row -> [B, A, L]."""
        if field.rank == 2:
            return self.tokenizer(list(values))['text_ids']
        rows = [list(row) for row in values]
        ids = self.tokenizer([text for row in rows for text in row])['text_ids']
        return ids.reshape(len(rows), -1, ids.shape[-1])

    def find_undecodable(self, step: int) -> int:
        """Marks the records of `step` whose images TF cannot decode as bad; returns how many were found."""
        from vlp_jax.data.tf_augment import decodes

        if not self.encoded:
            return 0
        examples, used = self._examples(step, self.local_indices(step))
        found = 0
        for row, data in enumerate(examples['image_bytes']):
            if not decodes(data):
                self.bad_records.add(int(used[row]))
                found += 1
        return found

    # -- tf.data graph ---------------------------------------------------------------------
    def dataset(self, start_step: int, end_step: int):
        """tf.data.Dataset of augmented batches for steps [start_step, end_step)."""
        from vlp_jax.data.tf_augment import build_dataset  # TensorFlow stays out of the core

        return build_dataset(self, start_step, end_step)

    def batches(self, start_step: int, end_step: int) -> Iterator[dict[str, np.ndarray]]:
        """The chosen backend's batches for steps [start_step, end_step), loaded ahead.

        tf.data: a host thread drains its iterator into a small queue, so the tensor->numpy
        hand-over happens while the train loop is blocked on the device, not on its critical path.
        numpy: a thread pool builds whole batches ahead (data/np_augment.py).
        """
        if self.backend == input_backend.NUMPY:
            return numpy_batches(self, start_step, end_step)
        return _threaded(self.dataset(start_step, end_step).as_numpy_iterator(), self.prefetch)

    def iterate(self, start_step: int, end_step: int) -> Iterator[dict[str, np.ndarray]]:
        """numpy batches for steps [start_step, end_step), loaded ahead by parallel workers (`batches`).

        When a step fails because an image does not decode, its bad records are marked and
        loading restarts at that step, where stand-ins now replace them. A sampler whose next
        order is not known ahead (it waits for this epoch's feedback) is asked for it only when
        that epoch's first batch is: loading stops at each epoch's end.
        """
        step = start_step
        while step < end_step:
            stop = end_step
            if not self.sampler.order_known_ahead:
                stop = min(end_step, (step // self.steps_per_epoch + 1) * self.steps_per_epoch)
            try:
                for batch in self.batches(step, stop):
                    yield batch
                    step += 1
            except Exception:
                if self.backend == input_backend.NUMPY or self.find_undecodable(step) == 0:  # a real error
                    raise


def _loads(examples: dict, row: int, encoded: bool) -> bool:
    """Cheap checks before decoding: the record has captions and, if encoded, some image bytes."""
    return bool(len(examples['captions'][row])) and (not encoded or bool(len(examples['image_bytes'][row])))


def _threaded(iterator: Iterator, buffer: int) -> Iterator:
    """Runs `iterator` in a daemon thread, `buffer` items ahead; re-raises its errors here."""
    items: queue.Queue = queue.Queue(maxsize=max(1, buffer))
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
            items.put(done)
        except BaseException as error:  # surfaced to the consumer below
            items.put(error)

    threading.Thread(target=produce, daemon=True, name='vlp_jax-input').start()
    while True:
        item = items.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
