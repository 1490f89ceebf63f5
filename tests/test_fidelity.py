"""Fidelity to the official ALBEF / GRIT-VLP / MAFA code: each test's reference is written from the
official PyTorch lines it quotes, in plain numpy, never by calling the function under test (gradient
checks compare with the previous form of a term, written out in jax here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, train_pipeline

from vlp_jax import setup as setup_lib
from vlp_jax.objectives.chunked import chunked_contrastive_loss
from vlp_jax.objectives.contrastive import consistency_loss, contrastive_loss
from vlp_jax.objectives.matching import mafa_pairs

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------ GRIT-VLP's consistency term


def _grit_consistency(sim_i2t, sim_t2i):
    """models/model_pretrain_GRIT_VLP.py, line by line:
    loss_c_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1)* F.softmax(sim_t2i_sg, dim=1),  dim=1).mean()
    loss_c_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1)* F.softmax(sim_i2t_sg, dim=1),  dim=1).mean()
    ... + 0.2* (loss_c_i2t+loss_c_t2i)/2"""
    loss_c_i2t = -np.mean(np.sum(_np_log_softmax(sim_i2t) * np.exp(_np_log_softmax(sim_t2i)), axis=1))
    loss_c_t2i = -np.mean(np.sum(_np_log_softmax(sim_t2i) * np.exp(_np_log_softmax(sim_i2t)), axis=1))
    return (loss_c_i2t + loss_c_t2i) / 2


def _kl_consistency(logits_i2t, logits_t2i):
    """The previous (KL) form of the term: its gradient is the one the cross-entropy must keep."""
    log_p_i2t, log_p_t2i = jax.nn.log_softmax(logits_i2t, -1), jax.nn.log_softmax(logits_t2i, -1)

    def kl(target_log_p, log_p):
        target_log_p = jax.lax.stop_gradient(target_log_p)
        return jnp.mean(jnp.sum(jnp.exp(target_log_p) * (target_log_p - log_p), axis=-1))

    return 0.5 * (kl(log_p_t2i, log_p_i2t) + kl(log_p_i2t, log_p_t2i))


def _grit_embeddings(seed=0, batch=16, width=8):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, width))
    text = image + 0.8 * rng.normal(size=(batch, width))
    return jnp.asarray(_unit(image), jnp.float32), jnp.asarray(_unit(text), jnp.float32)


def test_consistency_value_is_grit_vlps_cross_entropy_and_its_gradient_the_kls():
    image, text = _grit_embeddings()
    scale = 1.0 / 0.07
    v, t = np.asarray(image, np.float64), np.asarray(text, np.float64)
    want = _grit_consistency(scale * v @ t.T, scale * t @ v.T)
    logits = lambda i, x: (scale * i @ x.T, scale * x @ jax.lax.stop_gradient(i).T)  # GRIT's sg keys
    got = consistency_loss(*logits(image, text))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # The value differs from the KL by the targets' entropy (> 0 here), the gradient does not.
    assert float(got) - float(_kl_consistency(*logits(image, text))) > 0.1
    new = jax.grad(lambda i, x: consistency_loss(*logits(i, x)), argnums=(0, 1))(image, text)
    old = jax.grad(lambda i, x: _kl_consistency(*logits(i, x)), argnums=(0, 1))(image, text)
    for a, b in zip(new, old):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_chunked_consistency_reports_the_official_value_with_the_kl_gradient():
    image, text = _grit_embeddings(1, batch=32)
    scale = jnp.float32(1.0 / 0.07)
    v, t = np.asarray(image, np.float64), np.asarray(text, np.float64)
    want = _grit_consistency(float(scale) * v @ t.T, float(scale) * t @ v.T)

    def chunked(i, x):
        loss, metrics, _ = chunked_contrastive_loss(
            i, x, scale, stop_grad_keys=True, consistency_weight=0.2, block_size=8
        )
        return loss, metrics

    def dense_kl(i, x):
        base, _ = contrastive_loss(i, x, scale, stop_grad_keys=True)
        logits_i2t = scale * i @ jax.lax.stop_gradient(x).T
        logits_t2i = scale * x @ jax.lax.stop_gradient(i).T
        return base + 0.2 * _kl_consistency(logits_i2t, logits_t2i)

    (loss, metrics), grads = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(image, text)
    np.testing.assert_allclose(float(metrics['consistency']), want, rtol=1e-5)
    base = 0.5 * (float(metrics['loss_i2t']) + float(metrics['loss_t2i']))
    np.testing.assert_allclose(float(loss), base + 0.2 * want, rtol=1e-5)
    for a, b in zip(grads, jax.grad(dense_kl, argnums=(0, 1))(image, text)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ ALBEF's ITM negatives


def _albef_config(*overrides):
    config = make_config(*FUSION, *overrides, devices=1)
    return config


def _pooled_chi_square(counts, probabilities):
    """Pearson's statistic and degrees of freedom, bins expected below 5 draws pooled into one."""
    expected = counts.sum() * probabilities
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep]), keep.sum() - 1


def _albef_negative_probabilities(anchors, keys, temp):
    """ALBEF (models/model_pretrain.py): "sim_i2t = image_feat @ text_feat_all / self.temp",
    "weights_i2t = F.softmax(sim_i2t[:,:bs],dim=1)", "weights_i2t.fill_diagonal_(0)", torch.multinomial."""
    sim = np.asarray(anchors, np.float64) @ np.asarray(keys, np.float64).T / temp
    weights = np.exp(sim - sim.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(1, keepdims=True)


@pytest.mark.parametrize('momentum', [False, True])
def test_albef_objective_samples_negatives_from_itc_logits_against_its_keys(momentum):
    """The objective's sampled ITM negatives follow ALBEF's weights at the model's learned temperature,
    with the online anchors against the batch's momentum keys when the momentum model runs
    ("text_feat_all = torch.cat([text_feat_m.t(),self.text_queue...])", "sim_i2t[:,:bs]")."""
    from scipy.stats import chi2

    n, width, draws, temp = 8, 64, 20_000, 0.07
    overrides = ['--config.loss.itm.negatives=sample']
    if momentum:
        overrides += ['--config.loss.momentum.enabled=True', '--config.loss.momentum.queue_size=32']
    objective = setup_lib.build(_albef_config(*overrides), jax.devices()[:1]).objective
    rng = np.random.default_rng(4)
    unit = lambda x: jnp.asarray(_unit(x), jnp.float32)
    image = rng.normal(size=(n, width))
    out = {'image_embed': unit(image), 'text_embed': unit(image + rng.normal(size=(n, width)))}
    out['logit_scale'] = jnp.float32(1.0 / temp)
    out_m = {'image_embed': unit(rng.normal(size=(n, width))), 'text_embed': unit(rng.normal(size=(n, width)))}
    keys_of = out_m if momentum else out

    def negatives(key):
        a, b = jax.random.split(key)
        itm, _ = objective.choose_pairs(
            out, {}, {'text_negatives': a, 'image_negatives': b}, out_m if momentum else None
        )
        return itm.text[2 * n :], itm.image[n : 2 * n]  # per image its negative text; per text its image

    text_negative, image_negative = (
        np.asarray(x) for x in jax.jit(jax.vmap(negatives))(jax.random.split(jax.random.key(1), draws))
    )
    for chosen, anchors, cand, online_keys in (
        (text_negative, out['image_embed'], keys_of['text_embed'], out['text_embed']),
        (image_negative, out['text_embed'], keys_of['image_embed'], out['image_embed']),
    ):
        official = _albef_negative_probabilities(anchors, cand, temp)
        temperature_one = _albef_negative_probabilities(anchors, cand, 1.0)
        online = _albef_negative_probabilities(anchors, online_keys, temp)
        worst_online = 0.0
        for row in range(n):
            counts = np.bincount(chosen[:, row], minlength=n)
            assert counts[row] == 0
            statistic, dof = _pooled_chi_square(counts, official[row])
            assert statistic < chi2.isf(1e-4, dof), (row, counts, draws * official[row])
            statistic, dof = _pooled_chi_square(counts, temperature_one[row])
            assert statistic > 20 * chi2.isf(1e-4, dof), (row, counts)
            worst_online = max(worst_online, _pooled_chi_square(counts, online[row])[0])
        if momentum:  # the momentum keys, not the online ones
            assert worst_online > 1000, worst_online


# ------------------------------------------------------------------ MAFA's ITM and MLM pair sets


def _official_mafa_pairs(j1_i2t, j2_i2t, q_i2t, j1_t2i, j2_t2i, q_t2i, high, low, converted_negative=False):
    """MAFA models/model_pretrain_MAFA.py, anchor by anchor: ([(image, text, label)] ITM, [(image, text)] MLM).

    T2I (text i; images neg_idxs_t2i = j1, sec_hard_idxs = j2; itm_neg_wrttxt_score = q):
      image_embeds_neg = image_embeds[neg_idxs_t2i][itm_neg_wrttxt_score < low_threshold]        -> label 0
      image_embeds_pos = image_embeds[neg_idxs_t2i][itm_neg_wrttxt_score > high_threshold]       -> label 1
      image_embeds_sechard = image_embeds[sec_hard_idxs][(score > low_threshold)*(score < high_threshold)] -> 0
    I2T the same with texts. MLM: add_pos_input_ids = torch.cat([text.input_ids,
    text.input_ids[neg_idxs_i2t][itm_neg_wrtimg_score > high_threshold], text.input_ids[itm_neg_wrttxt_score
    > high_threshold]]) with add_pos_images = torch.cat([image_embeds, image_embeds[itm_neg_wrtimg_score >
    high_threshold], image_embeds[neg_idxs_t2i][itm_neg_wrttxt_score > high_threshold]]).
    `converted_negative` adds (anchor, j2, 0) for q > high: not official, the documented option."""
    bs = len(q_i2t)
    itm = [(i, i, 1) for i in range(bs)]
    for i in range(bs):  # T2I: anchor text i, candidate images
        if q_t2i[i] < low:
            itm.append((j1_t2i[i], i, 0))
        if q_t2i[i] > high:
            itm.append((j1_t2i[i], i, 1))
        if low < q_t2i[i] < high or (converted_negative and q_t2i[i] > high):
            itm.append((j2_t2i[i], i, 0))
    for i in range(bs):  # I2T: anchor image i, candidate texts
        if q_i2t[i] < low:
            itm.append((i, j1_i2t[i], 0))
        if q_i2t[i] > high:
            itm.append((i, j1_i2t[i], 1))
        if low < q_i2t[i] < high or (converted_negative and q_i2t[i] > high):
            itm.append((i, j2_i2t[i], 0))
    mlm = [(i, i) for i in range(bs)]
    mlm += [(i, j1_i2t[i]) for i in range(bs) if q_i2t[i] > high]
    mlm += [(j1_t2i[i], i) for i in range(bs) if q_t2i[i] > high]
    return itm, mlm


def _mining(rng, q):
    """One direction of regulators.cosmo_regulation's info: j1 != j2, neither the anchor; q as given."""
    n = len(q)
    picks = np.array([rng.choice([j for j in range(n) if j != i], 2, replace=False) for i in range(n)])
    return {
        'hardest': jnp.asarray(picks[:, 0], jnp.int32),
        'second': jnp.asarray(picks[:, 1], jnp.int32),
        'hardest_score': jnp.asarray(q, jnp.float32),
        'converted': jnp.asarray(np.asarray(q) > HIGH),
    }


HIGH, LOW = 0.75, 0.25  # exact in float32, as are the scores below


@pytest.mark.parametrize('converted_negative', [False, True])
def test_mafa_pairs_are_the_official_pair_sets_with_strict_thresholds(converted_negative):
    """Every case in both directions, scores exactly at high and at low included (official: no ITM pair)."""
    rng = np.random.default_rng(0)
    q_i2t = np.array([0.1, 0.25, 0.5, 0.75, 0.9, 0.1, 0.5, 0.9, 0.3, 0.6, 0.25, 0.75], np.float32)
    q_t2i = rng.permutation(q_i2t)
    i2t, t2i = _mining(rng, q_i2t), _mining(rng, q_t2i)
    kwargs = {'converted_negative': True} if converted_negative else {}
    itm, mlm = mafa_pairs(i2t, t2i, HIGH, LOW, **kwargs)
    itm, mlm = (tuple(np.asarray(x) for x in pairs) for pairs in (itm, mlm))
    want_itm, want_mlm = _official_mafa_pairs(
        *(np.asarray(i2t[k]) for k in ('hardest', 'second', 'hardest_score')),
        *(np.asarray(t2i[k]) for k in ('hardest', 'second', 'hardest_score')),
        HIGH,
        LOW,
        converted_negative,
    )
    present = itm[3] > 0
    assert set(np.unique(itm[3])) <= {0.0, 1.0}
    got_itm = sorted(zip(itm[0][present].tolist(), itm[1][present].tolist(), itm[2][present].tolist()))
    assert got_itm == sorted(want_itm)
    present = mlm[3] > 0
    assert list(zip(mlm[0][present].tolist(), mlm[1][present].tolist())) == want_mlm  # the official order
    assert np.all(mlm[2] == 1)


# ------------------------------------------------------------------ MLM rows masked independently


MAFA_ALL_CONVERTED = (
    '--config.loss.regulators=cosmo',
    '--config.loss.cosmo.discriminator=itm',
    '--config.loss.cosmo.reference_checkpoint=unused-in-process',
    '--config.loss.cosmo.smoothing_start_step=1000',
    '--config.loss.cosmo.high=0.0',  # every hardest negative the judge scores above 0 is converted
    '--config.loss.cosmo.low=0.0',
    '--config.loss.itm.negatives=hardest',
    '--config.loss.mlm.mask_ratio=0.15',
    '--config.loss.momentum.enabled=True',
    '--config.loss.momentum.queue_size=32',
)


def test_mafa_mlm_rows_are_masked_independently_and_the_momentum_model_sees_the_same_rows(monkeypatch):
    """MAFA masks all its MLM rows at once, each by its own draw: "add_pos_input_ids = torch.cat([text.input_ids,
    text.input_ids[neg_idxs_i2t][...], text.input_ids[itm_neg_wrttxt_score > high_threshold]])" then
    "self.mask(add_pos_input_ids, ...)" with "probability_matrix = torch.full(add_pos_labels.shape, ...)".
    An extra (converted) row's mask is therefore not its caption's: identical masks only as often as two
    independent 15% draws coincide. Each row keeps BERT's 15% / 80-10-10 rule, and ALBEF's momentum
    distillation reads the very masked rows the online model reads."""
    import vlp_jax.objectives.albef as albef
    from vlp_jax.data import batch as batch_spec
    from vlp_jax.data.tokenizer import BERT_CLS_ID, BERT_MASK_ID
    from vlp_jax.objectives.base import REGULATION
    from vlp_jax.objectives.momentum import MOMENTUM_PARAMS
    from vlp_jax.objectives.regulators import DISCRIMINATOR

    config = _albef_config(*MAFA_ALL_CONVERTED)
    run_setup = setup_lib.build(config, jax.devices()[:1])
    objective, params = run_setup.objective, run_setup.init_state()['params']
    raw = train_pipeline(config).raw_batch(0)
    batch = batch_spec.select(raw, batch_spec.REQUIRED_KEYS)
    batch['image'] = batch_spec.normalise_images(raw['image'])
    batch = {key: jnp.asarray(value) for key, value in batch.items()}
    extra = {**objective.init_extra(params, jax.random.key(0)), MOMENTUM_PARAMS: params}

    masking, text_inputs = [], []
    mask_tokens, apply = albef.mask_tokens, objective._apply

    def recording_mask_tokens(*args, **kwargs):
        result = mask_tokens(*args, **kwargs)
        masking.append((np.asarray(args[1]), np.asarray(args[2]), *(np.asarray(x) for x in result)))
        return result

    def recording_apply(p, *args, method=None, rng=None):
        if method == 'text_tokens':
            text_inputs.append(np.asarray(args[0]))
        return apply(p, *args, method=method, rng=rng)

    monkeypatch.setattr(albef, 'mask_tokens', recording_mask_tokens)
    monkeypatch.setattr(objective, '_apply', recording_apply)
    _, metrics, outputs = objective.loss(params, extra, {DISCRIMINATOR: params}, batch, jax.random.key(3), 0)

    ids, mask = np.asarray(batch['text_ids']), np.asarray(batch['text_mask'])
    n = ids.shape[0]
    cosmo = outputs[REGULATION]['cosmo']
    converted = {name: np.asarray(cosmo[name]['converted']) for name in ('i2t', 't2i')}
    assert converted['i2t'].sum() + converted['t2i'].sum() > n  # many extra rows
    # The MLM rows, in MAFA's slots: the captions, caption j1 of each image (i2t), each caption again (t2i).
    slot_texts = np.concatenate([np.arange(n), np.asarray(cosmo['i2t']['hardest']), np.arange(n)])
    in_use = np.concatenate([np.ones(n, bool), converted['i2t'], converted['t2i']])
    assert len(masking) == 1
    row_ids, row_mask, masked_ids, selected = masking[0]
    np.testing.assert_array_equal(row_ids, ids[slot_texts])  # one masking draw per MLM row, not per caption
    np.testing.assert_array_equal(row_mask, mask[slot_texts])
    assert len(text_inputs) == 2  # the online and the momentum model's MLM rows: the same masked ids
    for seen in text_inputs:
        np.testing.assert_array_equal(seen, masked_ids)

    # Extra rows against their caption's row (slot t holds caption t): identical masks as rare as chance.
    maskable = (row_mask > 0) & (row_ids != BERT_CLS_ID)
    extra_rows = np.flatnonzero(in_use & (np.arange(3 * n) >= n))
    same = np.array([np.array_equal(selected[p], selected[slot_texts[p]]) for p in extra_rows])
    ratio = 0.15
    p_same = np.array([(ratio**2 + (1 - ratio) ** 2) ** maskable[p].sum() for p in extra_rows])
    bound = p_same.sum() + 5 * np.sqrt(np.sum(p_same * (1 - p_same))) + 1
    assert same.sum() <= bound, (same.sum(), p_same.sum(), len(extra_rows))

    # BERT's rule in the caption rows and in the extra rows alike.
    vocab = objective.special.vocab_size
    for rows in (np.arange(n), extra_rows):
        pool, chosen = maskable[rows], selected[rows]
        assert not chosen[~pool].any()
        rate = chosen.sum() / pool.sum()
        assert abs(rate - ratio) < 4 * np.sqrt(ratio * (1 - ratio) / pool.sum()), rate
        corrupted, original = masked_ids[rows][chosen], row_ids[rows][chosen]
        to_mask = corrupted == BERT_MASK_ID
        kept = ~to_mask & (corrupted == original)
        random_word = ~to_mask & ~kept
        shares = ((to_mask, 0.8), (random_word, 0.1 * (1 - 1 / vocab)), (kept, 0.1 + 0.1 / vocab))
        for hits, want in shares:
            share = hits.mean()
            assert abs(share - want) < 4 * np.sqrt(want * (1 - want) / chosen.sum()) + 1e-9, (share, want)
    assert 'train/mlm_capped' in metrics


def test_hardest_negatives_stay_grit_vlps_argmax_of_the_online_cosines_with_the_momentum_model():
    """GRIT-VLP: "top_k= torch.topk(weights_i2t[b],1)" over its online "sim_i2t = image_feat @ text_feat_sg /
    self.temp" (diagonal zeroed); the momentum model, which GRIT-VLP does not have, changes nothing."""
    n, width = 8, 16
    overrides = ('--config.loss.itm.negatives=hardest', '--config.loss.momentum.enabled=True')
    objective = setup_lib.build(
        _albef_config(*overrides, '--config.loss.momentum.queue_size=32'), jax.devices()[:1]
    ).objective
    rng = np.random.default_rng(5)
    unit = lambda x: jnp.asarray(_unit(x), jnp.float32)
    out = {'image_embed': unit(rng.normal(size=(n, width))), 'text_embed': unit(rng.normal(size=(n, width)))}
    out['logit_scale'] = jnp.float32(1.0 / 0.07)
    out_m = {'image_embed': unit(rng.normal(size=(n, width))), 'text_embed': unit(rng.normal(size=(n, width)))}
    keys = {'text_negatives': jax.random.key(0), 'image_negatives': jax.random.key(1)}
    itm, _ = objective.choose_pairs(out, {}, keys, out_m)
    sims = np.asarray(out['image_embed'], np.float64) @ np.asarray(out['text_embed'], np.float64).T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(np.asarray(itm.text[2 * n :]), sims.argmax(1))  # per image
    np.testing.assert_array_equal(np.asarray(itm.image[n : 2 * n]), sims.T.argmax(1))  # per text
