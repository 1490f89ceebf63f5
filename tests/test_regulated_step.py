"""Regulators wired into the step: config validation, config -> regulators in order, the jitted step in-process."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIG, make_config, train_batches

from vlp_jax.checks import regulator_context, validate
from vlp_jax.config import ConfigError
from vlp_jax.config_files import load_config_file
from vlp_jax.objectives.frozen import shared_roles
from vlp_jax.objectives.regulators import (
    DISCRIMINATOR,
    REFERENCE,
    RegulatorChain,
    cosmo_regulation,
    srcl_alpha,
    srcl_regulation,
)

REF = 'workdirs/some_reference'


def _config(*overrides):
    return make_config(*overrides)


def _chain(config):
    """The checked config's regulator chain, as setup.build makes it."""
    return RegulatorChain.from_config(config, regulator_context(config, validate(config, 1)))


def frozen_roles(config):
    """The frozen roles the config's regulators read."""
    return _chain(config).frozen_roles()


@pytest.mark.parametrize(
    'overrides, message',
    [
        (['--config.loss.regulators=srcl,nope'], "names 'nope', which is no registered regulator"),
        (
            [
                '--config.loss.regulators=cosmo,srcl',
                f'--config.loss.srcl.reference_checkpoint={REF}',
                f'--config.loss.cosmo.reference_checkpoint={REF}',
            ],
            'must be in the order',
        ),
        (
            ['--config.loss.regulators=cosmo,smoothing', f'--config.loss.cosmo.reference_checkpoint={REF}'],
            "both 'cosmo' and 'smoothing'",
        ),
        (['--config.loss.regulators=srcl'], 'loss.srcl.reference_checkpoint is empty'),
        (
            ['--config.loss.regulators=srcl', '--config.loss.srcl.alpha_start=0.0', '--config.loss.srcl.alpha_end=0.5'],
            'loss.srcl.reference_checkpoint',
        ),
        (['--config.loss.regulators=cosmo'], 'loss.cosmo.reference_checkpoint is empty'),
        (
            [
                '--config.loss.regulators=cosmo',
                f'--config.loss.cosmo.reference_checkpoint={REF}',
                '--config.loss.cosmo.discriminator=itm',
                '--config.loss.cosmo.low=-0.5',
            ],
            'ITM match probabilities',
        ),
        (
            [
                '--config.loss.regulators=cosmo',
                f'--config.loss.cosmo.reference_checkpoint={REF}',
                '--config.objective=albef',
                '--config.model.kind=fusion',
                '--config.model.text.fusion_layers=1',
                '--config.loss.itm.negatives=sample',
            ],
            "loss.itm.negatives must be 'hardest'",
        ),
        (
            [
                '--config.loss.regulators=cosmo',
                f'--config.loss.cosmo.reference_checkpoint={REF}',
                '--config.loss.cosmo.low=0.9',
            ],
            'low <= high',
        ),
        (
            [
                '--config.loss.regulators=cosmo',
                f'--config.loss.cosmo.reference_checkpoint={REF}',
                '--config.loss.form=sigmoid',
            ],
            'loss.cosmo.eps must be 0',
        ),
        (['--config.loss.regulators=smoothing', '--config.loss.form=sigmoid'], "'smoothing'"),
        (
            [
                '--config.loss.regulators=srcl',
                f'--config.loss.srcl.reference_checkpoint={REF}',
                '--config.loss.srcl.alpha_shape=step',
            ],
            'loss.srcl.alpha_shape',
        ),
        (
            [
                '--config.loss.regulators=srcl',
                f'--config.loss.srcl.reference_checkpoint={REF}',
                '--config.loss.srcl.tau_w=0.0',
            ],
            'loss.srcl.tau_w',
        ),
    ],
)
def test_bad_regulator_configs_name_the_key(overrides, message):
    config = _config(*overrides)
    with pytest.raises(ConfigError, match=message) as error:
        validate(config, 1)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('text', ['srcl,cosmo', '(srcl,cosmo)', "('srcl', 'cosmo')", '[srcl, cosmo]'])
def test_regulator_list_overrides(text):
    config = _config(
        f'--config.loss.regulators={text}',
        f'--config.loss.srcl.reference_checkpoint={REF}',
        f'--config.loss.cosmo.reference_checkpoint={REF}/',
    )
    assert tuple(config.loss.regulators) == ('srcl', 'cosmo')
    validate(config, 1)
    roles = frozen_roles(config)
    assert [role.role for role in roles] == [REFERENCE, DISCRIMINATOR]
    assert shared_roles(roles) == {REFERENCE: REFERENCE, DISCRIMINATOR: REFERENCE}  # one frozen model for both


def test_srcl_with_zero_alpha_needs_no_reference():
    config = _config(
        '--config.loss.regulators=srcl', '--config.loss.srcl.alpha_start=0.0', '--config.loss.srcl.alpha_end=0.0'
    )
    validate(config, 1)
    assert frozen_roles(config) == ()


def test_default_config_has_no_regulators():
    config = load_config_file(TINY_CONFIG)
    sims = jnp.eye(4)
    chain = _chain(config)
    (i2t, t2i), aux = chain.dense(sims, {}, jnp.int32(0))
    assert not chain.active
    assert i2t.log_w is None and i2t.y is None and t2i.log_w is None and t2i.y is None and aux == {}


def test_apply_regulators_composes_in_order():
    config = _config(
        '--config.loss.regulators=srcl,cosmo',
        f'--config.loss.srcl.reference_checkpoint={REF}',
        '--config.loss.cosmo.reference_checkpoint=other',
        '--config.loss.cosmo.high=0.1',
        '--config.loss.cosmo.low=0.0',
        '--config.loss.cosmo.smoothing_start_step=5',
        '--config.total_steps=20',
        '--config.loss.srcl.alpha_shape=cosine',
    )
    validate(config, 1)
    assert [(role.role, role.path) for role in frozen_roles(config)] == [(REFERENCE, REF), (DISCRIMINATOR, 'other')]
    rng = np.random.default_rng(0)
    cur, ref, disc = (jnp.asarray(rng.uniform(-1, 1, (6, 6)), jnp.float32) for _ in range(3))
    chain = _chain(config)
    for step in (3, 7):
        (i2t, t2i), aux = chain.dense(cur, {REFERENCE: ref, DISCRIMINATOR: disc}, jnp.int32(step))
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
    from conftest import train_source

    from vlp_jax import setup as setup_lib
    from vlp_jax.data import batch as batch_spec

    config = _config('--config.data.shapes.detail=coarse')
    reference_config = config.copy_and_resolve_references()
    reference_config.seed = 1
    reference = setup_lib.build(reference_config, jax.devices()[:1]).init_state()['params']
    source = train_source(config)
    batch = train_batches(config, probe_keys=batch_spec.GROUND_TRUTH_KEYS, source=source)[0]
    return config, source.ground_truth_probe(), reference, batch


@pytest.mark.parametrize('regulators', [('srcl',), ('cosmo',), ('smoothing',)])
def test_step_runs_each_regulator_and_logs_diagnostics(step_setup, regulators):
    from vlp_jax import parallel, steps
    from vlp_jax import setup as setup_lib
    from vlp_jax.data.synthetic import captions_true_of_scenes

    base, probe, reference, host_batch = step_setup
    config = base.copy_and_resolve_references()
    config.loss.regulators = regulators
    config.loss.srcl.reference_checkpoint = config.loss.cosmo.reference_checkpoint = REF
    config.loss.cosmo.high, config.loss.cosmo.low = -1.0, -1.0  # convert every hardest negative
    validate(config, 1)
    run_setup = setup_lib.build(config, jax.devices()[:1])
    train_step = run_setup.train_step(probe=probe)
    state = run_setup.init_state()
    frozen = {role: reference for role in run_setup.objective.frozen_roles}
    batch = parallel.global_batch(host_batch, run_setup.mesh)
    for _ in range(2):
        state, metrics, _ = train_step(state, batch, frozen)
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
        # Everything converted: every truly-false hardest negative is among the conversions.
        # (Precision against hand-computed values: test_objective_step.py, real discriminator.)
        assert metrics['train/cosmo/num_converted'] == 2 * n
        assert metrics['train/cosmo/num_true_positive'] == metrics['train/cosmo/num_hardest_false_negative']
        assert metrics['train/cosmo/recall'] == 1.0
    if regulators == ('smoothing',):
        assert not any(key.startswith(('train/srcl/', 'train/cosmo/')) for key in metrics)


def test_a_workdir_and_its_step_folder_are_one_frozen_model(tmp_path):
    """Roles share a loaded model and its forward pass when their paths name the same checkpoint."""
    from vlp_jax.objectives.frozen import COSINE, FrozenRole, shared_models

    (tmp_path / 'run' / 'checkpoints' / '10' / 'state').mkdir(parents=True)
    workdir, step_dir = str(tmp_path / 'run'), str(tmp_path / 'run' / 'checkpoints' / '10')
    roles = (
        FrozenRole(REFERENCE, 'loss.srcl.reference_checkpoint', workdir, COSINE),
        FrozenRole(DISCRIMINATOR, 'loss.cosmo.reference_checkpoint', step_dir, COSINE),
    )
    assert shared_models(roles) == shared_roles(roles) == {REFERENCE: REFERENCE, DISCRIMINATOR: REFERENCE}
    # The same model asked another question shares the params but not the answer.
    itm = (roles[0], FrozenRole(DISCRIMINATOR, 'loss.cosmo.reference_checkpoint', step_dir, 'itm'))
    assert shared_models(itm)[DISCRIMINATOR] == REFERENCE and shared_roles(itm)[DISCRIMINATOR] == DISCRIMINATOR
    other = (roles[0], FrozenRole(DISCRIMINATOR, 'loss.cosmo.reference_checkpoint', str(tmp_path / 'b'), COSINE))
    assert shared_models(other) == {REFERENCE: REFERENCE, DISCRIMINATOR: DISCRIMINATOR}
