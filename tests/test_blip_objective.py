"""BLIP's objective (ITC + ITM + LM) against a recomputation; its config checks; MAFA's pairs feeding the LM; the
tiny recipe on 1 and 8 devices and across a SIGKILL (slow)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, kill_after_checkpoint, make_config, read_metrics, run_cli, train_batches

from vlp_jax import setup as setup_lib
from vlp_jax.config import ConfigError
from vlp_jax.models.decoder_config import DECODER_BOS_ID
from vlp_jax.models.vlp import VLPModel
from vlp_jax.objectives.blip import BLIP_NEGATIVE_FLOOR, BlipObjective
from vlp_jax.objectives.regulators import DISCRIMINATOR

BLIP = (
    '--config.objective=blip',
    '--config.model.kind=fusion',
    '--config.model.text.fusion_layers=1',
    '--config.model.decoder.layout=shared',
)


def _config(*overrides):
    return make_config(*BLIP, *overrides, devices=1)


@pytest.fixture(scope='module')
def blip_batch():
    return train_batches(_config(), as_jax=True)[0]


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_blip_loss_is_itc_plus_itm_plus_a_label_smoothed_lm_of_the_shared_decoder(blip_batch):
    config = _config(
        '--config.loss.itm.negatives=hardest', '--config.loss.weights.itm=2.0', '--config.loss.weights.lm=3.0'
    )
    run_setup = setup_lib.build(config, jax.devices()[:1])
    objective = run_setup.objective
    assert isinstance(objective, BlipObjective) and objective.negative_floor == BLIP_NEGATIVE_FLOOR
    params = run_setup.init_state()['params']
    rng = jax.random.key(5)
    loss, metrics, _ = jax.jit(objective.loss)(params, {}, {}, blip_batch, rng, jnp.int32(0))
    jitted = jax.jit(run_setup.model.apply, static_argnames='method')
    apply = lambda *args, method=None: jitted({'params': params}, *args, method=method)
    b = blip_batch
    out = apply(b['image'], b['text_ids'], b['text_mask'])
    sims = np.asarray(out['image_embed']) @ np.asarray(out['text_embed']).T
    n = sims.shape[0]
    off = np.where(np.eye(n, dtype=bool), -np.inf, sims)
    negative_text, negative_image = off.argmax(1), off.T.argmax(1)
    rows = np.arange(n)
    image_rows = np.concatenate([rows, negative_image, rows])
    text_rows = np.concatenate([rows, rows, negative_text])
    labels = np.concatenate([np.ones(n, int), np.zeros(2 * n, int)])
    mask = np.asarray(b['text_mask'])
    fused = apply(
        np.asarray(out['text_tokens'])[text_rows],
        mask[text_rows],
        out['image_tokens'][image_rows],
        method=VLPModel.fuse,
    )
    itm = -_np_log_softmax(apply(fused, method=VLPModel.itm_logits))[np.arange(3 * n), labels].mean()
    np.testing.assert_allclose(float(metrics['train/itm']), itm, rtol=2e-5)
    # LM, written out: [BOS] + the caption's tokens after [CLS], next-token targets over the real tokens ([SEP]
    # included), BLIP med.py's CrossEntropyLoss(label_smoothing=0.1) over the 30,522 words, mean over tokens.
    ids = np.asarray(b['text_ids'])
    inputs = ids.copy()
    inputs[:, 0] = DECODER_BOS_ID
    hidden = apply(jnp.asarray(inputs), b['text_mask'], out['image_tokens'], None, method=VLPModel.decode)
    log_p = _np_log_softmax(np.asarray(apply(hidden, method=VLPModel.lm_logits))[:, :-1, :30522])
    targets, scored = ids[:, 1:], mask[:, 1:] > 0
    per_token = 0.9 * -np.take_along_axis(log_p, targets[..., None], -1)[..., 0] + 0.1 * -log_p.mean(-1)
    np.testing.assert_allclose(float(metrics['train/lm']), per_token[scored].mean(), rtol=2e-5)
    assert float(metrics['train/lm_pairs']) == n
    want = float(metrics['train/itc']) + 2.0 * itm + 3.0 * per_token[scored].mean()
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)


def test_mafa_converted_pairs_become_extra_lm_rows(blip_batch):
    """With COSMO's ITM discriminator converting every hardest negative (high = 0), the LM captions the B pairs
    and the 2B converted pairs, as ALBEF's MLM does under MAFA."""
    mafa = (
        '--config.loss.regulators=cosmo',
        '--config.loss.cosmo.discriminator=itm',
        '--config.loss.cosmo.reference_checkpoint=unused-in-process',
        '--config.loss.itm.negatives=hardest',
        '--config.loss.cosmo.high=0.0',
        '--config.loss.cosmo.low=0.0',
    )
    run_setup = setup_lib.build(_config(*mafa), jax.devices()[:1])
    params = run_setup.init_state()['params']
    frozen = {DISCRIMINATOR: params}
    _, metrics, _ = jax.jit(run_setup.objective.loss)(params, {}, frozen, blip_batch, jax.random.key(0), jnp.int32(0))
    assert float(metrics['train/lm_pairs']) == 3 * blip_batch['image'].shape[0]
    assert np.isfinite(float(metrics['train/lm']))


@pytest.mark.parametrize(
    'overrides, message',
    [
        (("--config.model.decoder.layout='none'",), "needs the decoder: set model.decoder.layout='shared'"),
        (('--config.model.decoder.context=fused',), "model.decoder.context must be 'image'"),
        (('--config.model.scan=True',), 'model.scan=False'),
        (("--config.loss.lm.prompt='a picture of a picture of a picture of a picture of'",), 'no room'),
    ],
)
def test_config_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(*BLIP, *overrides, '--config.model.max_text_len=12', devices=1)


def test_a_dual_encoder_has_no_decoder():
    with pytest.raises(ConfigError, match='fusion'):
        make_config('--config.model.decoder.layout=shared', devices=1)


def _tiny_args(workdir, *extra):
    return [
        '--config',
        os.path.join(REPO, 'configs', 'blip.py') + ':tiny,steps=8',
        '--workdir',
        str(workdir),
        *FAST_OVERRIDES,
        '--config.log_every=1',
        '--config.checkpoint_every=4',
        '--config.loss.momentum.queue_size=64',
        '--config.eval.rerank_k=4',
        *extra,
    ]


@pytest.mark.slow
def test_blip_tiny_one_and_eight_devices_agree_and_resumes_bit_exactly_after_sigkill(tmp_path):
    run_cli('vlp_jax.train', _tiny_args(tmp_path / 'eight'), devices=8)
    run_cli('vlp_jax.train', _tiny_args(tmp_path / 'one'))
    kill_after_checkpoint(_tiny_args(tmp_path / 'killed'), tmp_path / 'killed', 4)
    resumed = run_cli('vlp_jax.train', _tiny_args(tmp_path / 'killed'))
    assert 'resumed from checkpoint at step 4' in resumed.stdout
    eight, one, killed = (read_metrics(tmp_path / name) for name in ('eight', 'one', 'killed'))
    assert [r['step'] for r in one] == list(range(1, 9)) == [r['step'] for r in killed] == [r['step'] for r in eight]
    for key in ('train/loss', 'train/itc', 'train/itm', 'train/lm'):
        np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one], rtol=1e-3, err_msg=key)
    from vlp_jax.metrics import SPEED_KEYS as timing

    for a, b in zip(one, killed):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
