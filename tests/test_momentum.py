"""ALBEF's momentum model: EMA, queue rotation, distilled ITC and MLM, against numpy written from the paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, train_batches

from vlp_jax import setup as setup_lib
from vlp_jax.checks import validate
from vlp_jax.config import ConfigError
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss
from vlp_jax.objectives.momentum import (
    IMAGE_QUEUE,
    MOMENTUM_PARAMS,
    QUEUE_COUNT,
    QUEUE_POINTER,
    TEXT_QUEUE,
    candidates,
    distilled_regulation,
    ema,
    enqueue,
    init_momentum_extra,
)

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')
BATCH = 32  # FAST_OVERRIDES' batch size


def _config(*overrides, devices=1):
    return make_config(*FUSION, *overrides, devices=devices)


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_ema_matches_numpy():
    rng = np.random.default_rng(0)
    m = {'a': rng.normal(size=(3, 4)).astype(np.float32), 'b': {'c': rng.normal(size=(5,)).astype(np.float32)}}
    p = jax.tree.map(lambda x: x + 1.0, m)
    out = ema(m, p, 0.9)
    np.testing.assert_allclose(out['a'], 0.9 * m['a'] + 0.1 * p['a'], rtol=1e-6)
    np.testing.assert_allclose(out['b']['c'], 0.9 * m['b']['c'] + 0.1 * p['b']['c'], rtol=1e-6)


def test_queue_is_a_ring_buffer_of_whole_batches():
    batch, queue = 4, 12
    extra = init_momentum_extra({}, queue, 2)
    written = []
    for k in range(5):
        rows = np.full((batch, 2), float(k + 1), np.float32)
        extra = enqueue(extra, jnp.asarray(rows), jnp.asarray(-rows))
        written.append(k + 1)
        assert int(extra[QUEUE_COUNT]) == min((k + 1) * batch, queue)
        assert int(extra[QUEUE_POINTER]) == ((k + 1) * batch) % queue
    # batches 1..5 in a ring of 3 slots: slot 0 holds batch 4, slot 1 batch 5, slot 2 batch 3
    want = np.repeat([4.0, 5.0, 3.0], batch)
    np.testing.assert_array_equal(np.asarray(extra[IMAGE_QUEUE])[:, 0], want)
    np.testing.assert_array_equal(np.asarray(extra[TEXT_QUEUE])[:, 0], -want)


def _np_distilled_itc(v, t, v_m, t_m, image_queue, text_queue, valid_queue, scale, alpha):
    """ALBEF's ITC with momentum distillation, from the paper: anchors online, keys momentum + queue."""
    b = v.shape[0]
    losses = []
    for anchors, anchors_m, keys in (
        (v, v_m, np.concatenate([t_m, text_queue])),
        (t, t_m, np.concatenate([v_m, image_queue])),
    ):
        valid = np.concatenate([np.ones(b, bool), valid_queue])
        keys = keys[valid]
        log_p = _np_log_softmax(scale * anchors @ keys.T)
        soft = np.exp(_np_log_softmax(scale * anchors_m @ keys.T))
        y = alpha * soft + (1 - alpha) * np.eye(b, keys.shape[0])
        losses.append(-np.mean(np.sum(y * log_p, axis=1)))
    return 0.5 * (losses[0] + losses[1])


@pytest.mark.parametrize('filled', [0, 8, 16])
def test_distilled_itc_with_a_queue_matches_numpy(filled):
    rng = np.random.default_rng(filled)
    b, q, e, scale, alpha = 8, 16, 6, 7.0, 0.4
    v, t, v_m, t_m = (_unit(rng, (b, e)).astype(np.float32) for _ in range(4))
    image_queue, text_queue = _unit(rng, (q, e)).astype(np.float32), _unit(rng, (q, e)).astype(np.float32)
    extra = {IMAGE_QUEUE: image_queue, TEXT_QUEUE: text_queue, QUEUE_COUNT: jnp.int32(filled)}
    cands = candidates(extra, jnp.asarray(v_m), jnp.asarray(t_m))
    (i2t, t2i), _ = distilled_regulation((Regulation(), Regulation()), cands, jnp.float32(scale), jnp.float32(alpha))
    loss, _ = contrastive_loss(v, t, scale, i2t=i2t, t2i=t2i, image_candidates=cands.image, text_candidates=cands.text)
    want = _np_distilled_itc(v, t, v_m, t_m, image_queue, text_queue, np.arange(q) < filled, scale, alpha)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.fixture(scope='module')
def momentum_run():
    """Two real train steps of a tiny fusion model with momentum and a 2-batch queue, and what went in."""
    config = _config(
        '--config.loss.momentum.enabled=True',
        '--config.loss.momentum.decay=0.9',
        '--config.loss.momentum.alpha_ramp_steps=0',
        f'--config.loss.momentum.queue_size={2 * BATCH}',
    )
    run_setup = setup_lib.build(config, jax.devices()[:1])
    batches = train_batches(config, 2, as_jax=True)
    step = run_setup.train_step()
    states = [jax.device_get(run_setup.init_state())]
    metrics = []
    state = run_setup.init_state()
    for batch in batches:
        state, m, _ = step(state, batch)
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return run_setup, batches, states, metrics


def test_momentum_params_are_the_ema_of_the_updated_params(momentum_run):
    _, _, states, _ = momentum_run
    before, after = states[1], states[2]
    want = jax.tree.map(lambda m, p: 0.9 * m + 0.1 * p, before['extra'][MOMENTUM_PARAMS], after['params'])
    for got, expected in zip(jax.tree.leaves(after['extra'][MOMENTUM_PARAMS]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # and it moved: the momentum params are neither the old ones nor the new params
    leaf = lambda s, k: np.asarray(jax.tree.leaves(s)[k])
    assert not np.allclose(leaf(after['extra'][MOMENTUM_PARAMS], 0), leaf(after['params'], 0))


def test_queue_holds_the_momentum_embeddings_of_past_batches(momentum_run):
    run_setup, batches, states, _ = momentum_run
    model = run_setup.model
    for k, batch in enumerate(batches):  # batch k was embedded by the momentum params of state k
        m = states[k]['extra'][MOMENTUM_PARAMS]
        image = model.apply({'params': m}, batch['image'], method='encode_images')
        text = model.apply({'params': m}, batch['text_ids'], batch['text_mask'], method='encode_texts')
        rows = slice(k * BATCH, (k + 1) * BATCH)
        np.testing.assert_allclose(states[2]['extra'][IMAGE_QUEUE][rows], image, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(states[2]['extra'][TEXT_QUEUE][rows], text, rtol=1e-5, atol=1e-6)
    assert int(states[2]['extra'][QUEUE_COUNT]) == 2 * BATCH and int(states[2]['extra'][QUEUE_POINTER]) == 0


def test_second_step_itc_uses_the_queue_and_distillation(momentum_run):
    """Step 1's ITC recomputed in numpy: online anchors, momentum keys of the batch plus batch 0's queue rows."""
    run_setup, batches, states, metrics = momentum_run
    model, batch, state = run_setup.model, batches[1], states[1]
    apply = lambda params, *a, method=None: np.asarray(model.apply({'params': params}, *a, method=method))
    v = apply(state['params'], batch['image'], method='encode_images')
    t = apply(state['params'], batch['text_ids'], batch['text_mask'], method='encode_texts')
    m = state['extra'][MOMENTUM_PARAMS]
    v_m = apply(m, batch['image'], method='encode_images')
    t_m = apply(m, batch['text_ids'], batch['text_mask'], method='encode_texts')
    scale = 1.0 / float(metrics[1]['train/temperature'])
    queue_valid = np.arange(2 * BATCH) < BATCH
    want = _np_distilled_itc(
        v, t, v_m, t_m, state['extra'][IMAGE_QUEUE], state['extra'][TEXT_QUEUE], queue_valid, scale, 0.4
    )
    np.testing.assert_allclose(float(metrics[1]['train/itc']), want, rtol=1e-4)
    assert float(metrics[1]['train/momentum/alpha']) == pytest.approx(0.4)


def test_distillation_ramps_over_the_first_epoch():
    config = _config('--config.loss.momentum.enabled=True')
    objective = setup_lib.build(config, jax.devices()[:1]).objective
    epoch = config.data.shapes.train_size // config.batch_size
    assert float(objective.momentum.alpha(0)) == 0.0
    assert float(objective.momentum.alpha(epoch // 2)) == pytest.approx(0.4 * (epoch // 2) / epoch)
    assert float(objective.momentum.alpha(3 * epoch)) == pytest.approx(0.4)


@pytest.mark.parametrize(
    'overrides, key',
    [
        (('--config.loss.momentum.queue_size=64',), 'loss.momentum.queue_size'),
        (('--config.loss.momentum.enabled=True', '--config.loss.momentum.queue_size=48'), 'loss.momentum.queue_size'),
        (('--config.loss.momentum.enabled=True', '--config.loss.form=sigmoid'), 'loss.form'),
        (('--config.loss.momentum.enabled=True', '--config.loss.momentum.decay=1.0'), 'loss.momentum.decay'),
        (('--config.loss.momentum.enabled=True', '--config.loss.consistency_weight=0.2'), 'consistency_weight'),
    ],
)
def test_bad_momentum_settings_are_one_line_errors(overrides, key):
    with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
        _config(*overrides)


def test_a_dual_encoder_refuses_the_momentum_model():
    config = make_config('--config.loss.momentum.enabled=True')
    with pytest.raises(ConfigError, match='fusion'):
        validate(config, 1)
