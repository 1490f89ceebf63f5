"""GRIT-VLP's sampler: each epoch's order grouped from the previous epoch's embeddings.

The loop hands every step's (already computed) embeddings and dataset indices to `observe`;
at each epoch's last step the queue's grouped order becomes the next epoch's (sampling/grit.py
groups). Epoch 0 has no embeddings yet and is the random sampler's permutation. `state()`
packs the queue and the current epoch's order into fixed-shape numpy arrays, so they ride in
the orbax train-state checkpoint and a resumed run replays exactly the batches of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlp_jax.config import key
from vlp_jax.registry import SAMPLERS
from vlp_jax.sampling.base import PackedState, Sampler, SamplerContext
from vlp_jax.sampling.grit import GritQueue, validate_grit
from vlp_jax.sampling.random_sampler import random_order

NO_ORDER = -1  # marks 'this epoch uses the random order' (epoch 0) in the packed state
SCOPES = ('global', 'local')


@dataclasses.dataclass(frozen=True)
class GritSettings:
    """GRIT-VLP's grouped mini-batches: a queue of the step's embeddings, grouped into hard batches."""

    queue_size: int = key(6400, 'entries grouped per queue fill (a multiple of search_space; a global total)')
    search_space: int = key(1280, 'entries per greedy chain (a multiple of batch_size; a global total)')
    scope: str = key(
        'global',
        "'global': one order for the global batch | 'local': per batch shard (the paper's per-GPU)",
        choices=SCOPES,
    )


@SAMPLERS.register('grit')
class GritSampler(Sampler):
    """Grouped hard-negative batches from the last epoch's features (GRIT-VLP)."""

    Settings = GritSettings
    needs_feedback = True
    order_known_ahead = False

    def __init__(self, settings: GritSettings, context: SamplerContext):
        super().__init__(settings, context)
        self.epoch_size = context.steps_per_epoch * context.batch_size
        self.queue = GritQueue(
            queue_size=settings.queue_size,
            search_space=settings.search_space,
            batch_size=context.batch_size,
            seed=context.seed,
            scope=settings.scope,
            num_shards=context.local_shards,
        )
        self.current_epoch = 0
        self._order: np.ndarray | None = None  # the current epoch's grouped order (epoch > 0)

    @classmethod
    def check(cls, settings: GritSettings, batch_size: int) -> str | None:
        error = validate_grit(settings.queue_size, settings.search_space, batch_size)
        return None if error is None else f'config keys {error}.'

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch == 0:
            return random_order(self.context.dataset_size, self.context.seed, 0)
        assert epoch == self.current_epoch and self._order is not None, (
            f'epoch {epoch} was asked for before the sampler saw the end of epoch {epoch - 1}'
        )
        return self._order

    def observe(self, step_done: int, feedback: dict[str, Any]) -> None:
        """Queues step `step_done`'s batch; after an epoch's last step, builds the next epoch's order."""
        steps_per_epoch = self.context.steps_per_epoch
        assert (step_done - 1) // steps_per_epoch == self.current_epoch, 'feed every step, in order'
        self.queue.add(feedback['image_embed'], feedback['text_embed'], feedback['index'])
        if step_done % steps_per_epoch == 0:
            order = self.queue.finish_epoch()
            self.current_epoch += 1
            assert self.queue.epoch == self.current_epoch and len(order) == self.epoch_size, (len(order),)
            self._order = np.asarray(order, np.int64)

    # -- checkpoint --------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        q, e, shards = self.queue.queue_size, self.context.embed_dim, self.queue.num_shards
        return {
            'epoch': ((), np.int64),
            'fills': ((), np.int64),
            'buffered': ((), np.int64),
            'grouped_len': ((), np.int64),
            'buffer_image': ((q, e), np.float32),
            'buffer_text': ((q, e), np.float32),
            'buffer_indices': ((q,), np.int64),
            'grouped': ((shards, self.epoch_size // shards), np.int64),
            'order': ((self.epoch_size,), np.int64),
        }

    def abstract_state(self) -> PackedState:
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._shapes().items()}

    def state(self) -> PackedState:
        packed = self.abstract_state()
        queue = self.queue.state_dict()
        buffered = len(queue['buffer_indices'])
        grouped = queue['grouped']
        packed['epoch'][...] = queue['epoch']
        packed['fills'][...] = queue['fills']
        packed['buffered'][...] = buffered
        packed['grouped_len'][...] = grouped.shape[1]
        if buffered:
            packed['buffer_image'][:buffered] = queue['buffer_image']
            packed['buffer_text'][:buffered] = queue['buffer_text']
            packed['buffer_indices'][:buffered] = queue['buffer_indices']
        packed['grouped'][:, : grouped.shape[1]] = grouped
        packed['order'][:] = self._order if self.current_epoch > 0 else NO_ORDER
        return packed

    def load(self, packed: PackedState) -> None:
        buffered, grouped_len = int(packed['buffered']), int(packed['grouped_len'])
        q = self.queue
        self.queue.load_state_dict(
            {
                'epoch': int(packed['epoch']),
                'fills': int(packed['fills']),
                'seed': q.seed,
                'queue_size': q.queue_size,
                'search_space': q.search_space,
                'batch_size': q.batch_size,
                'num_shards': q.num_shards,
                'buffer_image': packed['buffer_image'][:buffered],
                'buffer_text': packed['buffer_text'][:buffered],
                'buffer_indices': packed['buffer_indices'][:buffered],
                'grouped': packed['grouped'][:, :grouped_len],
            }
        )
        self.current_epoch = int(packed['epoch'])
        self._order = None
        if self.current_epoch > 0:
            assert packed['order'][0] != NO_ORDER
            self._order = np.asarray(packed['order'], np.int64)
