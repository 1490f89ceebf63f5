"""Weakly-supervised grounding on the shapes world ('shapes_grounding'): trained on box-free (image, caption)
pairs with image ids, as 'shapes_retrieval'; tested on referring expressions ("the red circle") that single out
one object of a scene, with its box (its grid cell) and every object's box as the proposals."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.data.synthetic import COLOURS, MAX_OBJECTS, SHAPES, SIZES, ShapesWorld
from vlp_jax.data.synthetic_captions import COLOUR, POSITION, SHAPE, SIZE
from vlp_jax.data.tasks.shapes_tasks import RetrievalPairs, SceneText, TaskSettings, cell_box, task_rng, task_world
from vlp_jax.registry import SOURCES


@dataclasses.dataclass(frozen=True)
class GroundingTaskSettings(TaskSettings):
    """Synthetic grounding: training images (box-free pairs), test images (scenes without a nameable object
    of 2+ objects are left out)."""


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
        self.world, self.scenes = world, SceneText(world)
        self.items = []  # (world image, target object, expression)
        for index in range(len(world)):
            scene = self.scenes.scene(index)[0]
            count = int((scene[:, SHAPE] >= 0).sum())
            if count < 2:
                continue
            target = int(task_rng(world.seed, world.split, index).integers(count))
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
            task_world(settings, self.context, settings.train_size, settings.test_size), self.context.seed, split
        )
        return RetrievalPairs(world) if split == 'train' else GroundingSource(world)

    def train_size(self) -> int:
        return self.settings.train_size * self.settings.captions_per_image

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('grounding', '', ''),)
