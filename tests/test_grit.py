"""GRIT grouped sampling: the chain against METHODS.md's pseudo-code, grouping, epoch order, resume."""

import io

import jax
import numpy as np
import pytest

from vlp_jax.sampling import grit


def exact_embeddings(rng: np.random.Generator, m: int, dim: int, levels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Multiples of 1/4 with small integers: dot products are exact in fp32 and fp64, and ties occur."""
    draw = lambda: (rng.integers(-levels, levels + 1, size=(m, dim)) / 4).astype(np.float32)
    return draw(), draw()


def reference_chain(v: np.ndarray, t: np.ndarray, start: int) -> list[int]:
    """METHODS.md's pseudo-code, literally: sets, a while loop, lowest index on ties."""
    v, t = v.astype(np.float64), t.astype(np.float64)
    k = start
    seq, unvisited = [k], set(range(len(v))) - {k}
    while unvisited:
        cand = sorted(unvisited)
        j = cand[int(np.argmax([v[k] @ t[c] for c in cand]))]
        unvisited.remove(j)
        seq.append(j)
        if not unvisited:
            break
        cand = sorted(unvisited)
        k = cand[int(np.argmax([t[j] @ v[c] for c in cand]))]
        unvisited.remove(k)
        seq.append(k)
    return seq


@pytest.mark.parametrize('m, dim, levels', [(1, 4, 4), (2, 4, 4), (7, 3, 1), (16, 8, 4), (33, 32, 8), (64, 16, 2)])
def test_chain_matches_reference(m, dim, levels):
    rng = np.random.default_rng(m)
    v, t = exact_embeddings(rng, m, dim, levels)
    for start in sorted({0, m // 2, m - 1}):
        got = np.asarray(grit.greedy_chain(v, t, start))
        assert got.tolist() == reference_chain(v, t, start), (m, start)


def test_chain_under_vmap_with_traced_start():
    v, t = exact_embeddings(np.random.default_rng(0), 3 * 12, 6)
    starts = np.array([0, 5, 11], np.int32)
    got = np.asarray(grit.chain_spaces(v, t, 12, starts)).reshape(3, 12)
    for s in range(3):
        rows = slice(12 * s, 12 * (s + 1))
        assert (got[s] - 12 * s).tolist() == reference_chain(v[rows], t[rows], int(starts[s]))


@pytest.mark.parametrize('shards', [1, 2])
def test_grouping_is_reference_chain_after_the_shuffle(shards):
    """GritQueue's grouping of one full queue: per shard, shuffle, cut into spaces, chain each (reference)."""
    queue, space, batch = 48, 16, 8
    v, t = exact_embeddings(np.random.default_rng(1), queue, 8)
    indices = np.random.default_rng(2).choice(10_000, size=queue, replace=False)
    key = jax.random.key(7)
    group = lambda key: grit.group_queue_local(v, t, indices, space, key, shards, batch)
    got = group(key)
    assert got.shape == (shards, queue // shards)
    assert sorted(got.reshape(-1).tolist()) == sorted(indices.tolist())
    np.testing.assert_array_equal(got, group(key))
    assert not np.array_equal(got, group(jax.random.key(8)))
    local_space = space // shards
    for shard in range(shards):
        owned = np.flatnonzero((np.arange(queue) % batch) // (batch // shards) == shard)  # its slots of each batch
        perm, starts = (
            np.asarray(a) for a in grit.search_plan(jax.random.fold_in(key, shard), len(owned), local_space)
        )
        expected = []
        for s in range(len(owned) // local_space):
            rows = owned[perm[s * local_space : (s + 1) * local_space]]
            expected += indices[rows[reference_chain(v[rows], t[rows], int(starts[s]))]].tolist()
        assert got[shard].tolist() == expected, shard


def test_remainder_is_one_smaller_search_space():
    n, space = 40, 16  # two full spaces and one of 8
    v, t = exact_embeddings(np.random.default_rng(3), n, 8)
    key = jax.random.key(1)
    got = grit.group_positions(v, t, space, key)
    perm, starts = (np.asarray(a) for a in grit.search_plan(key, n, space))
    assert len(starts) == 3 and 0 <= starts[-1] < 8
    expected = []
    for s, (lo, hi) in enumerate([(0, 16), (16, 32), (32, 40)]):
        rows = perm[lo:hi]
        expected += rows[reference_chain(v[rows], t[rows], int(starts[s]))].tolist()
    assert got.tolist() == expected and sorted(expected) == list(range(n))


def test_next_epoch_order_shuffles_whole_batches():
    grouped = np.arange(100, 203)  # 103 entries, batch 10: the last 3 are dropped
    order = grit.next_epoch_order(grouped, 10, seed=0, epoch=1)
    assert sorted(order.tolist()) == list(range(100, 200))
    batches = order.reshape(10, 10)
    assert all(np.array_equal(b, np.arange(b[0], b[0] + 10)) and (b[0] - 100) % 10 == 0 for b in batches)
    assert not np.array_equal(order, grouped[:100])
    np.testing.assert_array_equal(order, grit.next_epoch_order(grouped, 10, seed=0, epoch=1))
    assert not np.array_equal(order, grit.next_epoch_order(grouped, 10, seed=1, epoch=1))
    assert not np.array_equal(order, grit.next_epoch_order(grouped, 10, seed=0, epoch=2))


def test_grouped_batches_are_more_similar_than_random_ones():
    n, dim, clusters, batch = 512, 16, 8, 16
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(clusters, dim))
    label = rng.integers(clusters, size=n)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    v = unit(centres[label] + 0.5 * rng.normal(size=(n, dim)))
    t = unit(centres[label] + 0.5 * rng.normal(size=(n, dim)))
    queue = grit.GritQueue(queue_size=256, search_space=128, batch_size=batch, seed=0)
    for step in range(n // batch):
        rows = np.arange(step * batch, (step + 1) * batch)
        queue.add(v[rows], t[rows], rows)
    order = queue.finish_epoch()
    assert sorted(order.tolist()) == list(range(n))

    def intra_batch_similarity(order):
        b = order.reshape(-1, batch)
        sim = np.einsum('bie,bje->bij', v[b], t[b])
        return (sim.sum() - np.trace(sim, axis1=1, axis2=2).sum()) / (sim.size - sim.shape[0] * batch)

    grouped, shuffled = intra_batch_similarity(order), intra_batch_similarity(rng.permutation(n))
    assert grouped > shuffled + 0.3, (grouped, shuffled)


def feed(queue: grit.GritQueue, v, t, steps: range, batch: int, epoch: int) -> None:
    for step in steps:
        rows = (np.arange(step * batch, (step + 1) * batch) + 7 * epoch) % len(v)
        queue.add(v[rows], t[rows], rows + 1000)


@pytest.mark.parametrize('scope', ['global', 'local'])
def test_state_dict_round_trip_mid_epoch(scope):
    batch, steps = 4, 11  # queue 16 = 4 steps: fills after steps 4 and 8, a remainder of 12
    v, t = exact_embeddings(np.random.default_rng(5), batch * steps, 8)
    make = lambda: grit.GritQueue(queue_size=16, search_space=8, batch_size=batch, seed=9, scope=scope, num_shards=2)
    whole = make()
    orders = []
    for epoch in range(2):
        feed(whole, v, t, range(steps), batch, epoch)
        orders.append(whole.finish_epoch())
    assert sorted(orders[0].tolist()) == list(range(1000, 1000 + batch * steps))
    assert not np.array_equal(orders[0], orders[1])

    first = make()
    feed(first, v, t, range(6), batch, 0)  # after the first fill, half a queue buffered
    assert first.fills == 1 and first.buffered == 8
    buffer = io.BytesIO()
    np.savez(buffer, **first.state_dict())
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(dict(np.load(buffer)))
    feed(resumed, v, t, range(6, steps), batch, 0)
    np.testing.assert_array_equal(resumed.finish_epoch(), orders[0])
    feed(resumed, v, t, range(steps), batch, 1)
    np.testing.assert_array_equal(resumed.finish_epoch(), orders[1])


def test_local_scope_keeps_each_shard_in_its_slots():
    batch, shards = 8, 2
    v, t = exact_embeddings(np.random.default_rng(6), 64, 8)
    queue = grit.GritQueue(queue_size=32, search_space=16, batch_size=batch, seed=0, scope='local', num_shards=shards)
    feed(queue, v, t, range(8), batch, 0)
    order = queue.finish_epoch().reshape(-1, shards, batch // shards) - 1000
    assert sorted(order.reshape(-1).tolist()) == list(range(64))
    shard_of = (np.arange(64) % batch) // (batch // shards)
    for shard in range(shards):
        assert (shard_of[order[:, shard]] == shard).all()


def test_state_dict_rejects_another_config():
    state = grit.GritQueue(queue_size=16, search_space=8, batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match='seed=0'):
        grit.GritQueue(queue_size=16, search_space=8, batch_size=4, seed=1).load_state_dict(state)


def test_validate_grit_messages():
    assert grit.validate_grit(48_000, 1_920, 128) is None
    assert (
        grit.validate_grit(48_000, 1_900, 100)
        == 'sampling.grit.queue_size (48000) must be a multiple of sampling.grit.search_space (1900)'
    )
    assert (
        grit.validate_grit(48_000, 1_920, 100)
        == 'sampling.grit.search_space (1920) must be a multiple of the global batch_size (100)'
    )
    with pytest.raises(ValueError, match='multiple of sampling.grit.search_space'):
        grit.GritQueue(queue_size=20, search_space=8, batch_size=4, seed=0)
