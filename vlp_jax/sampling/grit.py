"""GRIT-VLP grouped mini-batch sampling (docs/methods.md, "GRIT-VLP").

Hard negatives for free: the (stop-gradient) embeddings the train step already
computed are queued; every full queue is shuffled, cut into search spaces and ordered
by a greedy alternating image->text->image nearest-neighbour chain, so consecutive
entries are mutually similar. At the end of the epoch the grouped list is cut into
mini-batches, the mini-batches are shuffled, and that is the next epoch's order.

Determinism: the grouping of a fill is a pure function of (seed, epoch, fill number,
shard) and the queued features; the mini-batch shuffle of (seed, epoch). `GritQueue`'s
state_dict holds everything else, so a resumed run reproduces the same order exactly.

Scopes. 'global': one order for the whole global batch (every process runs the same
grouping on the same gathered features). 'local' (as the paper, per device): row p of
each global batch belongs to shard p // (batch_size / num_shards); each shard's
entries are grouped separately with queue_size / num_shards entries and search spaces
of search_space / num_shards, and global batch t is shard 0's t-th local batch,
then shard 1's, ... So queue_size and search_space are global totals in both scopes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GRIT_KEY_STREAM = 3  # fold_in stream id: keeps grouping keys apart from other uses of the seed
GRIT_ORDER_STREAM = 4  # numpy stream id for the mini-batch shuffle
SIM_PRECISION = lax.Precision.HIGHEST  # full fp32 similarities: the chain is an argmax, bf16 ties reorder it


def validate_grit(queue_size: int, search_space: int, batch_size: int) -> str | None:
    """One-sentence config error, or None if the sizes nest (queue ⊇ search spaces ⊇ batches)."""
    if queue_size <= 0 or search_space <= 0 or batch_size <= 0:
        return (
            f'sampling.grit.queue_size ({queue_size}), sampling.grit.search_space ({search_space}) and '
            f'batch_size ({batch_size}) must be positive'
        )
    if queue_size % search_space:
        return (
            f'sampling.grit.queue_size ({queue_size}) must be a multiple of sampling.grit.search_space ({search_space})'
        )
    if search_space % batch_size:
        return f'sampling.grit.search_space ({search_space}) must be a multiple of the global batch_size ({batch_size})'
    return None


@jax.jit
def greedy_chain(image_embed: jax.Array, text_embed: jax.Array, start: jax.Array | int) -> jax.Array:
    """Order [M] int32 of the greedy alternating chain from `start` (docs/methods.md, step 3).

    Even steps pick the unvisited text closest to the last image (row of S = V T^T),
    odd steps the unvisited image closest to the last text (column of S). Visiting an
    entry removes its image and its text; ties go to the lowest index (argmax).
    """
    m = image_embed.shape[0]
    sim = jnp.matmul(image_embed.astype(jnp.float32), text_embed.astype(jnp.float32).T, precision=SIM_PRECISION)
    sim = jnp.nan_to_num(sim)  # finite scores keep visited (-inf) entries strictly last: always a permutation
    start = jnp.asarray(start, jnp.int32)
    order = jnp.zeros((m,), jnp.int32).at[0].set(start)
    visited = jnp.zeros((m,), jnp.bool_).at[start].set(True)

    def step(i, carry):
        order, visited, last = carry
        scores = jnp.where(i % 2 == 0, sim[last, :], sim[:, last])
        nxt = jnp.argmax(jnp.where(visited, -jnp.inf, scores)).astype(jnp.int32)
        return order.at[i + 1].set(nxt), visited.at[nxt].set(True), nxt

    order, _, _ = lax.fori_loop(0, m - 1, step, (order, visited, start))
    return order


def search_plan(key: jax.Array, num_entries: int, search_space: int) -> tuple[jax.Array, jax.Array]:
    """The seeded shuffle [n] and one start per search space; the last space may be smaller.

    Exposed so tests (and a reference implementation) can reproduce a grouping.
    """
    shuffle_key, start_key = jax.random.split(key)
    full, rest = divmod(num_entries, search_space)
    sizes = np.array([search_space] * full + ([rest] if rest else []), np.int32)
    perm = jax.random.permutation(shuffle_key, num_entries).astype(jnp.int32)
    starts = jax.random.randint(start_key, sizes.shape, 0, sizes, dtype=jnp.int32)
    return perm, starts


@functools.partial(jax.jit, static_argnames='search_space')
def chain_spaces(image_embed: jax.Array, text_embed: jax.Array, search_space: int, starts: jax.Array) -> jax.Array:
    """Chains consecutive search spaces (vmapped); returns positions [L] into the inputs."""
    num_entries, dim = image_embed.shape
    assert num_entries % search_space == 0, (num_entries, search_space)
    spaces = num_entries // search_space
    images = image_embed.reshape(spaces, search_space, dim)
    texts = text_embed.reshape(spaces, search_space, dim)
    local = jax.vmap(greedy_chain)(images, texts, starts)
    offsets = jnp.arange(spaces, dtype=jnp.int32)[:, None] * search_space
    return (local + offsets).reshape(-1)


@functools.partial(jax.jit, static_argnames='search_space')
def _group_positions(image_embed: jax.Array, text_embed: jax.Array, search_space: int, key: jax.Array) -> jax.Array:
    perm, starts = search_plan(key, image_embed.shape[0], search_space)
    return perm[chain_spaces(image_embed[perm], text_embed[perm], search_space, starts)]


def group_positions(image_embed: np.ndarray, text_embed: np.ndarray, search_space: int, key: jax.Array) -> np.ndarray:
    """Host wrapper: chain order (positions) for any n; a remainder n % M is one smaller space.

    The end-of-epoch remainder is not a multiple of search_space in general; grouping it
    as one smaller last space keeps every entry, at one extra compile per run (its size
    is the same every epoch).
    """
    n = image_embed.shape[0]
    if n % search_space == 0:
        return np.asarray(_group_positions(image_embed, text_embed, search_space, key))
    perm, starts = search_plan(key, n, search_space)
    perm = np.asarray(perm)
    full = n - n % search_space
    images, texts = image_embed[perm], text_embed[perm]
    parts = []
    if full:
        parts.append(np.asarray(chain_spaces(images[:full], texts[:full], search_space, starts[:-1])))
    parts.append(full + np.asarray(chain_spaces(images[full:], texts[full:], n - full, starts[-1:])))
    return perm[np.concatenate(parts)]


def _shard_rows(num_entries: int, batch_size: int, num_shards: int) -> np.ndarray:
    """Rows [D, n / D] of a queue (global batches, in order) that each shard owns."""
    assert batch_size % num_shards == 0 and num_entries % batch_size == 0, (num_entries, batch_size, num_shards)
    rows = np.arange(num_entries).reshape(-1, num_shards, batch_size // num_shards)
    return rows.transpose(1, 0, 2).reshape(num_shards, -1)


def group_queue_local(
    image_embed: np.ndarray,
    text_embed: np.ndarray,
    indices: np.ndarray,
    search_space: int,
    key: jax.Array,
    num_shards: int,
    batch_size: int,
) -> np.ndarray:
    """Per-shard grouping (scope 'local'): grouped indices [D, n / D], shard d keyed by fold_in(key, d).

    num_shards=1 is the global grouping (with key fold_in(key, 0)).
    """
    assert search_space % num_shards == 0, (search_space, num_shards)
    out = []
    for shard, rows in enumerate(_shard_rows(len(indices), batch_size, num_shards)):
        positions = group_positions(
            image_embed[rows], text_embed[rows], search_space // num_shards, jax.random.fold_in(key, shard)
        )
        out.append(np.asarray(indices)[rows[positions]])
    return np.stack(out)


def next_epoch_order(grouped_indices: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The order for `epoch`: mini-batches of consecutive grouped indices, shuffled by (seed, epoch).

    grouped_indices is [N] (global) or [D, N_d] (local: shard d fills rows
    [d*B/D, (d+1)*B/D) of every global batch). The tail that does not fill a batch is dropped.
    """
    grouped = np.asarray(grouped_indices)
    grouped = grouped[None] if grouped.ndim == 1 else grouped
    num_shards = grouped.shape[0]
    assert batch_size % num_shards == 0, (batch_size, num_shards)
    local_batch = batch_size // num_shards
    num_batches = grouped.shape[1] // local_batch
    batches = grouped[:, : num_batches * local_batch].reshape(num_shards, num_batches, local_batch)
    rng = np.random.default_rng([seed, GRIT_ORDER_STREAM, epoch])
    return batches[:, rng.permutation(num_batches)].transpose(1, 0, 2).reshape(-1)


class GritQueue:
    """Host-side feature queue of one epoch; groups every full queue, returns the next epoch's order.

    Feed it every step's global batch (stop-gradient embeddings as numpy, dataset
    indices), in step order; call finish_epoch() after the epoch's last step.
    """

    def __init__(
        self,
        *,
        queue_size: int,
        search_space: int,
        batch_size: int,
        seed: int,
        scope: str = 'global',
        num_shards: int = 1,
        epoch: int = 0,
    ):
        error = validate_grit(queue_size, search_space, batch_size)
        if error:
            raise ValueError(error)
        if scope not in ('global', 'local'):
            raise ValueError(f"sampling.grit.scope must be 'global' or 'local', got {scope!r}")
        self.num_shards = num_shards if scope == 'local' else 1
        if batch_size % self.num_shards:
            raise ValueError(f'batch_size ({batch_size}) must be a multiple of the number of shards ({num_shards})')
        self.queue_size, self.search_space, self.batch_size = queue_size, search_space, batch_size
        self.seed, self.scope, self.epoch = seed, scope, epoch
        self._reset()

    def _reset(self) -> None:
        self.fills = 0
        self._images: list[np.ndarray] = []
        self._texts: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._grouped: list[np.ndarray] = []  # [D, n_d] per fill

    @property
    def buffered(self) -> int:
        return sum(len(i) for i in self._indices)

    def _key(self, fill: int) -> jax.Array:
        base = jax.random.fold_in(jax.random.key(self.seed), GRIT_KEY_STREAM)
        return jax.random.fold_in(jax.random.fold_in(base, self.epoch), fill)

    def _grouped_array(self) -> np.ndarray:
        return np.concatenate(self._grouped, axis=1) if self._grouped else np.zeros((self.num_shards, 0), np.int64)

    def _take_buffer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = (np.concatenate(self._images), np.concatenate(self._texts), np.concatenate(self._indices))
        self._images, self._texts, self._indices = [], [], []
        return out

    def _group(self, images: np.ndarray, texts: np.ndarray, indices: np.ndarray) -> None:
        self._grouped.append(
            group_queue_local(
                images, texts, indices, self.search_space, self._key(self.fills), self.num_shards, self.batch_size
            )
        )
        self.fills += 1

    def add(self, image_embed, text_embed, indices) -> None:
        """Append one step's batch; groups (a blocking device call) whenever queue_size entries are buffered."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        assert len(indices) % self.batch_size == 0, 'add whole global batches'
        self._images.append(np.asarray(image_embed, np.float32))
        self._texts.append(np.asarray(text_embed, np.float32))
        self._indices.append(indices)
        if self.buffered >= self.queue_size:
            images, texts, idx = self._take_buffer()
            q = self.queue_size
            while len(idx) >= q:
                self._group(images[:q], texts[:q], idx[:q])
                images, texts, idx = images[q:], texts[q:], idx[q:]
            if len(idx):
                self._images, self._texts, self._indices = [images], [texts], [idx]

    def finish_epoch(self) -> np.ndarray:
        """Groups the remainder and returns the order for epoch self.epoch + 1; then starts that epoch."""
        if self._indices:
            self._group(*self._take_buffer())
        grouped = self._grouped_array()
        self.epoch += 1
        order = next_epoch_order(grouped if self.num_shards > 1 else grouped[0], self.batch_size, self.seed, self.epoch)
        self._reset()
        return order

    def state_dict(self) -> dict:
        """Everything a resumed run needs (numpy arrays and ints; shapes vary with the position in the epoch)."""
        if self._indices:
            images, texts, idx = self._take_buffer()
            self._images, self._texts, self._indices = [images], [texts], [idx]
        else:
            images = texts = np.zeros((0, 0), np.float32)
            idx = np.zeros((0,), np.int64)
        grouped = self._grouped_array()
        return {
            'epoch': self.epoch,
            'fills': self.fills,
            'seed': self.seed,
            'queue_size': self.queue_size,
            'search_space': self.search_space,
            'batch_size': self.batch_size,
            'num_shards': self.num_shards,
            'buffer_image': images,
            'buffer_text': texts,
            'buffer_indices': idx,
            'grouped': grouped,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict; the sizes and seed must match this queue's config."""
        for name in ('seed', 'queue_size', 'search_space', 'batch_size', 'num_shards'):
            if int(state[name]) != getattr(self, name):
                raise ValueError(f'GRIT state has {name}={int(state[name])}, config says {getattr(self, name)}')
        self._reset()
        self.epoch, self.fills = int(state['epoch']), int(state['fills'])
        idx = np.asarray(state['buffer_indices'], np.int64)
        if len(idx):
            self._images = [np.asarray(state['buffer_image'], np.float32)]
            self._texts = [np.asarray(state['buffer_text'], np.float32)]
            self._indices = [idx]
        grouped = np.asarray(state['grouped'], np.int64)
        if grouped.shape[1]:
            self._grouped = [grouped]
