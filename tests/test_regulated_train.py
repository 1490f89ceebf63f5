"""End-to-end runs with regulators: a tiny reference model, SRCL + COSMO on 1 and 8 devices, one-line errors."""

import math
import os

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, read_metrics, run_cli

CONFIGS = os.path.join(REPO, 'configs')
STEPS = 10
# Convert every hardest negative (a barely trained reference's cosines are small) and drop
# weights under 0.3, so the discrete paths run on both device counts.
CONVERT_ALL = ('--config.loss.cosmo.high=-1.0', '--config.loss.cosmo.low=-1.0', '--config.loss.srcl.w_min=0.3')
DIAGNOSTICS = (
    'train/false_negative_fraction',
    'train/srcl/alpha',
    'train/srcl/weight_false_negative',
    'train/srcl/weight_true_negative',
    'train/cosmo/precision',
    'train/cosmo/recall',
    'train/cosmo/converted_fraction',
)


def _args(config, arg, workdir, extra=()):
    """`arg`: the config file's ARG ('steps=10', 'reference=PATH'); '' for none."""
    path = os.path.join(CONFIGS, config)
    return [
        '--config',
        f'{path}:{arg}' if arg else path,
        '--workdir',
        str(workdir),
        *FAST_OVERRIDES,
        f'--config.total_steps={STEPS}',
        *extra,
    ]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """A 10-step InfoNCE run on the clean regime, with the fast test architecture."""
    workdir = tmp_path_factory.mktemp('reference')
    run_cli('vlp_jax.train', _args('shapes_reference.py', f'steps={STEPS}', workdir))
    return workdir


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


@pytest.mark.slow  # CI budget: ~30-60 s of 2-core CPU; run with -m slow
def test_srcl_cosmo_one_and_eight_devices_agree_and_resume(reference, tmp_path):
    eight, one = tmp_path / 'eight', tmp_path / 'one'
    run_cli('vlp_jax.train', _args('shapes_srcl_cosmo.py', f'reference={reference}', eight, CONVERT_ALL), devices=8)
    first = run_cli(
        'vlp_jax.train',
        _args('shapes_srcl_cosmo.py', f'reference={reference}', one, (*CONVERT_ALL, '--stop_at_step=5')),
    )
    assert 'stopped at step 5' in first.stdout
    second = run_cli('vlp_jax.train', _args('shapes_srcl_cosmo.py', f'reference={reference}', one, CONVERT_ALL))
    assert 'resumed from checkpoint at step 5' in second.stdout  # the reference is re-loaded from its path
    records_eight, records_one = read_metrics(eight), read_metrics(one)
    assert [r['step'] for r in records_one] == [5, 10] == [r['step'] for r in records_eight]
    np.testing.assert_allclose(
        [r['train/loss'] for r in records_eight], [r['train/loss'] for r in records_one], rtol=1e-3
    )
    for record in records_one:
        assert math.isfinite(record['train/loss'])
        for key in DIAGNOSTICS:
            assert key in record and math.isfinite(record[key]), key
        assert record['train/cosmo/converted_fraction'] == 1.0
        assert 0 < record['train/false_negative_fraction'] < 1  # coarse captions: false negatives in every batch
    for a, b in zip(records_one, records_eight):
        for key in DIAGNOSTICS:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-3, err_msg=key)
    assert records_one[0]['train/srcl/alpha'] == pytest.approx(1.0 - 4 / STEPS)  # step 4's alpha, logged at 5


def test_missing_reference_is_one_line(tmp_path):
    missing = tmp_path / 'no_such_reference'
    result = run_cli(
        'vlp_jax.train', _args('shapes_srcl.py', f'reference={missing}', tmp_path / 'run'), check=False, timeout=120
    )
    line = _one_line_error(result)
    assert str(missing) in line and 'loss.srcl.reference_checkpoint' in line, line
    assert not (tmp_path / 'run').exists()


def test_reference_that_cannot_read_the_batches_is_one_line(reference, tmp_path):
    """A frozen model keeps its own architecture (tests/test_mafa.py), but it must read this run's inputs."""
    result = run_cli(
        'vlp_jax.train',
        _args(
            'shapes_cosmo.py',
            f'reference={reference}',
            tmp_path / 'run',
            ('--config.model.image_size=32',),
        ),
        check=False,
        timeout=120,
    )
    line = _one_line_error(result)
    assert str(reference) in line and 'image size 64' in line and 'loss.cosmo.reference_checkpoint' in line, line
    assert not (tmp_path / 'run').exists()


def test_srcl_without_reference_is_a_config_error(tmp_path):
    result = run_cli(
        'vlp_jax.train',
        _args('shapes_srcl.py', '', tmp_path / 'run', ('--config.loss.srcl.reference_checkpoint=',)),
        check=False,
        timeout=60,
    )
    assert 'loss.srcl.reference_checkpoint' in _one_line_error(result)
    assert not (tmp_path / 'run').exists()


@pytest.fixture(scope='module')
def noisy_infonce(tmp_path_factory):
    """Plain InfoNCE on the noisy regime: the same data, seed and steps as the regulated runs below."""
    workdir = tmp_path_factory.mktemp('noisy_infonce')
    run_cli('vlp_jax.train', _args('shapes_noisy.py', f'steps={STEPS}', workdir))
    return read_metrics(workdir)


@pytest.mark.slow  # CI: the combined SRCL+COSMO 1-vs-8 run above, and tests/test_chunked_loss.py per regulator
@pytest.mark.parametrize(
    'regulators, extra',
    [
        ('smoothing', ('--config.loss.smoothing.start_step=0',)),
        ('srcl', ('--config.loss.srcl.tau_w=0.1',)),
        ('cosmo', ('--config.loss.cosmo.high=-1.0', '--config.loss.cosmo.low=-1.0')),
    ],
)
def test_each_regulator_one_and_eight_devices_agree(reference, noisy_infonce, tmp_path, regulators, extra):
    paths = (
        f'--config.loss.srcl.reference_checkpoint={reference}',
        f'--config.loss.cosmo.reference_checkpoint={reference}',
    )
    args = lambda workdir: _args(
        'shapes_noisy.py', f'steps={STEPS}', workdir, (f'--config.loss.regulators={regulators}', *paths, *extra)
    )
    run_cli('vlp_jax.train', args(tmp_path / 'eight'), devices=8)
    run_cli('vlp_jax.train', args(tmp_path / 'one'), devices=1)
    eight, one = read_metrics(tmp_path / 'eight'), read_metrics(tmp_path / 'one')
    np.testing.assert_allclose([r['train/loss'] for r in eight], [r['train/loss'] for r in one], rtol=1e-3)
    # The regulator changes the loss: same data, seed and steps as plain InfoNCE, different loss.
    assert len(one) == 2 and [r['step'] for r in one] == [r['step'] for r in noisy_infonce]
    assert abs(one[0]['train/loss'] - noisy_infonce[0]['train/loss']) > 1e-3
