"""The generic step and the dual-encoder objective in-process: RNG and dropout, frozen roles,
COSMO with a real discriminator, sigmoid with conversions, the smoothing start."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, train_batches, train_source

from vlp_jax import parallel, steps
from vlp_jax import setup as setup_lib
from vlp_jax.checks import regulator_context, validate
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.synthetic import captions_true_of_scenes
from vlp_jax.objectives.base import REGULATION
from vlp_jax.objectives.regulators import DISCRIMINATOR, RegulatorChain

ONE_DEVICE = jax.devices()[:1]


def _config(*overrides):
    return make_config('--config.data.shapes.detail=coarse', *overrides, devices=1)


def _chain(config):
    """The config's regulator chain, as setup.build makes it."""
    return RegulatorChain.from_config(config, regulator_context(config, validate(config, 1)))


@pytest.fixture(scope='module')
def world():
    """A real coarse-caption batch with its ground truth, and a second model (seed 1) to act as a frozen one."""
    config = _config()
    other = config.copy_and_resolve_references()
    other.seed = 1
    frozen_params = setup_lib.build(other, ONE_DEVICE).init_state()['params']
    source = train_source(config)
    host = train_batches(config, probe_keys=batch_spec.GROUND_TRUTH_KEYS, source=source)[0]
    return host, frozen_params, source.ground_truth_probe()


def _embeddings(run_setup, params, host):
    encode_images, encode_texts = run_setup.encoders()
    mesh = run_setup.mesh
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))
    return (
        parallel.to_host(encode_images(params, put(host['image']))),
        parallel.to_host(encode_texts(params, put(host['text_ids']), put(host['text_mask']))),
    )


def _objective_loss(run_setup, state, frozen, host, rng, step=0):
    batch = {key: jnp.asarray(host[key]) for key in run_setup.objective.batch_keys}
    with jax.set_mesh(run_setup.mesh):
        return run_setup.objective.loss(state['params'], state['extra'], frozen, batch, rng, jnp.int32(step))


def _hardest_negatives(sims, disc):
    """numpy: each direction's hardest in-batch negative j1 by the model's sims, and the discriminator's score of it."""
    n = sims.shape[0]
    off = ~np.eye(n, dtype=bool)
    hardest = {
        'i2t': np.argmax(np.where(off, sims, -np.inf), axis=1),
        't2i': np.argmax(np.where(off, sims.T, -np.inf), axis=1),
    }
    scores = {'i2t': disc[np.arange(n), hardest['i2t']], 't2i': disc.T[np.arange(n), hardest['t2i']]}
    return hardest, scores


def _cosmo_setup(high, *overrides):
    """A COSMO run whose discriminator converts hardest negatives scored above `high`."""
    config = _config(
        '--config.loss.regulators=cosmo',
        '--config.loss.cosmo.reference_checkpoint=unused',
        f'--config.loss.cosmo.high={high}',
        f'--config.loss.cosmo.low={high - 0.1}',
        *overrides,
    )
    run_setup = setup_lib.build(config, ONE_DEVICE)
    return run_setup, run_setup.init_state()


def test_dropout_is_active_in_training_and_driven_by_the_step_rng(world):
    host, _, _ = world
    dropped = setup_lib.build(
        _config('--config.model.vision.dropout=0.2', '--config.model.text.dropout=0.2'), ONE_DEVICE
    )
    state = dropped.init_state()
    key_a, key_b = jax.random.key(1), jax.random.key(2)
    loss_a = float(_objective_loss(dropped, state, {}, host, key_a)[0])
    assert loss_a == float(_objective_loss(dropped, state, {}, host, key_a)[0])  # same key, same dropout mask
    assert loss_a != float(_objective_loss(dropped, state, {}, host, key_b)[0])  # another key, another mask
    plain = setup_lib.build(_config(), ONE_DEVICE)
    plain_state = plain.init_state()
    assert float(_objective_loss(plain, plain_state, {}, host, key_a)[0]) == float(
        _objective_loss(plain, plain_state, {}, host, key_b)[0]
    )  # rate 0: the key changes nothing


def test_step_rng_is_folded_by_step():
    run_key = jax.random.key_data(jax.random.key(0))
    keys = [jax.random.key_data(steps.step_rng(run_key, jnp.int32(s))) for s in (0, 1, 0)]
    assert not np.array_equal(keys[0], keys[1]) and np.array_equal(keys[0], keys[2])


def _dropout_step_loss(host):
    """A model with dropout 0.2, and state -> the loss of its jitted train step on `host`."""
    run_setup = setup_lib.build(
        _config('--config.model.vision.dropout=0.2', '--config.model.text.dropout=0.2'), ONE_DEVICE
    )
    train_step = run_setup.train_step()
    batch = parallel.global_batch(batch_spec.select(host, batch_spec.REQUIRED_KEYS), run_setup.mesh)
    return run_setup, lambda state: float(steps.scalar_metrics(train_step(state, batch)[1])['train/loss'])


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_two_steps_at_the_same_params_with_different_rngs_differ(world):
    """Through the jitted step: the state's rng (not the params) changes the dropout masks."""
    host, _, _ = world
    run_setup, step_loss = _dropout_step_loss(host)
    losses = []
    for seed in (0, 0, 7):
        state = run_setup.init_state()  # same params every time (params come from config.seed)
        state['rng'] = jax.random.key_data(jax.random.key(seed))
        losses.append(step_loss(state))
    assert losses[0] == losses[1] and losses[0] != losses[2], losses


def test_the_jitted_step_folds_the_step_number_into_its_rng(world):
    """Same params, same run key, steps 0 and 1: different dropout masks, so different losses."""
    host, _, _ = world
    run_setup, step_loss = _dropout_step_loss(host)
    losses = {}
    for step in (0, 1, 1):
        state = run_setup.init_state()
        state['step'] = jnp.int32(step)
        losses.setdefault(step, []).append(step_loss(state))
    assert losses[1][0] == losses[1][1] and losses[0][0] != losses[1][0], losses


def test_cosmo_with_a_real_discriminator_matches_hand_computed_precision_and_recall(world):
    """A frozen model of another seed scores the hardest negatives; thresholds at its score quantiles
    convert some and keep others. Precision/recall against the ground truth, by numpy."""
    host, frozen_params, probe = world
    base = setup_lib.build(_config(), ONE_DEVICE)
    v, t = _embeddings(base, base.init_state()['params'], host)
    v_ref, t_ref = _embeddings(base, frozen_params, host)
    hardest, scores = _hardest_negatives(v @ t.T, v_ref @ t_ref.T)
    high = float(np.quantile(np.concatenate(list(scores.values())), 0.6))
    n = len(host['index'])
    off = ~np.eye(n, dtype=bool)
    truth = captions_true_of_scenes(host['caption_spec'], host['scene'])  # [caption, image]
    fn = {'i2t': truth.T & off, 't2i': truth & off}
    converted = {d: scores[d] > high for d in scores}
    true_pos = sum(int(np.sum(converted[d] & fn[d][np.arange(n), hardest[d]])) for d in scores)
    num_converted = sum(int(np.sum(converted[d])) for d in scores)
    hardest_fn = sum(int(np.sum(fn[d][np.arange(n), hardest[d]])) for d in scores)
    assert 0 < num_converted < 2 * n and hardest_fn > 0, (num_converted, hardest_fn)

    run_setup, state = _cosmo_setup(high)
    batch = parallel.global_batch(host, run_setup.mesh)
    _, metrics, _ = run_setup.train_step(probe=probe)(state, batch, {DISCRIMINATOR: frozen_params})
    metrics = steps.scalar_metrics(metrics)
    assert metrics['train/cosmo/num_converted'] == num_converted
    assert metrics['train/cosmo/num_true_positive'] == true_pos
    assert metrics['train/cosmo/num_hardest_false_negative'] == hardest_fn
    assert metrics['train/cosmo/precision'] == pytest.approx(true_pos / num_converted, abs=1e-6)
    assert metrics['train/cosmo/recall'] == pytest.approx(true_pos / hardest_fn, abs=1e-6)
    assert metrics['train/cosmo/converted_fraction'] == pytest.approx(num_converted / (2 * n), abs=1e-6)


def test_sigmoid_with_cosmo_conversions_matches_numpy(world):
    """Sigmoid loss end to end through the objective: converted pairs become +1 labels."""
    host, frozen_params, _ = world
    base = setup_lib.build(_config(), ONE_DEVICE)
    params = base.init_state()['params']
    v, t = _embeddings(base, params, host)
    v_ref, t_ref = _embeddings(base, frozen_params, host)
    sims = v.astype(np.float64) @ t.T
    hardest, scores = _hardest_negatives(sims, v_ref @ t_ref.T)
    high = float(np.quantile(np.concatenate(list(scores.values())), 0.5))  # converts about half of them
    scale = 1.0 / np.clip(np.exp(float(params['log_temperature'])), 0.001, 0.5)
    bias = float(params['sigmoid_bias'])
    n = sims.shape[0]

    def direction(s, name):
        labels = np.where(np.eye(n, dtype=bool), 1.0, -1.0)
        convert = scores[name] > high
        labels[np.arange(n)[convert], hardest[name][convert]] = 1.0
        return -np.sum(np.log(1.0 / (1.0 + np.exp(-labels * (scale * s + bias))))) / n, int(convert.sum())

    (l_i2t, c_i2t), (l_t2i, c_t2i) = direction(sims, 'i2t'), direction(sims.T, 't2i')
    assert 0 < c_i2t + c_t2i < 2 * n

    run_setup, state = _cosmo_setup(high, '--config.loss.form=sigmoid', '--config.loss.cosmo.eps=0.0')
    loss, _, outputs = _objective_loss(run_setup, state, {DISCRIMINATOR: frozen_params}, host, jax.random.key(0))
    assert int(np.sum(outputs[REGULATION]['cosmo']['i2t']['converted'])) == c_i2t
    assert int(np.sum(outputs[REGULATION]['cosmo']['t2i']['converted'])) == c_t2i
    np.testing.assert_allclose(float(loss), 0.5 * (l_i2t + l_t2i), rtol=2e-5)


def test_smoothing_starts_at_the_first_step_of_epoch_one_by_default():
    config = _config('--config.loss.regulators=smoothing')
    steps_per_epoch = config.data.shapes.train_size // config.batch_size
    chain = _chain(config)
    (smoothing,) = chain.regulators
    assert smoothing.start == steps_per_epoch and smoothing.settings.eps == 0.5
    sims = jnp.zeros((4, 4))
    before = chain.dense(sims, {}, jnp.int32(steps_per_epoch - 1))[0][0].y
    after = chain.dense(sims, {}, jnp.int32(steps_per_epoch))[0][0].y
    np.testing.assert_array_equal(before, np.eye(4))
    np.testing.assert_allclose(after, 0.5 * np.eye(4) + 0.5 / 4)
    cosmo = _config('--config.loss.regulators=cosmo', '--config.loss.cosmo.reference_checkpoint=unused')
    assert _chain(cosmo).regulators[0].smoothing_start == steps_per_epoch
    explicit = _config(
        '--config.loss.regulators=cosmo',
        '--config.loss.cosmo.reference_checkpoint=unused',
        '--config.loss.cosmo.smoothing_start_step=3',
    )
    assert _chain(explicit).regulators[0].smoothing_start == 3


def test_feedback_comes_back_only_when_asked(world):
    host, _, _ = world
    run_setup = setup_lib.build(_config(), ONE_DEVICE)
    batch = parallel.global_batch(batch_spec.select(host, batch_spec.REQUIRED_KEYS), run_setup.mesh)
    _, _, none = run_setup.train_step()(run_setup.init_state(), batch)
    _, _, feedback = run_setup.train_step(keep_feedback=True)(run_setup.init_state(), batch)
    assert none is None
    np.testing.assert_array_equal(np.asarray(feedback['index']), host['index'])
    assert feedback['image_embed'].shape == (host['index'].shape[0], run_setup.config.model.embed_dim)
