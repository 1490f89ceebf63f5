"""The shapes world as a pipeline source, and the ground-truth probe it makes possible.

The pipeline sees only the `Source` protocol (data/sources.py): images, captions, the
probe values of the batch spec, and which captions a flip would falsify. Everything the
shapes world knows beyond that stays here, including the in-step probe: which in-batch
negatives are false negatives, from what each caption claims and each image holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlp_jax.data import batch as batch_spec
from vlp_jax.data.synthetic import ShapesWorld, captions_true_of_scenes
from vlp_jax.probes import GroundTruthProbe


class ShapesSource:
    """Random access to one split of the shapes world, in the shape the pipeline reads."""

    probe_keys = batch_spec.PROBE_KEYS  # the world knows every probe the spec defines

    def __init__(self, world: ShapesWorld):
        self.world = world

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
            'probes': {key: examples[key] for key in self.probe_keys},  # the world uses the spec's names
            'flip_sensitive': examples['lateral'],  # captions with left/right words
        }

    def caption_truth(self, examples: Mapping[str, Any]) -> np.ndarray:
        """bool [captions (image-major), images]: caption t is true of image i."""
        specs = examples['probes']['caption_spec']
        return np.asarray(captions_true_of_scenes(specs.reshape(-1, *specs.shape[2:]), examples['probes']['scene']))

    @staticmethod
    def ground_truth_probe() -> GroundTruthProbe:
        return GroundTruthProbe(batch_keys=batch_spec.GROUND_TRUTH_KEYS, false_negatives=false_negative_mask_i2t)


def false_negative_mask_i2t(batch: Mapping[str, Any]):
    """bool [B, B] in the i2t layout (rows images, columns captions): j != i and caption j is true of image i.

    Runs inside the jitted step (jax.numpy). The t2i mask is its transpose. The diagonal
    is never a false negative, even when caption noise made a caption false of its own image.
    """
    import jax.numpy as jnp

    true_of = captions_true_of_scenes(batch['caption_spec'], batch['scene'], xp=jnp)  # [captions, images]
    n = true_of.shape[0]
    return true_of.T & ~jnp.eye(n, dtype=bool)
