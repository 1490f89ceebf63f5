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
    negative_sampling_logits,
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
    got = np.asarray(choose_negatives(None, jnp.asarray(sims), 'hardest', 1.0 / 0.07))
    want = [max((j for j in range(6) if j != i), key=lambda j: sims[i, j]) for i in range(6)]
    np.testing.assert_array_equal(got, want)


def _albef_weights(sims, temp, floor=0.0):
    """ALBEF's models/model_pretrain.py in numpy: "weights_i2t = F.softmax(sim_i2t[:,:bs],dim=1)" with
    "sim_i2t = image_feat @ text_feat_all / self.temp", "weights_i2t.fill_diagonal_(0)", then
    "torch.multinomial(weights_i2t[b], 1)" (which renormalises the row). `floor`: BLIP's "+1e-4"."""
    z = np.asarray(sims, np.float64) / temp
    weights = np.exp(z - z.max(1, keepdims=True))
    weights = weights / weights.sum(1, keepdims=True) + floor
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(1, keepdims=True)


def _clustered_sims(n=8, seed=3):
    """Cosines of a batch in two clusters (0.35 within, 0.05 across, small noise); positives at 0.9."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 2
    sims = np.where(cluster[:, None] == cluster[None, :], 0.35, 0.05) + 0.03 * rng.normal(size=(n, n))
    np.fill_diagonal(sims, 0.9)
    return sims.astype(np.float32)


@pytest.mark.parametrize('floor', [0.0, 1e-4])
def test_negative_sampling_logits_are_albefs_weights(floor):
    """Exact, in probability: the floor case (BLIP) shows the softmax normaliser includes the diagonal."""
    sims = _clustered_sims()
    np.fill_diagonal(sims, 1.0)  # the positive dominates the row's softmax at temp 0.07
    logits = np.asarray(negative_sampling_logits(jnp.asarray(sims), 1.0 / 0.07, floor), np.float64)
    assert np.all(np.isneginf(np.diag(logits)))
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), _albef_weights(sims, 0.07, floor), rtol=1e-4, atol=1e-7)


def test_sampled_negatives_follow_albefs_weights_at_the_learned_temperature():
    """20,000 draws per row of a clustered batch: chi-square against ALBEF's weights at temp 0.07, and far
    from the temperature-1 distribution (softmax over plain cosines, nearly uniform)."""
    from scipy.stats import chi2

    n, draws, temp = 8, 20_000, 0.07
    sims = _clustered_sims(n)
    keys = jax.random.split(jax.random.key(0), draws)
    sample = jax.jit(jax.vmap(lambda k: choose_negatives(k, jnp.asarray(sims), 'sample', 1.0 / temp)))
    chosen = np.asarray(sample(keys))
    official, temperature_one = _albef_weights(sims, temp), _albef_weights(sims, 1.0)
    bound = chi2.isf(1e-4, n - 2)
    for row in range(n):
        counts = np.bincount(chosen[:, row], minlength=n)
        assert counts[row] == 0  # never the positive
        others = [j for j in range(n) if j != row]
        statistic = lambda p: np.sum((counts[others] - draws * p[row, others]) ** 2 / (draws * p[row, others]))
        assert statistic(official) < bound, (row, counts, draws * official[row])
        assert statistic(temperature_one) > 20 * bound, (row, counts, draws * temperature_one[row])


def test_uniform_negatives_ignore_the_similarities():
    """'uniform' (the easy-negative ablation): 20,000 draws per row of the clustered batch, whose positives and
    own cluster dominate ALBEF's weights, are chi-square uniform over the other rows and never the positive."""
    from scipy.stats import chi2

    n, draws = 8, 20_000
    sims = _clustered_sims(n)
    keys = jax.random.split(jax.random.key(1), draws)
    chosen = np.asarray(
        jax.jit(jax.vmap(lambda k: choose_negatives(k, jnp.asarray(sims), 'uniform', 1.0 / 0.07)))(keys)
    )
    bound = chi2.isf(1e-4, n - 2)
    for row in range(n):
        counts = np.bincount(chosen[:, row], minlength=n)
        assert counts[row] == 0
        others = np.delete(counts, row)
        expected = draws / (n - 1)
        assert np.sum((others - expected) ** 2 / expected) < bound, (row, counts)


EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vlp_jax.objectives.matching import choose_negatives
    sims = jnp.asarray(np.random.default_rng(4).normal(size=(16, 16)), jnp.float32)
    key = jax.random.key(7)
    one = [np.asarray(jax.jit(lambda s, c=c: choose_negatives(key, s, c, 14.0))(sims)) for c in ('sample', 'hardest')]
    if jax.device_count() == 8:
        mesh = Mesh(np.array(jax.devices()), ('batch',))
        sharded = jax.device_put(sims, NamedSharding(mesh, P('batch', None)))
        with jax.set_mesh(mesh):
            eight = [np.asarray(jax.jit(lambda s, c=c: choose_negatives(key, s, c, 14.0))(sharded))
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
