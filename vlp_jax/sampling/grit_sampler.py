"""GRIT in the training loop: the step's embeddings in, each epoch's grouped order out.

The loop hands every step's (already computed) embeddings and dataset indices to
`observe`; at each epoch boundary the queue's grouped order becomes the pipeline's
order for the next epoch. `state()` packs the queue and the current epoch's order
into fixed-shape numpy arrays, so they ride in the orbax train-state checkpoint and a
resumed run replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vlp_jax.sampling.grit import GritQueue

NO_ORDER = -1  # marks 'this epoch uses the pipeline's own random order' (epoch 0)


class GritSampler:
    def __init__(self, config: ml_collections.ConfigDict, pipeline: Any, embed_dim: int, num_shards: int):
        self.pipeline = pipeline
        self.steps_per_epoch = pipeline.steps_per_epoch
        self.epoch_size = self.steps_per_epoch * config.batch_size
        self.embed_dim = embed_dim
        self.queue = GritQueue(
            queue_size=config.sampling.queue_size,
            search_space=config.sampling.search_space,
            batch_size=config.batch_size,
            seed=config.seed,
            scope=config.sampling.scope,
            num_shards=num_shards,
        )
        self.current_epoch = 0

    def observe(self, step_done: int, feedback: dict[str, np.ndarray]) -> None:
        """Queues step `step_done`'s batch; after an epoch's last step, sets the next epoch's order."""
        assert (step_done - 1) // self.steps_per_epoch == self.current_epoch, 'feed every step, in order'
        self.queue.add(feedback['image_embed'], feedback['text_embed'], feedback['index'])
        if step_done % self.steps_per_epoch == 0:
            order = self.queue.finish_epoch()
            self.current_epoch += 1
            assert self.queue.epoch == self.current_epoch and len(order) == self.epoch_size, (len(order),)
            self.pipeline.set_epoch_order(self.current_epoch, order)

    # -- checkpoint --------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        q, e, shards = self.queue.queue_size, self.embed_dim, self.queue.num_shards
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

    def abstract_state(self) -> dict[str, np.ndarray]:
        """Zero arrays of the checkpointed shapes: the restore target."""
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._shapes().items()}

    def state(self) -> dict[str, np.ndarray]:
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
        if self.current_epoch > 0:
            packed['order'][:] = self.pipeline.epoch_order(self.current_epoch)
        else:
            packed['order'][:] = NO_ORDER
        return packed

    def load(self, packed: dict[str, np.ndarray]) -> None:
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
        if self.current_epoch > 0:
            assert packed['order'][0] != NO_ORDER
            self.pipeline.set_epoch_order(self.current_epoch, np.asarray(packed['order']))
