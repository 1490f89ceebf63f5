"""The fine-tuning tasks generated from the shapes world, with exact ground truth (data/synthetic.py).

Every example is a pure function of (seed, split, index). Truth comes from the scene specs through
`captions_true_of_scenes`, never from what a model sees.

- 'shapes_retrieval' (retrieval fine-tuning): one example per (image, caption) pair, as ALBEF's retrieval
  json lists them, with the pair's `image_id` (the image's index): the captions of one image are each
  other's positives. Its 'val'/'test' splits are the world's own retrieval sets (every image with 5 captions).
- 'shapes_snli_ve' (SNLI-VE): hypothesis "a <colour> <shape>" (the world's synonyms and prefixes); premise = a
  pool scene of three objects with one of them painted grey, so its colour cannot be seen. Entailment: another object is
  a <colour> <shape>; neutral: none is, but the grey object is a <shape> (it may or may not be <colour>);
  contradiction: neither. Labels 0 entailment, 1 neutral, 2 contradiction (SNLI-VE's order).
- 'shapes_nlvr2' (NLVR2): two pool scene images (left = 'image', right = 'image1') and a statement "the left
  image shows C" / "the right image shows C" / "both images show C" for a caption C of a random scene; label 1
  when it is true of the scene(s) it names, else 0.

In both, the text (template and caption / hypothesis) and the label are drawn independently of each other and
the images are then drawn from a pool of the split's scenes to give the statement that label, so the text
alone is at chance (tests/test_finetune_tasks.py checks a text-only classifier).
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
    SHAPES,
    SPLIT_IDS,
    ShapesWorld,
    ShapesWorldConfig,
    _scene,
    _scene_array,
    captions_true_of_scenes,
)
from vlp_jax.data.synthetic_captions import COLOUR, COLOUR_WORDS, GRID, POSITION, PREFIXES, SHAPE, SHAPE_WORDS
from vlp_jax.data.synthetic_render import COLOUR_RGB
from vlp_jax.data.synthetic_source import ShapesSource
from vlp_jax.registry import SOURCES

TASK_STREAM = 104_729  # keeps a task's own draws apart from the world's
SNLI_LABELS = ('entailment', 'neutral', 'contradiction')
ENTAILMENT, NEUTRAL, CONTRADICTION = range(3)
NLVR2_TEMPLATES = ('the left image shows {}', 'the right image shows {}', 'both images show {}')


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


def task_world(settings: TaskSettings, context: SourceContext, images: int, test_images: int) -> ShapesWorldConfig:
    return ShapesWorldConfig(
        image_size=int(context.image_size),
        captions_per_image=settings.captions_per_image,
        detail=settings.detail,
        train_size=images,
        val_size=test_images,
        test_size=test_images,
    )


class SceneText:
    """A world split's scenes and captions without rendering (for choosing and judging task texts)."""

    def __init__(self, world: ShapesWorld):
        self.world = world

    def scene(self, index: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """(scene [objects, attributes], [(caption, spec)]) of one image."""
        objects, captions = self.world.content(index)
        return _scene_array(objects), [(text, np.asarray(spec, np.int32)) for text, spec, _ in captions]


def true_of(spec: np.ndarray, scene: np.ndarray) -> bool:
    return bool(captions_true_of_scenes(spec[None], scene[None])[0, 0])


def task_rng(seed: int, split: str, index: int) -> np.random.Generator:
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
            task_world(settings, self.context, settings.train_size, settings.test_size), self.context.seed, split
        )
        return RetrievalPairs(world) if split == 'train' else ShapesSource(world)

    def train_size(self) -> int:
        return self.settings.train_size * self.settings.captions_per_image

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('retrieval_ft', '', ''),)


HIDDEN_GREY = np.asarray((170, 170, 170), np.uint8)  # no COLOUR_RGB entry, no background value (<= 137)
POOL_MIN = 1000  # premise / pair images are drawn from a split pool of at least this many scenes


def _pool_scenes(world: ShapesWorld) -> np.ndarray:
    """int32 [N, MAX_OBJECTS, 4] scene rows of every image of `world` (no captions, no rendering)."""
    return np.stack(
        [_scene_array(_scene(world._uniforms(i).tolist(), world.config.max_objects)[0]) for i in range(len(world))]
    )


def hypothesis_text(shape: int, colour: int, rng: np.random.Generator) -> str:
    """'there is a crimson disc': a prefix, an article, a colour and a shape synonym (the world's words)."""
    colour_word = COLOUR_WORDS[colour][int(rng.integers(len(COLOUR_WORDS[colour])))]
    shape_word = SHAPE_WORDS[shape][int(rng.integers(len(SHAPE_WORDS[shape])))]
    prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
    article = 'an' if colour_word[0] in 'aeiou' else 'a'
    return f'{prefix}{article} {colour_word} {shape_word}'


def snli_relations(scenes: np.ndarray, shape: int, colour: int) -> np.ndarray:
    """int32 [N, MAX_OBJECTS]: the SNLI-VE label of "a <colour> <shape>" for premise (scene n, object k greyed);
    -1 where object k does not exist or the scene has fewer than MAX_OBJECTS objects (then the object count tells
    nothing of the label: an entailment needs two objects). Entailment: another object is a <colour> <shape>
    (its colour is seen); neutral: none is, but the greyed object is a <shape> (its colour cannot be seen);
    contradiction: neither."""
    exists = scenes[:, :, SHAPE] >= 0
    match = exists & (scenes[:, :, SHAPE] == shape) & (scenes[:, :, COLOUR] == colour)
    others = match.sum(axis=1, keepdims=True) - match  # matching objects other than k
    grey_shape = exists & (scenes[:, :, SHAPE] == shape)
    label = np.where(others > 0, ENTAILMENT, np.where(grey_shape, NEUTRAL, CONTRADICTION))
    full = np.all(exists, axis=1, keepdims=True)
    return np.where(exists & full, label, -1).astype(np.int32)


def grey_object(image: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """A copy of `image` with object `obj`'s pixels (its exact colour, inside its grid cell) painted grey."""
    out = image.copy()
    x, y, w, h = cell_box(int(obj[POSITION]), image.shape[0])
    cell = out[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
    cell[np.all(cell == COLOUR_RGB[int(obj[COLOUR])], axis=-1)] = HIDDEN_GREY
    return out


class SnliVeSource(Source):
    """SNLI-VE examples of a world split: the hypothesis "a <colour> <shape>" and the label are drawn
    independently, then a premise (pool image, greyed object) with that label is drawn from the pool: the text
    alone tells nothing of the label."""

    field_keys = ('label',)
    class_names = SNLI_LABELS

    def __init__(self, world: ShapesWorld, size: int):
        self.world, self.size = world, size
        self.scenes = _pool_scenes(world)
        self._relations: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[str, int, int, int]:
        """(hypothesis, label, pool image, greyed object) of example `index`, without rendering."""
        rng = task_rng(self.world.seed, self.world.split, index)
        shape, colour = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
        text = hypothesis_text(shape, colour, rng)
        label = int(rng.integers(3))
        if (shape, colour) not in self._relations:
            self._relations[shape, colour] = snli_relations(self.scenes, shape, colour)
        images, objects = np.nonzero(self._relations[shape, colour] == label)
        if not len(images):
            raise DataError(
                f'no premise of label {SNLI_LABELS[label]} for {text!r} among {len(self.scenes)} scenes; '
                'raise the task size.'
            )
        pick = int(rng.integers(len(images)))
        return text, label, int(images[pick]), int(objects[pick])

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        made = [self.example(int(i)) for i in np.asarray(indices, np.int64)]
        rendered = self.world.batch(np.asarray([image for _, _, image, _ in made], np.int64))['image']
        images = np.stack([grey_object(rendered[n], self.scenes[m[2], m[3]]) for n, m in enumerate(made)])
        return {
            'image': images,
            'captions': [[text] for text, *_ in made],
            'fields': {'label': np.asarray([[m[1]] for m in made], np.int32)},
        }


class Nlvr2Source(Source):
    """NLVR2 examples of a world split: the template, a caption C of a random pool scene and the label are drawn
    independently, then the two images are drawn from the pool so that the statement has that truth."""

    field_keys = ('label', 'image1')

    def __init__(self, world: ShapesWorld, size: int):
        self.world, self.size, self.text = world, size, SceneText(world)
        self.scenes = _pool_scenes(world)

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[str, int, int, int]:
        """(statement, label, left pool image, right pool image) of example `index`, without rendering. A
        false 'both' statement is false of the left image, the right one or both (a third each)."""
        rng = task_rng(self.world.seed, self.world.split, index)
        which = int(rng.integers(len(NLVR2_TEMPLATES)))
        captions = self.text.scene(int(rng.integers(len(self.scenes))))[1]
        text, spec = captions[int(rng.integers(len(captions)))]
        label = int(rng.integers(2))
        truth = captions_true_of_scenes(spec[None], self.scenes)[0]
        pools = (np.flatnonzero(~truth), np.flatnonzero(truth))
        if not len(pools[0]):
            raise DataError(f'no scene of the pool makes {text!r} false (example {index}); raise the task size.')
        if which == 2:
            sides = (1, 1) if label else ((1, 0), (0, 1), (0, 0))[int(rng.integers(3))]
        else:
            other = int(rng.integers(2))
            sides = (label, other) if which == 0 else (other, label)
        left, right = (int(pools[s][int(rng.integers(len(pools[s])))]) for s in sides)
        return NLVR2_TEMPLATES[which].format(text), label, left, right

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        made = [self.example(int(i)) for i in np.asarray(indices, np.int64)]
        pairs = np.asarray([[left, right] for _, _, left, right in made], np.int64).ravel()
        images = self.world.batch(pairs)['image']
        return {
            'image': images[0::2],
            'captions': [[text] for text, *_ in made],
            'fields': {'label': np.asarray([[m[1]] for m in made], np.int32), 'image1': images[1::2]},
        }


@SOURCES.register('shapes_snli_ve')
class ShapesSnliVePlugin(SourcePlugin):
    """SNLI-VE on the shapes world (evaluator 'accuracy', reported as eval/snli_ve/accuracy)."""

    Settings = SnliVeTaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        size = self.settings.train_size if split == 'train' else self.settings.test_size
        pool = max(size, POOL_MIN)
        world = ShapesWorld(task_world(self.settings, self.context, pool, pool), self.context.seed, split)
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
        pool = max(size, POOL_MIN)
        world = ShapesWorld(task_world(self.settings, self.context, pool, pool), self.context.seed, split)
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
