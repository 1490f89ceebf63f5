"""ITM negatives and MLM masking: statistics over many draws, exclusions, and 1 vs 8 devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from vlp_jax.objectives.matching import (
    MAX_PREDICTIONS_OVERFLOW,
    SpecialTokens,
    auto_max_predictions,
    choose_negatives,
    mask_tokens,
    prediction_positions,
    resolve_max_predictions,
    selection_draws,
)

BERT = SpecialTokens(cls_id=101, sep_id=102, pad_id=0, mask_id=103, vocab_size=30522)


def _captions(rng, batch, length):
    """[CLS] words [SEP] [PAD]... rows of random lengths, as the tokenizer writes them."""
    ids = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), np.int32)
    for row in range(batch):
        words = rng.integers(3, length - 1)
        ids[row, 0], ids[row, 1 : words + 1], ids[row, words + 1] = 101, rng.integers(1000, 2000, words), 102
        mask[row, : words + 2] = 1
    return ids, mask


def test_masking_statistics_and_exclusions():
    rng = np.random.default_rng(0)
    ids, mask = _captions(rng, 512, 24)
    # The official mask(): "masked_indices[input_ids == self.tokenizer.pad_token_id] = False;
    # masked_indices[input_ids == self.tokenizer.cls_token_id] = False": [SEP] stays maskable.
    maskable = (mask > 0) & (ids != 101)
    corrupted, selected = jax.jit(lambda key: mask_tokens(key, jnp.asarray(ids), jnp.asarray(mask), 0.15, BERT))(
        jax.random.key(0)
    )
    corrupted, selected = np.asarray(corrupted), np.asarray(selected)
    assert not selected[~maskable].any()  # never [CLS] or padding
    sep = ids == 102
    sep_rate = selected[sep].mean()  # [SEP] is selected at the mask ratio like any word
    assert abs(sep_rate - 0.15) < 4 * np.sqrt(0.15 * 0.85 / sep.sum()), sep_rate
    np.testing.assert_array_equal(corrupted[~selected], ids[~selected])  # what is not selected is untouched
    n = maskable.sum()
    assert abs(selected.sum() / n - 0.15) < 3 * np.sqrt(0.15 * 0.85 / n)
    chosen = selected.sum()
    to_mask = (corrupted == 103) & selected
    kept = (corrupted == ids) & selected
    random_word = selected & ~to_mask & ~kept
    for share, want in ((to_mask.sum() / chosen, 0.8), (random_word.sum() / chosen, 0.1), (kept.sum() / chosen, 0.1)):
        assert abs(share - want) < 4 * np.sqrt(want * (1 - want) / chosen), (share, want)
    assert corrupted[random_word].max() < BERT.vocab_size


@pytest.mark.parametrize('ratio', [0.15, 0.5])
def test_masking_ratio_follows_config(ratio):
    ids, mask = _captions(np.random.default_rng(1), 256, 16)
    _, selected = mask_tokens(jax.random.key(1), jnp.asarray(ids), jnp.asarray(mask), ratio, BERT)
    maskable = ((mask > 0) & (ids != 101)).sum()
    assert abs(float(np.asarray(selected).sum()) / maskable - ratio) < 0.04


def test_capped_masking_keeps_the_k_smallest_draws_and_leaves_the_rest_untouched():
    ids, mask = _captions(np.random.default_rng(5), 256, 24)
    key, k = jax.random.key(2), 3
    _, uncapped = mask_tokens(key, jnp.asarray(ids), jnp.asarray(mask), 0.5, BERT)
    corrupted, capped = mask_tokens(key, jnp.asarray(ids), jnp.asarray(mask), 0.5, BERT, max_predictions=k)
    drawn, draws = selection_draws(key, jnp.asarray(ids), jnp.asarray(mask), 0.5, BERT)
    uncapped, capped, drawn, draws = (np.asarray(x) for x in (uncapped, capped, drawn, draws))
    corrupted = np.asarray(corrupted)
    np.testing.assert_array_equal(drawn, uncapped)  # without a cap, the draws are the selection
    counts = uncapped.sum(1)
    assert (counts > k).any() and (counts <= k).any()
    for row in range(len(ids)):
        if counts[row] <= k:
            np.testing.assert_array_equal(capped[row], uncapped[row])
        else:  # exactly the k drawn positions with the smallest draws
            order = np.argsort(np.where(uncapped[row], draws[row], np.inf), kind='stable')[:k]
            np.testing.assert_array_equal(np.flatnonzero(capped[row]), np.sort(order))
    np.testing.assert_array_equal(corrupted[~capped], ids[~capped])  # dropped positions are not corrupted
    # the cap keeps early and late positions alike: keep rate of drawn positions in each half of the caption
    first = np.arange(24) < (mask.sum(1, keepdims=True) // 2)
    over = counts > k
    rate = lambda part: capped[over][part[over] & uncapped[over]].mean()
    assert abs(rate(first) - rate(~first)) < 0.08, (rate(first), rate(~first))


def test_auto_max_predictions_is_the_binomial_tail_bound():
    from scipy.stats import binom

    for maskable in (1, 5, 22, 23, 62, 126):
        for ratio in (0.15, 0.5):
            k = auto_max_predictions(maskable, ratio)
            assert binom.sf(k, maskable, ratio) < MAX_PREDICTIONS_OVERFLOW
            assert k == 0 or binom.sf(k - 1, maskable, ratio) >= MAX_PREDICTIONS_OVERFLOW
    assert resolve_max_predictions(-1, 24, 0.15) == 11  # the tiny configs: 11 of 24 positions
    # auto: the bound for max_len - 1 maskable tokens (all but [CLS]; [SEP] is maskable, official mask())
    for max_len in range(4, 80):
        for ratio in (0.15, 0.5):
            k = resolve_max_predictions(-1, max_len, ratio)
            k = k or max_len  # 0: the bound reaches max_len, every position is scored
            assert k >= max_len or binom.sf(k, max_len - 1, ratio) < MAX_PREDICTIONS_OVERFLOW, (max_len, ratio)
            assert k >= max_len or binom.sf(k - 1, max_len - 1, ratio) >= MAX_PREDICTIONS_OVERFLOW, (max_len, ratio)
    assert resolve_max_predictions(0, 24, 0.15) == 0 and resolve_max_predictions(24, 24, 0.15) == 0
    assert resolve_max_predictions(5, 24, 0.15) == 5


def test_prediction_positions_gather_each_rows_predictions_first():
    predicted = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    positions, valid = prediction_positions(jnp.asarray(predicted), 2)
    np.testing.assert_array_equal(np.asarray(valid), [[1, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(np.asarray(positions)[np.asarray(valid)], [1, 3, 0])


def test_hardest_negative_is_the_argmax_off_the_diagonal():
    sims = np.random.default_rng(2).normal(size=(6, 6)).astype(np.float32)
    np.fill_diagonal(sims, 10.0)  # the positive is the most similar: must still never be chosen
    got = np.asarray(choose_negatives(None, jnp.asarray(sims), 'hardest'))
    want = [max((j for j in range(6) if j != i), key=lambda j: sims[i, j]) for i in range(6)]
    np.testing.assert_array_equal(got, want)


def test_sampled_negatives_follow_softmax_over_negatives_and_never_the_positive():
    rng = np.random.default_rng(3)
    n, draws = 5, 20_000
    sims = rng.normal(size=(n, n)).astype(np.float32) * 2
    np.fill_diagonal(sims, 5.0)
    keys = jax.random.split(jax.random.key(0), draws)
    chosen = np.asarray(jax.jit(jax.vmap(lambda k: choose_negatives(k, jnp.asarray(sims), 'sample')))(keys))
    for row in range(n):
        counts = np.bincount(chosen[:, row], minlength=n)
        assert counts[row] == 0
        others = [j for j in range(n) if j != row]
        p = np.exp(sims[row, others] - sims[row, others].max())
        p /= p.sum()
        expected = draws * p
        chi2 = np.sum((counts[others] - expected) ** 2 / expected)
        assert chi2 < 18.5, (row, counts, expected)  # chi-square, 3 dof: p ~ 0.0003


EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vlp_jax.objectives.matching import choose_negatives
    sims = jnp.asarray(np.random.default_rng(4).normal(size=(16, 16)), jnp.float32)
    key = jax.random.key(7)
    one = [np.asarray(jax.jit(lambda s, c=c: choose_negatives(key, s, c))(sims)) for c in ('sample', 'hardest')]
    if jax.device_count() == 8:
        mesh = Mesh(np.array(jax.devices()), ('batch',))
        sharded = jax.device_put(sims, NamedSharding(mesh, P('batch', None)))
        with jax.set_mesh(mesh):
            eight = [np.asarray(jax.jit(lambda s, c=c: choose_negatives(key, s, c))(sharded))
                     for c in ('sample', 'hardest')]
        for a, b in zip(one, eight):
            np.testing.assert_array_equal(a, b)
    print('CHOICES', [a.tolist() for a in one])
""")


def test_negative_choice_is_the_same_on_one_and_eight_devices():
    outputs = []
    for devices in (1, 8):
        env = dict(
            os.environ,
            XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
            JAX_PLATFORMS='cpu',
            PYTHONPATH=REPO,
        )
        result = subprocess.run(
            [sys.executable, '-c', EIGHT_DEVICE_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1]
