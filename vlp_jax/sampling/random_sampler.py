"""The default sampler: every epoch a seeded permutation of the training set."""

from __future__ import annotations

import numpy as np

from vlp_jax.registry import SAMPLERS
from vlp_jax.sampling.base import Sampler

EPOCH_ORDER_STREAM = 1  # RNG stream of the epoch order (the augmentations use their own)


def random_order(dataset_size: int, seed: int, epoch: int, block: int = 1) -> np.ndarray:
    """The seeded permutation of epoch `epoch` (a tail short of a batch is dropped by the pipeline); with
    block > 1 the blocks [k*block, (k+1)*block) are permuted whole, so with a batch that block divides each
    block lands in one batch (an incomplete last block is left out)."""
    rng = np.random.default_rng([seed, EPOCH_ORDER_STREAM, epoch])
    if block == 1:
        return rng.permutation(dataset_size)
    starts = rng.permutation(dataset_size // block) * block
    return (starts[:, None] + np.arange(block)[None, :]).reshape(-1)


@SAMPLERS.register('random')
class RandomSampler(Sampler):
    """A fresh permutation each epoch; no state, no feedback; a source's blocks stay whole."""

    keeps_blocks = True

    def epoch_order(self, epoch: int) -> np.ndarray:
        return random_order(self.context.dataset_size, self.context.seed, epoch, self.context.block)
