"""The shapes world as a pipeline source, and the ground-truth probe it makes possible.

The pipeline sees only the `Source` protocol (data/sources.py): images, captions, the
probe fields of the batch spec, and which captions a flip would falsify. Everything the
shapes world knows beyond that stays here, including the in-step probe: which in-batch
negatives are false negatives, from what each caption claims and each image holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlp_jax.config import at_least, in_range, key, positive_int
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import Source, SourceContext, SourcePlugin
from vlp_jax.data.synthetic import (
    CLASSIFICATION_TEMPLATES,
    DETAILS,
    MAX_OBJECTS,
    ShapesWorld,
    ShapesWorldConfig,
    captions_true_of_scenes,
    classification_set,
)
from vlp_jax.probes import GroundTruthProbe
from vlp_jax.registry import SOURCES

CLASSIFICATION_ATTRIBUTES = ('shape', 'colour')
CLASSIFICATION_SEED_OFFSET = 7919  # keeps the classification images apart from every split's stream


@dataclasses.dataclass(frozen=True)
class ShapesSettings:
    """The built-in captioned-shapes world: sizes of its splits and how its captions are written."""

    train_size: int = key(50_000, 'training images (an epoch)', check=positive_int)
    val_size: int = key(500, 'validation images', check=positive_int)
    test_size: int = key(1000, 'test images (the retrieval eval set; 5 captions each)', check=positive_int)
    captions_per_image: int = key(2, 'captions per training image (one drawn per epoch)', check=positive_int)
    caption_noise: float = key(0.0, "fraction of training captions swapped for another image's", check=in_range(0, 1))
    detail: str = key('mixed', "caption detail: 'coarse' | 'mixed' | 'fine'", choices=DETAILS)
    max_objects: int = key(
        MAX_OBJECTS, f'objects per image, 1..{MAX_OBJECTS} (drawn uniformly)', check=in_range(1, MAX_OBJECTS)
    )
    twins: bool = key(
        False,
        'odd training images are their predecessor with one shape changed, kept in its batch: negatives that only '
        'shape separates (colour and place no longer suffice)',
    )
    classification_size: int = key(500, 'single-object images of each zero-shot set (shape, colour)', check=at_least(1))


class ShapesSource(Source):
    """Random access to one split of the shapes world, in the shape the pipeline reads."""

    field_keys = batch_spec.PROBE_KEYS  # the world knows every probe the spec defines

    def __init__(self, world: ShapesWorld):
        self.world = world
        self.block = world.block

    def __len__(self) -> int:
        return len(self.world)

    @property
    def captions_per_image(self) -> int:
        return self.world.captions_per_image

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        examples = self.world.batch(indices)
        return {
            'image': examples['image'],
            'captions': examples['captions'],
            'fields': {key: examples[key] for key in self.field_keys},  # the world uses the spec's names
            'flip_sensitive': examples['lateral'],  # captions with left/right words
        }

    def caption_truth(self, examples: Mapping[str, Any]) -> np.ndarray:
        """bool [captions (image-major), images]: caption t is true of image i."""
        specs = examples['fields']['caption_spec']
        return np.asarray(captions_true_of_scenes(specs.reshape(-1, *specs.shape[2:]), examples['fields']['scene']))

    def ground_truth_probe(self) -> GroundTruthProbe:
        return GroundTruthProbe(batch_keys=batch_spec.GROUND_TRUTH_KEYS, false_negatives=false_negative_mask_i2t)


class ShapesAttributeSource(Source):
    """A zero-shot classification view of the world: single-object images labelled by one attribute."""

    def __init__(self, world: ShapesWorldConfig, seed: int, size: int, attribute: str):
        data = classification_set(world, seed + CLASSIFICATION_SEED_OFFSET, size, attribute)
        self.images, self.labels = data['image'], np.asarray(data['label'])
        self.class_names = tuple(data['class_names'])
        self.prompt_templates = tuple(CLASSIFICATION_TEMPLATES[attribute])
        self.name = attribute

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices)
        return {
            'image': self.images[indices],
            'captions': [[] for _ in indices],
            'label': self.labels[indices],
            'fields': {},
        }


@SOURCES.register('shapes')
class ShapesPlugin(SourcePlugin):
    """The shapes world: splits 'train' / 'val' / 'test'; `where` 'shape' or 'colour' names a zero-shot view."""

    Settings = ShapesSettings

    def __init__(self, settings: ShapesSettings, context: SourceContext):
        super().__init__(settings, context)
        self.world = ShapesWorldConfig(
            image_size=int(context.image_size),
            captions_per_image=settings.captions_per_image,
            caption_noise=settings.caption_noise,
            detail=settings.detail,
            max_objects=settings.max_objects,
            twins=settings.twins,
            train_size=settings.train_size,
            val_size=settings.val_size,
            test_size=settings.test_size,
        )

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        if where in CLASSIFICATION_ATTRIBUTES:
            return ShapesAttributeSource(self.world, self.context.seed, self.settings.classification_size, where)
        if where:
            raise DataError(
                f'the shapes world has no set {where!r}; name {CLASSIFICATION_ATTRIBUTES} (zero-shot views) or nothing.'
            )
        return ShapesSource(ShapesWorld(self.world, seed=self.context.seed, split=split))

    def train_size(self) -> int:
        return self.settings.train_size

    def train_block(self) -> int:
        return 2 if self.settings.twins else 1

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('retrieval', '', ''), *(('classification', name, name) for name in CLASSIFICATION_ATTRIBUTES))


def false_negative_mask_i2t(batch: Mapping[str, Any]):
    """bool [B, B] in the i2t layout (rows images, columns captions): j != i and caption j is true of image i.

    Runs inside the jitted step (jax.numpy). The t2i mask is its transpose. The diagonal
    is never a false negative, even when caption noise made a caption false of its own image.
    """
    import jax.numpy as jnp

    true_of = captions_true_of_scenes(batch['caption_spec'], batch['scene'], xp=jnp)  # [captions, images]
    n = true_of.shape[0]
    return true_of.T & ~jnp.eye(n, dtype=bool)
