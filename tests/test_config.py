"""Config overrides: good ones apply, bad ones exit fast with one line and an untouched workdir."""

import os
import time

import pytest
from conftest import TINY_CONFIG, run_cli

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, apply_overrides, split_overrides
from vlp_jax.config_files import load_config_file


def test_overrides_apply_with_types():
    config = load_config_file(TINY_CONFIG)
    rest, overrides = split_overrides(
        [
            'prog',
            '--workdir=x',
            '--config.optim.lr=3e-4',
            '--config.model.vision.depth',
            '4',
            '--config.data.crop_scale=(0.5,1.0)',
            '--config.loss.form=sigmoid',
        ]
    )
    assert rest == ['prog', '--workdir=x']
    apply_overrides(config, overrides)
    assert config.optim.lr == 3e-4 and config.model.vision.depth == 4
    assert tuple(config.data.crop_scale) == (0.5, 1.0) and config.loss.form == 'sigmoid'
    validate(config, 1)


def test_config_arg_sets_steps():
    assert load_config_file(TINY_CONFIG + ':37').total_steps == 37


@pytest.mark.parametrize(
    'override, message',
    [
        ('--config.nonexistent=1', "'nonexistent'"),
        ('--config.model.vision.nope=1', "'model.vision.nope'"),
        ('--config.batch_size=abc', "'batch_size'"),
        ('--config.batch_size=2.5', "'batch_size'"),
    ],
)
def test_bad_override_names_key(override, message):
    config = load_config_file(TINY_CONFIG)
    with pytest.raises(ConfigError, match=message):
        apply_overrides(config, split_overrides([override])[1])


@pytest.mark.parametrize(
    'key, value, devices',
    [
        ('batch_size', -3, 1),
        ('total_steps', 0, 1),
        ('data.caption_noise', 1.5, 1),
        ('batch_size', 12, 8),
        ('model.vision.variant', 'XL', 1),
        ('model.vision.dropout', -0.1, 1),
        ('model.vision.num_heads', 5, 1),
    ],
)
def test_impossible_values_are_rejected(key, value, devices):
    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, [(key, str(value))])
    with pytest.raises(ConfigError, match=key.split('.')[-1]):
        validate(config, devices)


@pytest.mark.parametrize(
    'override, key, devices',
    [
        ('--config.batch_size=-3', 'batch_size', 1),
        ('--config.nonexistent=1', 'nonexistent', 1),
        ('--config.batch_size=100', 'batch_size', 8),  # not divisible by 8 devices
        ('--config.model.vision.variant=XL', 'model.vision.variant', 1),  # was a traceback after validation
        ('--config.model.text.variant=huge', 'model.text.variant', 1),
        ('--config.model.text.dropout=1.5', 'model.text.dropout', 1),
        ('--config.mesh.local_shards=5', 'mesh.local_shards', 1),
    ],
)
def test_cli_exits_fast_with_one_line(tmp_path, override, key, devices):
    workdir = tmp_path / 'run'
    start = time.monotonic()
    result = run_cli(
        'vlp_jax.train',
        ['--config', TINY_CONFIG, '--workdir', str(workdir), override],
        devices=devices,
        check=False,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and key in lines[0], lines
    assert not workdir.exists()
    print(f'{override}: exited in {elapsed:.1f}s')  # the bound is 10 s; shown, not asserted


def test_missing_config_file_is_one_line(tmp_path):
    result = run_cli(
        'vlp_jax.train', ['--config', 'configs/nope.py', '--workdir', str(tmp_path / 'w')], check=False, timeout=60
    )
    assert result.returncode == 2 and 'nope.py' in result.stderr and not os.path.exists(tmp_path / 'w')


def test_local_negatives_with_regulators_is_refused():
    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, [('loss.negatives', 'local'), ('loss.regulators', 'smoothing')])
    with pytest.raises(ConfigError, match='loss.negatives'):
        validate(config, 1)
    apply_overrides(config, [('loss.regulators', '()')])
    validate(config, 1)
