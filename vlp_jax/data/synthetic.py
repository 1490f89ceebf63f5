"""Procedural "captioned shapes" world: built-in image-text data with ground truth.

Each example is a pure function of (seed, split, index): an RGB image of 1-3
coloured shapes on a plain or textured background, plus captions drawn from a
grammar with synonyms and several detail levels (synthetic_captions.py). Every
caption carries a spec of what it claims, so we can say exactly which captions
are true of which images -- coarse captions are true of many images, giving
the false negatives that web data has, but measurable.

numpy only; `captions_true_of_scenes` and `semantic_ids` also run under
jax.numpy (pass `xp=jnp`) so false-negative rates can be computed in-graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlp_jax.data.synthetic_captions import (
    CAPTION_DRAWS,
    COLOUR,
    COLOURS,
    DETAILS,
    GRID,
    MAX_MENTIONS,
    MAX_OBJECTS,
    NOT_SAID,
    NUM_ATTRIBUTES,
    POSITIONS,
    SHAPE,
    SHAPES,
    SIZES,
    make_caption,
)
from vlp_jax.data.synthetic_render import BG_DRAWS, RenderPlans

__all__ = [
    'SHAPES',
    'COLOURS',
    'SIZES',
    'POSITIONS',
    'MAX_OBJECTS',
    'MAX_MENTIONS',
    'SPLIT_IDS',
    'TEST_CAPTIONS_PER_IMAGE',
    'ShapesWorldConfig',
    'ShapesWorld',
    'captions_true_of_scenes',
    'semantic_ids',
    'classification_set',
    'CLASSIFICATION_TEMPLATES',
]

SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
_CLASSIFY_STREAM = 3  # RNG stream id of classification_set, disjoint from splits
_ATTRIBUTE_COLUMNS = {'shape': SHAPE, 'colour': COLOUR}
TEST_CAPTIONS_PER_IMAGE = 5  # like COCO
MIN_IMAGE_SIZE = 16

CLASSIFICATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    'shape': ('a {}', 'a picture of a {}', 'an image with a {}', 'a {} shape'),
    'colour': ('something {}', 'a shape that is {}', 'an object coloured {}', 'the colour {}'),
}

# Layout of each example's uniform draws (fixed sizes keep streams aligned).
_SCENE_DRAWS = 1 + GRID * GRID + 3 * MAX_OBJECTS + 2 * MAX_OBJECTS  # count, cells, attrs, jitter
_NOISE_DRAWS = 3  # per caption: replace?, which example, which slot


@dataclasses.dataclass(frozen=True)
class ShapesWorldConfig:
    """Options of the shapes world; the test split always has 5 captions per image."""

    image_size: int = 64
    captions_per_image: int = 2  # train/val; test split is always 5
    caption_noise: float = 0.0  # fraction of train captions swapped for another example's
    max_objects: int = 3  # 1..MAX_OBJECTS
    textured_background: float = 0.5  # probability of a textured background
    detail: str = 'mixed'  # 'coarse' | 'mixed' | 'fine'
    twins: bool = False  # train split: odd image = its predecessor with one object's shape changed
    train_size: int = 50_000
    val_size: int = 1_000
    test_size: int = 1_000


def _validate(config: ShapesWorldConfig) -> None:
    checks = [
        (config.image_size >= MIN_IMAGE_SIZE, f'image_size must be >= {MIN_IMAGE_SIZE}'),
        (config.captions_per_image >= 1, 'captions_per_image must be >= 1'),
        (0.0 <= config.caption_noise <= 1.0, 'caption_noise must be in [0, 1]'),
        (1 <= config.max_objects <= MAX_OBJECTS, f'max_objects must be in 1..{MAX_OBJECTS}'),
        (0.0 <= config.textured_background <= 1.0, 'textured_background must be in [0, 1]'),
        (config.detail in DETAILS, f'detail must be one of {DETAILS}'),
        (
            min(config.train_size, config.val_size, config.test_size) >= 1,
            'train_size, val_size and test_size must be >= 1',
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f'Invalid ShapesWorldConfig: {message} (got {config}).')


def _scene(
    u: list[float], max_objects: int, force: tuple[int, int] | None = None
) -> tuple[list[list[int]], list[tuple[float, float]]]:
    """Objects [shape, colour, size, position] in distinct cells, and their jitter in [-1, 1]."""
    n = 1 if force else 1 + min(int(u[0] * max_objects), max_objects - 1)
    cells = sorted(range(GRID * GRID), key=lambda c: u[1 + c])[:n]
    a = 1 + GRID * GRID
    counts = (len(SHAPES), len(COLOURS), len(SIZES))
    objects, jitter = [], []
    for k, cell in enumerate(cells):
        obj = [min(int(u[a + 3 * k + j] * counts[j]), counts[j] - 1) for j in range(3)] + [cell]
        if force:
            obj[force[0]] = force[1]
        objects.append(obj)
        j = a + 3 * MAX_OBJECTS + 2 * k
        jitter.append((2 * u[j] - 1, 2 * u[j + 1] - 1))
    return objects, jitter


def _scene_array(objects: list[list[int]]) -> np.ndarray:
    scene = np.full((MAX_OBJECTS, NUM_ATTRIBUTES), NOT_SAID, np.int32)
    scene[: len(objects)] = objects
    return scene


class ShapesWorld:
    """Random-access source of one split; example i depends only on (seed, split, i).

    Caption noise applies to the train split only: val and test captions are the
    labels evaluation scores against, so they are always written for their own image.
    """

    def __init__(self, config: ShapesWorldConfig, seed: int, split: str):
        if split not in SPLIT_IDS:
            raise ValueError(f'split must be one of {tuple(SPLIT_IDS)}, got {split!r}.')
        if int(seed) < 0:
            raise ValueError(f'seed must be a non-negative integer, got {seed}.')
        _validate(config)
        self.config, self.seed, self.split = config, int(seed), split
        self._size = {'train': config.train_size, 'val': config.val_size, 'test': config.test_size}[split]
        self._captions = TEST_CAPTIONS_PER_IMAGE if split == 'test' else config.captions_per_image
        self._noise = config.caption_noise if split == 'train' else 0.0
        self._twins = config.twins and split == 'train'
        self._draws = _SCENE_DRAWS + BG_DRAWS + self._captions * (CAPTION_DRAWS + _NOISE_DRAWS)

    def __len__(self) -> int:
        return self._size

    @property
    def captions_per_image(self) -> int:
        return self._captions

    def _uniforms(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])
        return rng.random(self._draws)

    @property
    def block(self) -> int:
        """Consecutive indices that belong in one batch: 2 for twins (a twin is only a hard negative beside
        its sibling), else 1."""
        return 2 if self._twins else 1

    def _layout(self, index: int, draws: np.ndarray) -> tuple[list[list[int]], list, np.ndarray]:
        """Objects, jitter and background draws of one image. A twin (odd index, `twins` on) copies its even
        predecessor's scene and background and changes one object's shape, chosen by its own scene draws, so
        the pair differs in that object's shape alone: a negative only shape separates."""
        if not (self._twins and index % 2):
            return (*_scene(draws.tolist(), self.config.max_objects), draws[_SCENE_DRAWS : _SCENE_DRAWS + BG_DRAWS])
        sibling = self._uniforms(index - 1)
        objects, jitter = _scene(sibling.tolist(), self.config.max_objects)
        k = min(int(draws[0] * len(objects)), len(objects) - 1)
        shift = 1 + min(int(draws[1] * (len(SHAPES) - 1)), len(SHAPES) - 2)
        objects[k][SHAPE] = (objects[k][SHAPE] + shift) % len(SHAPES)
        return objects, jitter, sibling[_SCENE_DRAWS : _SCENE_DRAWS + BG_DRAWS]

    def _clean(self, index: int, draws: np.ndarray):
        """Scene, jitter, background draws and noise-free captions of one example from its uniform draws."""
        objects, jitter, background = self._layout(index, draws)
        start = _SCENE_DRAWS + BG_DRAWS
        u = draws.tolist()
        captions = [
            make_caption(objects, u[start + c * CAPTION_DRAWS : start + (c + 1) * CAPTION_DRAWS], self.config.detail)
            for c in range(self._captions)
        ]
        return objects, jitter, background, captions

    def content(self, index: int) -> tuple[list[list[int]], list]:
        """(objects, noise-free captions) of example `index` without rendering: what task generators judge."""
        i = self._check(index)
        objects, _, _, captions = self._clean(i, self._uniforms(i))
        return objects, captions

    def _check(self, index: Any) -> int:
        i = int(index)
        if i != index or not 0 <= i < self._size:
            raise IndexError(f'index {index!r} out of range for the {self.split} split of size {self._size}.')
        return i

    def batch(self, indices: np.ndarray) -> dict:
        """Examples at `indices`, stacked; row b is bit-identical to example(indices[b])."""
        indices = [self._check(i) for i in np.asarray(indices).reshape(-1)]
        size, c_n, s = len(indices), self._captions, self.config.image_size
        plans = RenderPlans(size, self.config.textured_background)
        out = {
            'captions': [],
            'caption_spec': np.empty((size, c_n, MAX_MENTIONS, NUM_ATTRIBUTES), np.int32),
            'lateral': np.empty((size, c_n), bool),
            'scene': np.empty((size, MAX_OBJECTS, NUM_ATTRIBUTES), np.int32),
        }
        noise_start = _SCENE_DRAWS + BG_DRAWS + c_n * CAPTION_DRAWS
        for b, index in enumerate(indices):
            draws = self._uniforms(index)
            u = draws.tolist()
            objects, jitter, background, captions = self._clean(index, draws)
            for c in range(c_n):
                replace, other, slot = u[noise_start + c * _NOISE_DRAWS : noise_start + (c + 1) * _NOISE_DRAWS]
                if replace < self._noise and self._size > 1:
                    j = (index + 1 + min(int(other * (self._size - 1)), self._size - 2)) % self._size
                    captions[c] = self._clean(j, self._uniforms(j))[3][min(int(slot * c_n), c_n - 1)]
            out['captions'].append([text for text, _, _ in captions])
            out['caption_spec'][b] = [spec for _, spec, _ in captions]
            out['lateral'][b] = [lateral for _, _, lateral in captions]
            out['scene'][b] = _scene_array(objects)
            plans.add(b, objects, jitter, s, background)
        out['image'] = plans.render(s)
        out['sem'] = semantic_ids(out['caption_spec'])
        return out

    def example(self, index: int) -> dict:
        """One example: image [H,W,3] uint8, captions list[str], caption_spec [C,2,4], sem, lateral, scene."""
        self._check(index)
        row = self.batch(np.array([index]))
        return {key: value[0] for key, value in row.items()}


def _mention_radices() -> tuple[int, ...]:
    return (len(SHAPES) + 1, len(COLOURS) + 1, len(SIZES) + 1, len(POSITIONS) + 1)


MENTION_CODES = int(np.prod(_mention_radices()))  # distinct mention rows, incl. "no mention"


def semantic_ids(caption_specs: Any, xp: Any = np) -> Any:
    """Canonical int32 id of each spec [..., 2, 4]: equal claims (synonyms, mention order) -> equal id."""
    code = xp.zeros(caption_specs.shape[:-1], dtype=xp.int32)
    for a, radix in enumerate(_mention_radices()):
        code = code * radix + (caption_specs[..., a].astype(xp.int32) + 1)
    hi = xp.maximum(code[..., 0], code[..., 1])
    lo = xp.minimum(code[..., 0], code[..., 1])
    return (hi * MENTION_CODES + lo).astype(xp.int32)


def captions_true_of_scenes(caption_specs: Any, scenes: Any, xp: Any = np) -> Any:
    """bool [Nc, Ni]: can each caption's mentions be matched to distinct objects of each scene?

    A mention matches an object when every attribute it states (!= -1) agrees;
    an all -1 mention is absent and needs no object. Works with numpy or jax.numpy.
    """
    if caption_specs.shape[-2] != MAX_MENTIONS:
        raise ValueError(f'caption_specs must have {MAX_MENTIONS} mentions, got shape {caption_specs.shape}.')
    spec = caption_specs[:, None, :, None, :]  # [Nc, 1, M, 1, A]
    objs = scenes[None, :, None, :, :]  # [1, Ni, 1, O, A]
    match = (scenes[:, :, SHAPE] >= 0)[None, :, None, :]  # padded objects match nothing
    for a in range(NUM_ATTRIBUTES):
        s = spec[..., a]
        match = match & ((s < 0) | (s == objs[..., a]))  # [Nc, Ni, M, O]
    present = xp.any(caption_specs >= 0, axis=-1)[:, None, :]  # [Nc, 1, M]
    single_ok = ~present | xp.any(match, axis=-1)  # [Nc, Ni, M]
    n_obj = scenes.shape[1]
    first = np.array([i for i in range(n_obj) for j in range(n_obj) if i != j])
    second = np.array([j for i in range(n_obj) for j in range(n_obj) if i != j])
    pair_ok = xp.any(match[:, :, 0, first] & match[:, :, 1, second], axis=-1)
    both = present[..., 0] & present[..., 1]
    return single_ok[..., 0] & single_ok[..., 1] & (~both | pair_ok)


def classification_set(config: ShapesWorldConfig, seed: int, size: int, attribute: str) -> dict:
    """Zero-shot classification images with exactly one object, classes balanced (label = i % classes).

    Drawn from its own RNG stream, so no image coincides by construction with a split's.
    """
    if attribute not in _ATTRIBUTE_COLUMNS:
        raise ValueError(f'attribute must be one of {tuple(_ATTRIBUTE_COLUMNS)}, got {attribute!r}.')
    if size < 1 or int(seed) < 0:
        raise ValueError(f'size must be >= 1 and seed >= 0, got size={size}, seed={seed}.')
    _validate(config)
    column = _ATTRIBUTE_COLUMNS[attribute]
    names = SHAPES if attribute == 'shape' else COLOURS
    plans = RenderPlans(size, config.textured_background)
    labels = np.arange(size, dtype=np.int32) % len(names)
    for i in range(size):
        rng = np.random.default_rng([int(seed), _CLASSIFY_STREAM, column, i])
        draws = rng.random(_SCENE_DRAWS + BG_DRAWS)
        objects, jitter = _scene(draws.tolist(), 1, force=(column, int(labels[i])))
        plans.add(i, objects, jitter, config.image_size, draws[_SCENE_DRAWS:])
    return {'image': plans.render(config.image_size), 'label': labels, 'class_names': list(names)}
