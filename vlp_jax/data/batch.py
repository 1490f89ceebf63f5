"""The batch spec: the one list of batch keys, with each key's dtype, rank and meaning.

A batch is a dict of arrays whose leading axis is the batch. Four keys are required
for training. The rest are declared fields a source may give (its `field_keys`), each one value
per example or, `of_caption`, one per caption (the pipeline keeps the chosen caption's):
probe fields are facts about an example (the synthetic world's ground truth) that diagnostics
read and the loss never does; task fields are what a downstream task's objective reads beside
the pair (a class label, the image id that makes captions of one image positives, NLVR2's second
image). An `image` field is loaded as uint8 pixels and cropped, flipped and normalised like
'image' (with the example's own crop box and flip); a `text` field is given as strings and
tokenised like the caption. Augmentation keys are produced by the loader and consumed by the
augmentation graph, so they never reach the step. The loader, the augmentation graph, the step's
shardings and the probes all read this module; a plug-in declares a field of its own with
`declare_field`, and no other file lists batch keys.

numpy only: the core (steps, parallel) imports it without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

REQUIRED = 'required'
PROBE = 'probe'
TASK = 'task'
AUGMENT = 'augment'
LOADER = 'loader'  # how the loader made the batch: the loop reads it, the step never does

# The model's image input: uint8 pixels p are fed as (p / 255 - PIXEL_MEAN) / PIXEL_STD, in [-1, 1].
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


@dataclasses.dataclass(frozen=True)
class Field:
    dtype: type
    rank: int  # including the leading batch axis
    kind: str  # REQUIRED | PROBE | TASK | AUGMENT | LOADER
    meaning: str
    loaded_dtype: type | None = None  # dtype as the loader hands it over, if the augmentation graph changes it
    of_caption: bool = False  # a field of the caption (sources give one per caption) rather than of the image
    image: bool = False  # pixels: uint8 [B, H, W, 3] loaded, augmented and normalised like 'image'
    text: bool = False  # token ids [B, L] of a string the source gives, tokenised like the caption

    @property
    def loader_dtype(self) -> type:
        return self.loaded_dtype or self.dtype


FIELDS: dict[str, Field] = {
    'image': Field(
        np.float32,
        4,
        REQUIRED,
        '[B, H, W, 3] pixels normalised to [-1, 1] (PIXEL_MEAN, PIXEL_STD)',
        loaded_dtype=np.uint8,
    ),
    'text_ids': Field(np.int32, 2, REQUIRED, '[B, L] WordPiece ids of the caption, [CLS] first, [PAD] = 0'),
    'text_mask': Field(np.int32, 2, REQUIRED, '[B, L] 1 for real tokens, 0 for padding'),
    'index': Field(np.int64, 1, REQUIRED, '[B] dataset index of the example (samplers key on it)'),
    'sem': Field(np.int32, 1, PROBE, '[B] canonical id of what the caption claims (synthetic data)', of_caption=True),
    'caption_spec': Field(
        np.int32, 3, PROBE, '[B, mentions, attributes] what the caption claims (synthetic data)', of_caption=True
    ),
    'scene': Field(np.int32, 3, PROBE, '[B, objects, attributes] what the image holds (synthetic data)'),
    'image_id': Field(
        np.int64, 1, TASK, "[B] the id of the example's image: captions of one image share it (retrieval positives)"
    ),
    'label': Field(
        np.int32, 1, TASK, "[B] the class of the example's pair (NLVR2 true/false, SNLI-VE 3 classes)", of_caption=True
    ),
    'image1': Field(
        np.float32,
        4,
        TASK,
        "[B, H, W, 3] a second image (NLVR2's right image), normalised like 'image'",
        loaded_dtype=np.uint8,
        image=True,
    ),
    'crop_box': Field(np.float32, 2, AUGMENT, '[B, 4] random resized crop, normalised (y0, x0, y1, x1)'),
    'flip': Field(np.bool_, 1, AUGMENT, '[B] flip the image horizontally'),
    'image_bytes': Field(
        np.object_, 1, AUGMENT, '[B] encoded images (JPEG/PNG/WebP/GIF/BMP) of sources that hand them undecoded'
    ),
    'replaced': Field(np.bool_, 1, LOADER, '[B] the record failed to load and another stands in (train/bad_records)'),
}

REQUIRED_KEYS = tuple(key for key, field in FIELDS.items() if field.kind == REQUIRED)
PROBE_KEYS = tuple(key for key, field in FIELDS.items() if field.kind == PROBE)
AUGMENT_KEYS = tuple(key for key, field in FIELDS.items() if field.kind == AUGMENT and key != 'image_bytes')
LOADER_KEYS = tuple(key for key, field in FIELDS.items() if field.kind == LOADER)
# The model's inputs, in the order the towers take them.
MODEL_INPUT_KEYS = ('image', 'text_ids', 'text_mask')
# What the ground-truth probe needs: which caption is true of which image.
GROUND_TRUTH_KEYS = ('caption_spec', 'scene')
assert set(MODEL_INPUT_KEYS) <= set(REQUIRED_KEYS) and set(GROUND_TRUTH_KEYS) <= set(PROBE_KEYS)


DECLARED_KINDS = (PROBE, TASK)  # the kinds a source gives as fields


def declare_field(key: str, field: Field) -> Field:
    """Adds a plug-in's own field to the spec (a task's answer text, its boxes); declaring the same field
    twice is harmless, another field under a taken key is an error."""
    assert field.kind in DECLARED_KINDS, f'a declared field is a probe or a task field, not {field.kind!r}'
    assert not (field.image and field.text), 'a field is an image or a text, not both'
    existing = FIELDS.get(key)
    assert existing is None or existing == field, f'batch key {key!r} is declared already as {existing}'
    FIELDS[key] = field
    return field


def ndim(key: str) -> int:
    return FIELDS[key].rank


def is_declared(key: str) -> bool:
    return key in FIELDS and FIELDS[key].kind in DECLARED_KINDS


def image_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The image fields among `keys` ('image' first when present): what augmentation crops and normalises."""
    return tuple(key for key in keys if key == 'image' or (key in FIELDS and FIELDS[key].image))


def loaded_keys(field_keys: Iterable[str] = (), encoded: bool = False) -> tuple[str, ...]:
    """Keys the loader hands to the augmentation graph: required, the given fields, augmentation, loader facts.

    `encoded`: the source hands encoded images ('image_bytes'), which the graph decodes into 'image'.
    """
    fields = tuple(field_keys)
    unknown = [key for key in fields if not is_declared(key)]
    assert not unknown, f'not declared fields of the batch spec: {unknown}'
    assert not (encoded and image_keys(fields)), 'encoded sources give one image per example'
    required = tuple('image_bytes' if encoded and key == 'image' else key for key in REQUIRED_KEYS)
    return (*required, *fields, *AUGMENT_KEYS, *LOADER_KEYS)


def step_keys(field_keys: Iterable[str] = ()) -> tuple[str, ...]:
    """Keys a train step receives: the required ones plus the fields that its objective and probes read."""
    return tuple(dict.fromkeys((*REQUIRED_KEYS, *field_keys)))


def select(batch: Mapping[str, np.ndarray], keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The batch restricted to `keys` (every one must be present)."""
    missing = [key for key in keys if key not in batch]
    assert not missing, f'batch lacks {missing}; it has {sorted(batch)}'
    return {key: batch[key] for key in keys}


def check(batch: Mapping[str, np.ndarray], keys: Iterable[str], loaded: bool = False) -> None:
    """Asserts that `batch` has exactly `keys` with the spec's dtypes and ranks (loader output if `loaded`)."""
    keys = tuple(keys)
    assert set(batch) == set(keys), f'batch keys {sorted(batch)} != expected {sorted(keys)}'
    for key in keys:
        field, value = FIELDS[key], np.asarray(batch[key])
        dtype = field.loader_dtype if loaded else field.dtype
        assert value.dtype == dtype and value.ndim == field.rank, (key, value.dtype, value.shape, dtype, field.rank)


def normalise_images(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the model's float32 input range (the 'image' key's meaning)."""
    return ((images_uint8.astype(np.float32) / 255.0) - PIXEL_MEAN) / PIXEL_STD


def example_batch(
    batch_size: int, image_size: int, text_len: int, seed: int = 0, keys: Iterable[str] = REQUIRED_KEYS
) -> dict[str, np.ndarray]:
    """A random host batch of `keys` (the required ones by default; image, text and other fields too, their extra
    axes of size 1): for benchmarks, FLOP counts and tests that need no data set."""
    rng = np.random.default_rng(seed)
    fields = FIELDS
    batch = {
        'image': rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(fields['image'].dtype),
        'text_ids': rng.integers(1000, 2000, (batch_size, text_len)).astype(fields['text_ids'].dtype),
        'text_mask': np.ones((batch_size, text_len), fields['text_mask'].dtype),
        'index': np.arange(batch_size, dtype=fields['index'].dtype),
    }
    for key in keys:
        if key in batch:
            continue
        field = fields[key]
        if field.image:
            batch[key] = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(field.dtype)
        elif field.text:  # [B, L], or [B, 1, L] for a field of several texts per example
            shape = (batch_size,) + (1,) * (field.rank - 2) + (text_len,)
            batch[key] = rng.integers(1000, 2000, shape).astype(field.dtype)
        else:  # [B], or [B, 1, ...] for a field of more axes
            batch[key] = np.arange(batch_size).reshape((batch_size,) + (1,) * (field.rank - 1)).astype(field.dtype)
    return {key: batch[key] for key in keys}
