"""Regulators wired into the step: config validation, config -> regulators in order, the jitted step in-process."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST_OVERRIDES, TINY_CONFIG
from vlp_jax.config import ConfigError, apply_overrides, load_config_file, split_overrides, validate
from vlp_jax.objectives.apply import apply_regulators, reference_checkpoints
from vlp_jax.objectives.regulators import cosmo_regulation, srcl_alpha, srcl_regulation

REF = 'workdirs/some_reference'


def _config(*overrides):
    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, split_overrides([*FAST_OVERRIDES, *overrides])[1])
    return config


@pytest.mark.parametrize('overrides, message', [
    (['--config.loss.regulators=srcl,nope'], "unknown regulator 'nope'"),
    (['--config.loss.regulators=cosmo,srcl', f'--config.loss.srcl.reference_checkpoint={REF}',
      f'--config.loss.cosmo.reference_checkpoint={REF}'], 'must be in the order'),
    (['--config.loss.regulators=cosmo,smoothing', f'--config.loss.cosmo.reference_checkpoint={REF}'],
     "both 'cosmo' and 'smoothing'"),
    (['--config.loss.regulators=srcl'], 'loss.srcl.reference_checkpoint is empty'),
    (['--config.loss.regulators=srcl', '--config.loss.srcl.alpha_start=0.0', '--config.loss.srcl.alpha_end=0.5'],
     'loss.srcl.reference_checkpoint'),
    (['--config.loss.regulators=cosmo'], 'loss.cosmo.reference_checkpoint is empty'),
    (['--config.loss.regulators=cosmo', f'--config.loss.cosmo.reference_checkpoint={REF}',
      '--config.loss.cosmo.discriminator=itm'], 'arrives with the fusion encoder'),
    (['--config.loss.regulators=cosmo', f'--config.loss.cosmo.reference_checkpoint={REF}',
      '--config.loss.cosmo.low=0.9'], 'low <= high'),
    (['--config.loss.regulators=cosmo', f'--config.loss.cosmo.reference_checkpoint={REF}',
      '--config.loss.form=sigmoid'], 'loss.cosmo.eps must be 0'),
    (['--config.loss.regulators=smoothing', '--config.loss.form=sigmoid'], "'smoothing'"),
    (['--config.loss.regulators=srcl', f'--config.loss.srcl.reference_checkpoint={REF}',
      '--config.loss.srcl.alpha_shape=step'], 'loss.srcl.alpha_shape'),
    (['--config.loss.regulators=srcl', f'--config.loss.srcl.reference_checkpoint={REF}',
      '--config.loss.srcl.tau_w=0.0'], 'loss.srcl.tau_w'),
])
def test_bad_regulator_configs_name_the_key(overrides, message):
    config = _config(*overrides)
    with pytest.raises(ConfigError, match=message) as error:
        validate(config, 1)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('text', ['srcl,cosmo', '(srcl,cosmo)', "('srcl', 'cosmo')", '[srcl, cosmo]'])
def test_regulator_list_overrides(text):
    config = _config(f'--config.loss.regulators={text}', f'--config.loss.srcl.reference_checkpoint={REF}',
                     f'--config.loss.cosmo.reference_checkpoint={REF}/')
    assert tuple(config.loss.regulators) == ('srcl', 'cosmo')
    validate(config, 1)
    assert reference_checkpoints(config) == (REF,)  # one frozen model for both


def test_srcl_with_zero_alpha_needs_no_reference():
    config = _config('--config.loss.regulators=srcl', '--config.loss.srcl.alpha_start=0.0',
                     '--config.loss.srcl.alpha_end=0.0')
    validate(config, 1)
    assert reference_checkpoints(config) == ()


def test_default_config_has_no_regulators():
    config = load_config_file(TINY_CONFIG)
    sims = jnp.eye(4)
    (i2t, t2i), aux = apply_regulators(config, jnp.int32(0), sims, ())
    assert i2t.log_w is None and i2t.y is None and t2i.log_w is None and t2i.y is None and aux == {}


def test_apply_regulators_composes_in_order():
    config = _config('--config.loss.regulators=srcl,cosmo', f'--config.loss.srcl.reference_checkpoint={REF}',
                     '--config.loss.cosmo.reference_checkpoint=other', '--config.loss.cosmo.high=0.1',
                     '--config.loss.cosmo.low=0.0', '--config.loss.cosmo.smoothing_start_step=5',
                     '--config.total_steps=20', '--config.loss.srcl.alpha_shape=cosine')
    validate(config, 1)
    assert reference_checkpoints(config) == (REF, 'other')
    rng = np.random.default_rng(0)
    cur, ref, disc = (jnp.asarray(rng.uniform(-1, 1, (6, 6)), jnp.float32) for _ in range(3))
    for step in (3, 7):
        (i2t, t2i), aux = apply_regulators(config, jnp.int32(step), cur, (ref, disc))
        alpha = srcl_alpha(step, 1.0, 0.0, 0, 20, 'cosine')
        base = srcl_regulation(cur, ref, alpha)
        (want_i2t, want_t2i), _ = cosmo_regulation(cur, disc, 0.1, 0.0, 0.5, step >= 5, base=base)
        for got, want in ((i2t, want_i2t), (t2i, want_t2i)):
            np.testing.assert_allclose(got.log_w, want.log_w, atol=1e-6)
            np.testing.assert_allclose(got.y, want.y, atol=1e-6)
        np.testing.assert_allclose(aux['srcl']['log_w'][0], base[0].log_w, atol=1e-6)
        assert float(aux['srcl']['alpha']) == pytest.approx(float(alpha))
        assert bool(jnp.any(aux['cosmo']['i2t']['converted']))


@pytest.fixture(scope='module')
def step_setup():
    """A fast config, its params (seed 0) and a different model of the same shape as the reference (seed 1)."""
    from vlp_jax import optim, parallel, state as state_lib
    from vlp_jax.data.pipeline import TrainPipeline, normalise_images
    from vlp_jax.data.sources import build_source

    config = _config('--config.data.detail=coarse')
    mesh = parallel.make_mesh({'data': 1, 'fsdp': 1, 'model': 1}, jax.devices()[:1])
    rules = parallel.logical_rules(config.mesh.rules)
    model, optimizer = state_lib.create_model(config), optim.make_optimizer(config)
    _, shardings = state_lib.state_shardings(config, model, optimizer, mesh, rules)
    reference_config = config.copy_and_resolve_references()
    reference_config.seed = 1
    reference = state_lib.init_state(reference_config, model, optimizer, mesh, rules, shardings)['params']
    raw = TrainPipeline(config, build_source(config, 'train')).raw_batch(0)
    batch = {key: raw[key] for key in ('text_ids', 'text_mask', 'index', 'sem', 'caption_spec', 'scene')}
    batch['image'] = normalise_images(raw['image'])
    return config, (model, optimizer, mesh, rules, shardings), reference, batch


@pytest.mark.parametrize('regulators', [('srcl',), ('cosmo',), ('smoothing',)])
def test_step_runs_each_regulator_and_logs_diagnostics(step_setup, regulators):
    from vlp_jax import parallel, state as state_lib, steps
    from vlp_jax.data.synthetic import captions_true_of_scenes

    base, (model, optimizer, mesh, rules, shardings), reference, host_batch = step_setup
    config = base.copy_and_resolve_references()
    config.loss.regulators = regulators
    config.loss.srcl.reference_checkpoint = config.loss.cosmo.reference_checkpoint = REF
    config.loss.cosmo.high, config.loss.cosmo.low = -1.0, -1.0   # convert every hardest negative
    validate(config, 1)
    train_step = steps.make_train_step(config, model, optimizer, mesh, rules, shardings)
    state = state_lib.init_state(config, model, optimizer, mesh, rules, shardings)
    references = (reference,) * len(reference_checkpoints(config))
    batch = parallel.global_batch(host_batch, mesh)
    for _ in range(2):
        state, metrics = train_step(state, batch, references)
    metrics = steps.scalar_metrics(metrics)
    assert math.isfinite(metrics['train/loss'])
    true_of = captions_true_of_scenes(host_batch['caption_spec'], host_batch['scene'])
    n = true_of.shape[0]
    expected = (true_of & ~np.eye(n, dtype=bool)).sum() / (n * (n - 1))
    assert metrics['train/false_negative_fraction'] == pytest.approx(expected, rel=1e-6)
    assert expected > 0.05  # coarse captions: plenty of false negatives
    if 'srcl' in regulators:
        assert metrics['train/srcl/alpha'] == pytest.approx(1.0 - 1 / config.total_steps)  # logged at step 1
        for key in ('train/srcl/weight_false_negative', 'train/srcl/weight_true_negative'):
            assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    if 'cosmo' in regulators:
        assert metrics['train/cosmo/converted_fraction'] == 1.0
        assert metrics['train/cosmo/recall'] == 1.0 and 0.0 <= metrics['train/cosmo/precision'] <= 1.0
    if regulators == ('smoothing',):
        assert not any(key.startswith(('train/srcl/', 'train/cosmo/')) for key in metrics)
