"""MAFA's connection mining with the ITM discriminator: the three threshold cases in both directions
(ITM labels, extra MLM pairs, ITC targets) against a numpy recomputation; a fusion checkpoint judging
another architecture's batches from the CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, make_config, read_metrics, run_cli, train_batches

from vlp_jax import setup as setup_lib
from vlp_jax.models.vlp import VLPModel
from vlp_jax.objectives.albef import split_rng
from vlp_jax.objectives.base import REGULATION
from vlp_jax.objectives.matching import mask_tokens
from vlp_jax.objectives.regulators import (
    DISCRIMINATOR,
    STATE_AT_THRESHOLD,
    STATE_CONVERTED,
    STATE_DROPPED,
    STATE_KEPT,
)

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')
MAFA = (
    '--config.loss.regulators=cosmo',
    '--config.loss.cosmo.discriminator=itm',
    '--config.loss.cosmo.reference_checkpoint=unused-in-process',
    '--config.loss.itm.negatives=hardest',
    '--config.loss.mlm.mask_ratio=0.5',
    '--config.loss.cosmo.smoothing_start_step=1000',
)


def _config(*overrides):
    return make_config(*FUSION, *overrides, devices=1)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope='module')
def world():
    config = _config(*MAFA)
    batch = train_batches(config, as_jax=True)[0]
    trained = setup_lib.build(config, jax.devices()[:1])
    params = trained.init_state()['params']
    judge = setup_lib.build(_config(*MAFA, '--config.seed=7'), jax.devices()[:1]).init_state()['params']
    return batch, trained.model, params, judge


def _hardest_two(sim):
    masked = np.where(np.eye(sim.shape[0], dtype=bool), -np.inf, sim)
    order = np.argsort(-masked, axis=1, kind='stable')
    return order[:, 0], order[:, 1]


def test_mafa_itm_mlm_and_itc_match_a_recomputation(world):
    batch, model, params, judge = world
    apply = lambda p, *a, method=None: model.apply({'params': p}, *a, method=method)
    n = batch['image'].shape[0]
    rows = np.arange(n)
    out = apply(params, batch['image'], batch['text_ids'], batch['text_mask'])
    sims = np.asarray(out['image_embed'], np.float64) @ np.asarray(out['text_embed'], np.float64).T
    j1_text, j2_text = _hardest_two(sims)  # per image (i2t)
    j1_image, j2_image = _hardest_two(sims.T)  # per text (t2i)

    # The judge's ITM match probability, one pair at a time.
    judged = apply(judge, batch['image'], batch['text_ids'], batch['text_mask'])
    mask = np.asarray(batch['text_mask'])

    def match(image_row, text_row):
        fused = apply(
            judge,
            judged['text_tokens'][text_row : text_row + 1],
            mask[text_row : text_row + 1],
            judged['image_tokens'][image_row : image_row + 1],
            method=VLPModel.fuse,
        )
        return float(jax.nn.softmax(apply(judge, fused, method=VLPModel.itm_logits))[0, 1])

    q_i2t = np.array([match(i, j1_text[i]) for i in rows])
    q_t2i = np.array([match(j1_image[i], i) for i in rows])
    # Thresholds between the judge's own scores, so every case occurs in both directions.
    scores = np.sort(np.concatenate([q_i2t, q_t2i]))
    low, high = float(scores[len(scores) // 3]), float(scores[2 * len(scores) // 3])
    config = _config(*MAFA, f'--config.loss.cosmo.low={low!r}', f'--config.loss.cosmo.high={high!r}')
    objective = setup_lib.build(config, jax.devices()[:1]).objective
    rng = jax.random.key(3)
    loss, metrics, outputs = objective.loss(params, {}, {DISCRIMINATOR: judge}, batch, rng, jnp.int32(0))
    cosmo = outputs[REGULATION]['cosmo']

    def want_state(q):  # MAFA's strict inequalities: a score exactly at low or high decides nothing
        between = np.where((q > low) & (q < high), STATE_DROPPED, STATE_AT_THRESHOLD)
        return np.where(q > high, STATE_CONVERTED, np.where(q < low, STATE_KEPT, between))

    for name, q, j1 in (('i2t', q_i2t, j1_text), ('t2i', q_t2i, j1_image)):
        np.testing.assert_array_equal(np.asarray(cosmo[name]['hardest']), j1)
        np.testing.assert_allclose(np.asarray(cosmo[name]['hardest_score']), q, rtol=1e-5, atol=1e-6)
        state = want_state(q)
        np.testing.assert_array_equal(np.asarray(cosmo[name]['state']), state)
        assert {STATE_KEPT, STATE_DROPPED, STATE_CONVERTED} <= set(state.tolist()), (name, state)

    # ITM, MAFA's official pair set (models/model_pretrain_MAFA.py, strict thresholds): the positives; per
    # anchor by the score q of (anchor, j1): q < low -> j1 negative, low < q < high -> j2 negative, q > high
    # -> (anchor, j1) an extra positive and no negative; q exactly at a threshold (low and high are two of
    # the judge's scores here) -> no pair. q as the objective computed it, so ulps decide nothing.
    conv_i2t, conv_t2i = want_state(q_i2t) == STATE_CONVERTED, want_state(q_t2i) == STATE_CONVERTED
    pairs = [(i, i, 1) for i in rows]
    for name, j1, j2 in (('t2i', j1_image, j2_image), ('i2t', j1_text, j2_text)):
        q = np.asarray(cosmo[name]['hardest_score'])
        for i in rows:
            pair = (lambda j: (j, i)) if name == 't2i' else (lambda j: (i, j))
            if q[i] < low:
                pairs.append((*pair(j1[i]), 0))
            elif low < q[i] < high:
                pairs.append((*pair(j2[i]), 0))
            elif q[i] > high:
                pairs.append((*pair(j1[i]), 1))
    assert len(pairs) < 3 * n + conv_i2t.sum() + conv_t2i.sum()  # some anchors have no negative
    images, texts = np.asarray(out['image_tokens']), np.asarray(out['text_tokens'])
    image_rows, text_rows, labels = (np.array(c) for c in zip(*pairs))
    fused = apply(params, texts[text_rows], mask[text_rows], images[image_rows], method=VLPModel.fuse)
    log_p = _np_log_softmax(apply(params, fused, method=VLPModel.itm_logits))
    np.testing.assert_allclose(float(metrics['train/itm']), -log_p[np.arange(len(pairs)), labels].mean(), rtol=1e-5)

    # MLM: each caption with its image, plus each converted pair (caption j1 with image i; caption i with image
    # j1), in 3B fixed slots; every slot's row masked by its own draw (one [3B, L] draw from the mask key).
    keys = split_rng(rng)
    slot_images = np.concatenate([rows, rows, j1_image])
    slot_texts = np.concatenate([rows, j1_text, rows])
    in_use = np.concatenate([np.ones(n, bool), conv_i2t, conv_t2i])
    masked_ids, predicted = mask_tokens(
        keys['mask'], batch['text_ids'][slot_texts], mask[slot_texts], 0.5, objective.special, objective.max_predictions
    )
    masked_ids, predicted = np.asarray(masked_ids)[in_use], np.asarray(predicted)[in_use]
    image_rows, text_rows = slot_images[in_use], slot_texts[in_use]
    masked_tokens = np.asarray(apply(params, masked_ids, mask[text_rows], method=VLPModel.text_tokens))
    fused = apply(params, masked_tokens, mask[text_rows], images[image_rows], method=VLPModel.fuse)
    log_p = _np_log_softmax(apply(params, fused, method=VLPModel.mlm_logits))
    ids, chosen = np.asarray(batch['text_ids'])[text_rows], predicted
    token_loss = -np.take_along_axis(log_p, ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(metrics['train/mlm']), token_loss[chosen].mean(), rtol=1e-5)
    assert float(metrics['train/mlm_pairs']) == n + conv_i2t.sum() + conv_t2i.sum()

    # ITC: converted rows have targets 1/2 on the pair and 1/2 on j1 (smoothing not started).
    scale = float(out['logit_scale'])
    itc = 0.0
    for s, j1, converted in ((sims, j1_text, conv_i2t), (sims.T, j1_image, conv_t2i)):
        y = np.eye(n)
        y[rows[converted], j1[converted]] = 1.0
        y /= y.sum(1, keepdims=True)
        itc += 0.5 * -np.mean(np.sum(y * _np_log_softmax(scale * s), axis=1))
    np.testing.assert_allclose(float(metrics['train/itc']), itc, rtol=1e-4)
    np.testing.assert_allclose(
        float(loss), float(metrics['train/itc']) + float(metrics['train/itm']) + float(metrics['train/mlm']), rtol=1e-6
    )


def _args(config, workdir, arg, extra=()):
    return ['--config', f'{config}:{arg}', '--workdir', str(workdir), *FAST_OVERRIDES, *extra]


@pytest.mark.slow  # 1 min of CI: it trains a fusion and a dual model
def test_a_fusion_checkpoint_judges_a_dual_encoder_and_a_dual_cannot_be_an_itm_judge(tmp_path):
    fusion_ref, dual_ref = tmp_path / 'fusion_ref', tmp_path / 'dual_ref'
    # The judge has another architecture than the dual encoder it judges (fusion layers, embed_dim 16).
    run_cli('vlp_jax.train', _args(TINY_CONFIG, fusion_ref, 'steps=5', (*FUSION, '--config.model.embed_dim=16')))
    cosmo = os.path.join(REPO, 'configs', 'shapes_cosmo.py')
    itm = ('--config.loss.cosmo.discriminator=itm', '--config.loss.cosmo.high=0.0', '--config.loss.cosmo.low=0.0')
    run_cli(
        'vlp_jax.train', _args(cosmo, tmp_path / 'judged', f'reference={fusion_ref}', (*itm, '--config.total_steps=5'))
    )
    record = read_metrics(tmp_path / 'judged')[-1]
    # high = 0: every hardest negative the judge gives a match probability > 0 is converted
    assert record['train/cosmo/converted_fraction'] == 1.0 and record['train/cosmo/num_converted'] == 2 * 32

    run_cli('vlp_jax.train', _args(TINY_CONFIG, dual_ref, 'steps=2'))
    result = run_cli(
        'vlp_jax.train',
        _args(cosmo, tmp_path / 'refused', f'reference={dual_ref}', (*itm, '--config.total_steps=5')),
        check=False,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert 'needs a fusion checkpoint' in lines[0] and str(dual_ref) in lines[0]
    assert not (tmp_path / 'refused').exists()
