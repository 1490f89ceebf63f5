"""The default sampler: every epoch a seeded permutation of the training set."""

from __future__ import annotations

import numpy as np

from vlp_jax.registry import SAMPLERS
from vlp_jax.sampling.base import Sampler

EPOCH_ORDER_STREAM = 1  # RNG stream of the epoch order (the augmentations use their own)


def random_order(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of epoch `epoch` (a tail short of a batch is dropped by the pipeline)."""
    return np.random.default_rng([seed, EPOCH_ORDER_STREAM, epoch]).permutation(dataset_size)


@SAMPLERS.register('random')
class RandomSampler(Sampler):
    """A fresh permutation each epoch; no state, no feedback."""

    def epoch_order(self, epoch: int) -> np.ndarray:
        return random_order(self.context.dataset_size, self.context.seed, epoch)
