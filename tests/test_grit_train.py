"""GRIT in the training loop: config errors, the grouped order takes over, exact resume, 1 vs 8 devices."""
import numpy as np
import pytest

from conftest import FAST_OVERRIDES, TINY_CONFIG, read_metrics, run_cli
from vlp_jax.config import ConfigError, apply_overrides, load_config_file, validate

STEPS = 30  # 3 epochs of 10 steps
GRIT = ('--config.sampling.name=grit', '--config.data.train_size=320', '--config.sampling.queue_size=192',
        '--config.sampling.search_space=64', '--config.checkpoint_every=5')


def _args(workdir, extra=()):
    return ['--config', f'{TINY_CONFIG}:{STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES, *GRIT, *extra]


@pytest.mark.parametrize('queue, space, message', [
    (200, 64, 'queue_size'),   # not a multiple of the search space
    (192, 48, 'search_space'),  # not a multiple of the batch (32)
])
def test_bad_grit_sizes_are_config_errors(queue, space, message):
    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, [('batch_size', '32'), ('sampling.name', 'grit'), ('sampling.queue_size', str(queue)),
                             ('sampling.search_space', str(space))])
    with pytest.raises(ConfigError, match=message):
        validate(config, 1)


@pytest.fixture(scope='module')
def grit_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('grit')
    run_cli('vlp_jax.train', _args(workdir))
    return workdir


def test_grit_replaces_the_order_after_epoch_zero(grit_run, tmp_path):
    random_dir = tmp_path / 'random'
    run_cli('vlp_jax.train', _args(random_dir, ('--config.sampling.name=random',)))
    grit, random = read_metrics(grit_run), read_metrics(random_dir)
    assert 'train/hardest_negative_similarity' in grit[0]
    # Epoch 0 (steps 1-10) is the same seeded permutation in both runs; from epoch 1 on,
    # GRIT's grouped order feeds different batches.
    assert [r['train/loss'] for r in grit if r['step'] <= 10] == [r['train/loss'] for r in random if r['step'] <= 10]
    assert all(g['train/loss'] != r['train/loss'] for g, r in zip(grit, random) if g['step'] > 10)


def test_grit_resume_mid_epoch_after_a_queue_fill(grit_run, tmp_path):
    workdir = tmp_path / 'resumed'
    run_cli('vlp_jax.train', _args(workdir, ('--stop_at_step=17',)))  # epoch 1, after its first queue fill (step 16)
    second = run_cli('vlp_jax.train', _args(workdir))
    assert 'resumed from checkpoint at step 17' in second.stdout
    straight, resumed = read_metrics(grit_run), read_metrics(workdir)
    assert [r['step'] for r in straight] == [r['step'] for r in resumed]
    timing = ('train/examples_per_sec', 'train/steps_per_sec', 'train/data_wait_fraction')
    for a, b in zip(straight, resumed):
        for key in a:
            if key not in timing:
                np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=f'step {a["step"]} {key}')


def test_grit_one_and_eight_devices_agree(grit_run, tmp_path):
    eight = tmp_path / 'eight'
    run_cli('vlp_jax.train', _args(eight), devices=8)
    np.testing.assert_allclose([r['train/loss'] for r in read_metrics(eight)],
                               [r['train/loss'] for r in read_metrics(grit_run)], rtol=1e-3)
