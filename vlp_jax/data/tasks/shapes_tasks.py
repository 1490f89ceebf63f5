"""The fine-tuning tasks generated from the shapes world, with exact ground truth (data/synthetic.py).

Every example is a pure function of (seed, split, index). Truth comes from the scene specs through
`captions_true_of_scenes`, never from what a model sees.

- 'shapes_retrieval' (retrieval fine-tuning): one example per (image, caption) pair, as ALBEF's retrieval
  json lists them, with the pair's `image_id` (the image's index): the captions of one image are each
  other's positives. Its 'val'/'test' splits are the world's own retrieval sets (every image with 5 captions).
- 'shapes_snli_ve' (SNLI-VE): premise = a scene image; hypothesis = one of its own captions (entailment), a
  caption of another scene that is false of this one (contradiction), or one of its own captions followed by
  a claim no image can show ("made of wood": neutral). A contradiction carries such a claim half of the time,
  so the claim alone does not decide. Labels 0 entailment, 1 neutral, 2 contradiction (SNLI-VE's order).
- 'shapes_nlvr2' (NLVR2): two scene images (left = 'image', right = 'image1') and a statement "the left image
  shows C" / "the right image shows C" / "both images show C" for a caption C of either scene or another one;
  label 1 when it is true of the scene(s) it names, else 0 (drawn first: balanced classes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlp_jax.config import key, positive_int
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import Source, SourceContext, SourcePlugin
from vlp_jax.data.synthetic import (
    COLOURS,
    DETAILS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    SPLIT_IDS,
    ShapesWorld,
    ShapesWorldConfig,
    _scene_array,
    captions_true_of_scenes,
)
from vlp_jax.data.synthetic_captions import COLOUR, GRID, POSITION, SHAPE, SIZE
from vlp_jax.data.synthetic_source import ShapesSource
from vlp_jax.registry import SOURCES

TASK_STREAM = 104_729  # keeps a task's own draws apart from the world's
SNLI_LABELS = ('entailment', 'neutral', 'contradiction')
ENTAILMENT, NEUTRAL, CONTRADICTION = range(3)
UNSEEN_CLAIMS = ('made of wood', 'made of paper', 'drawn yesterday', 'that is heavy')
NLVR2_TEMPLATES = ('the left image shows {}', 'the right image shows {}', 'both images show {}')
CONTRADICTION_TRIES = 64
NLVR2_TRIES = 256


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """A synthetic fine-tuning task's size (scenes of the shapes world, its own seed stream) and captions."""

    train_size: int = key(4000, 'training examples', check=positive_int)
    test_size: int = key(300, 'test examples (retrieval: test images, 5 captions each)', check=positive_int)
    captions_per_image: int = key(2, 'captions per training image', check=positive_int)
    detail: str = key(
        'coarse',
        "caption detail: 'coarse' (configs/shapes_albef.py pretrains on it) | 'mixed' | 'fine'",
        choices=DETAILS,
    )


# One settings class per source: a config group is found by its dataclass (config.settings_of).
@dataclasses.dataclass(frozen=True)
class RetrievalTaskSettings(TaskSettings):
    """Synthetic retrieval fine-tuning: training images (each caption an example), test images."""


@dataclasses.dataclass(frozen=True)
class SnliVeTaskSettings(TaskSettings):
    """Synthetic SNLI-VE: examples (one premise image each)."""


@dataclasses.dataclass(frozen=True)
class Nlvr2TaskSettings(TaskSettings):
    """Synthetic NLVR2: examples (two images each)."""


@dataclasses.dataclass(frozen=True)
class GroundingTaskSettings(TaskSettings):
    """Synthetic grounding: training images (box-free pairs), test images (scenes without a nameable object
    of 2+ objects are left out)."""


def _world(settings: TaskSettings, context: SourceContext, images: int, test_images: int) -> ShapesWorldConfig:
    return ShapesWorldConfig(
        image_size=int(context.image_size),
        captions_per_image=settings.captions_per_image,
        detail=settings.detail,
        train_size=images,
        val_size=test_images,
        test_size=test_images,
    )


class _SceneText:
    """A world split's scenes and captions without rendering (for choosing and judging task texts)."""

    def __init__(self, world: ShapesWorld):
        self.world = world

    def scene(self, index: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """(scene [objects, attributes], [(caption, spec)]) of one image."""
        objects, _, captions = self.world._clean(index, self.world._uniforms(index).tolist())
        return _scene_array(objects), [(text, np.asarray(spec, np.int32)) for text, spec, _ in captions]


def true_of(spec: np.ndarray, scene: np.ndarray) -> bool:
    return bool(captions_true_of_scenes(spec[None], scene[None])[0, 0])


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], int(index), TASK_STREAM])


class RetrievalPairs(Source):
    """One example per (image, caption) pair of a world split, with the image's id."""

    field_keys = ('image_id',)

    def __init__(self, world: ShapesWorld):
        self.world = world
        self.per_image = world.captions_per_image

    def __len__(self) -> int:
        return len(self.world) * self.per_image

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, np.int64)
        images, slots = indices // self.per_image, indices % self.per_image
        examples = self.world.batch(images)
        return {
            'image': examples['image'],
            'captions': [[captions[slot]] for captions, slot in zip(examples['captions'], slots)],
            'fields': {'image_id': images},
        }


@SOURCES.register('shapes_retrieval')
class ShapesRetrievalPlugin(SourcePlugin):
    """Retrieval fine-tuning on the shapes world: train = (image, caption) pairs with image ids; test = images
    with their 5 captions (evaluator 'retrieval_ft')."""

    Settings = RetrievalTaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        if where:
            raise DataError(f"source 'shapes_retrieval' has no set {where!r}")
        settings = self.settings
        world = ShapesWorld(
            _world(settings, self.context, settings.train_size, settings.test_size), self.context.seed, split
        )
        return RetrievalPairs(world) if split == 'train' else ShapesSource(world)

    def train_size(self) -> int:
        return self.settings.train_size * self.settings.captions_per_image

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('retrieval_ft', '', ''),)


class SnliVeSource(Source):
    """SNLI-VE examples of a world split: premise image, hypothesis (the one caption), its label."""

    field_keys = ('label',)
    class_names = SNLI_LABELS

    def __init__(self, world: ShapesWorld, size: int):
        self.world, self.size, self.scenes = world, size, _SceneText(world)

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[str, int]:
        """(hypothesis, label) of example `index` (its premise is the world's image `index`)."""
        rng = _rng(self.world.seed, self.world.split, index)
        label = int(rng.integers(3))
        scene, captions = self.scenes.scene(index)
        claim = UNSEEN_CLAIMS[int(rng.integers(len(UNSEEN_CLAIMS)))]
        if label != CONTRADICTION:
            text = captions[int(rng.integers(len(captions)))][0]
            return (text if label == ENTAILMENT else f'{text} {claim}'), label
        for _ in range(CONTRADICTION_TRIES):  # a caption of another scene that is false of this one
            other = int(rng.integers(len(self.world)))
            text, spec = self.scenes.scene(other)[1][int(rng.integers(self.world.captions_per_image))]
            if not true_of(spec, scene):
                return (f'{text} {claim}' if rng.random() < 0.5 else text), CONTRADICTION
        raise DataError(f'no contradicting caption found for SNLI-VE example {index}')

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, np.int64)
        made = [self.example(int(i)) for i in indices]
        return {
            'image': self.world.batch(indices)['image'],
            'captions': [[text] for text, _ in made],
            'fields': {'label': np.asarray([[label] for _, label in made], np.int32)},
        }


class Nlvr2Source(Source):
    """NLVR2 examples of a world split: images 2i and 2i + 1, a statement, its truth."""

    field_keys = ('label', 'image1')

    def __init__(self, world: ShapesWorld, size: int):
        self.world, self.size, self.scenes = world, size, _SceneText(world)

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[str, int]:
        """(statement, label) of example `index`: the label is drawn first (balanced classes), then captions of
        the pair or of other scenes are tried until the statement has that truth (a 'both' statement falls back
        to a one-image template now and then, as few captions are true of two scenes)."""
        rng = _rng(self.world.seed, self.world.split, index)
        left, right = self.scenes.scene(2 * index), self.scenes.scene(2 * index + 1)
        label = int(rng.integers(2))
        which = int(rng.integers(len(NLVR2_TEMPLATES)))
        for attempt in range(NLVR2_TRIES):
            if attempt % 32 == 31:
                which = int(rng.integers(2))
            other = int(rng.integers(len(self.world)))
            donor = (left, right, self.scenes.scene(other))[int(rng.integers(3))]
            text, spec = donor[1][int(rng.integers(len(donor[1])))]
            truths = (true_of(spec, left[0]), true_of(spec, right[0]))
            if int(truths[which] if which < 2 else truths[0] and truths[1]) == label:
                return NLVR2_TEMPLATES[which].format(text), label
        raise DataError(f'no NLVR2 statement of label {label} found for example {index}')

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, np.int64)
        made = [self.example(int(i)) for i in indices]
        images = self.world.batch(np.stack([2 * indices, 2 * indices + 1], axis=1).ravel())['image']
        return {
            'image': images[0::2],
            'captions': [[text] for text, _ in made],
            'fields': {'label': np.asarray([[label] for _, label in made], np.int32), 'image1': images[1::2]},
        }


@SOURCES.register('shapes_snli_ve')
class ShapesSnliVePlugin(SourcePlugin):
    """SNLI-VE on the shapes world (evaluator 'accuracy', reported as eval/snli_ve/accuracy)."""

    Settings = SnliVeTaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        size = self.settings.train_size if split == 'train' else self.settings.test_size
        world = ShapesWorld(_world(self.settings, self.context, max(size, 1), max(size, 1)), self.context.seed, split)
        return SnliVeSource(world, size)

    def train_size(self) -> int:
        return self.settings.train_size

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('accuracy', '', 'snli_ve'),)


@SOURCES.register('shapes_nlvr2')
class ShapesNlvr2Plugin(SourcePlugin):
    """NLVR2 on the shapes world (evaluator 'accuracy', reported as eval/nlvr2/accuracy)."""

    Settings = Nlvr2TaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        size = self.settings.train_size if split == 'train' else self.settings.test_size
        world = ShapesWorld(_world(self.settings, self.context, 2 * size, 2 * size), self.context.seed, split)
        return Nlvr2Source(world, size)

    def train_size(self) -> int:
        return self.settings.train_size

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('accuracy', '', 'nlvr2'),)


def cell_box(cell: int, image_size: int) -> np.ndarray:
    """[x, y, w, h] in pixels of grid cell `cell` (row-major): an object's box (objects never leave their cell)."""
    side = image_size / GRID
    row, col = divmod(int(cell), GRID)
    return np.asarray([col * side, row * side, side, side], np.float32)


def referring_expression(scene: np.ndarray, target: int) -> str | None:
    """'the red circle' (or 'the small red circle') naming object `target` of `scene` alone, or None when its
    shape, colour and size together do not single it out."""
    objects = scene[scene[:, SHAPE] >= 0]
    me = objects[target]
    for columns in ((SHAPE, COLOUR), (SIZE, SHAPE, COLOUR)):
        same = np.all(objects[:, columns] == me[list(columns)], axis=1)
        if same.sum() == 1:
            words = {SHAPE: SHAPES[me[SHAPE]], COLOUR: COLOURS[me[COLOUR]], SIZE: SIZES[me[SIZE]]}
            order = [SIZE, COLOUR, SHAPE] if SIZE in columns else [COLOUR, SHAPE]
            return 'the ' + ' '.join(words[c] for c in order)
    return None


class GroundingSource(Source):
    """Referring expressions of a world split: scenes of at least two objects, one object named by shape and
    colour (and size where needed), its box and every object's box as the proposals (-1 rows pad)."""

    def __init__(self, world: ShapesWorld):
        self.world, self.scenes = world, _SceneText(world)
        self.items = []  # (world image, target object, expression)
        for index in range(len(world)):
            scene = self.scenes.scene(index)[0]
            count = int((scene[:, SHAPE] >= 0).sum())
            if count < 2:
                continue
            target = int(_rng(world.seed, world.split, index).integers(count))
            expression = referring_expression(scene, target)
            if expression is not None:
                self.items.append((index, target, expression))

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        items = [self.items[int(i)] for i in np.asarray(indices)]
        size = self.world.config.image_size
        boxes = np.zeros((len(items), 4), np.float32)
        proposals = np.full((len(items), MAX_OBJECTS, 4), -1.0, np.float32)
        for row, (index, target, _) in enumerate(items):
            scene = self.scenes.scene(index)[0]
            cells = scene[scene[:, SHAPE] >= 0, POSITION]
            boxes[row] = cell_box(cells[target], size)
            proposals[row, : len(cells)] = [cell_box(cell, size) for cell in cells]
        return {
            'image': self.world.batch(np.asarray([index for index, _, _ in items]))['image'],
            'captions': [[expression] for _, _, expression in items],
            'fields': {'box': boxes, 'proposals': proposals},
        }


@SOURCES.register('shapes_grounding')
class ShapesGroundingPlugin(SourcePlugin):
    """Weakly-supervised grounding on the shapes world: trained on box-free (image, caption) pairs with image ids
    (as 'shapes_retrieval'), evaluated on referring expressions with boxes (evaluator 'grounding')."""

    Settings = GroundingTaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        settings = self.settings
        world = ShapesWorld(
            _world(settings, self.context, settings.train_size, settings.test_size), self.context.seed, split
        )
        return RetrievalPairs(world) if split == 'train' else GroundingSource(world)

    def train_size(self) -> int:
        return self.settings.train_size * self.settings.captions_per_image

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('grounding', '', ''),)
