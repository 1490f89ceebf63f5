"""Config overrides: good ones apply, bad ones exit fast with one line and an untouched workdir; --help and
--config_help; the one :ARG syntax; every key declared once in the schema; the workdir's config.json as the run's
truth (evaluate and resume need no --config, a fixed key cannot change on resume, a resumable one is recorded)."""

import json
import os
import shutil
import time

import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli

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
    assert load_config_file(TINY_CONFIG + ':steps=37').total_steps == 37


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
        ('data.shapes.caption_noise', 1.5, 1),
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


# ---------------------------------------------------------------- --help and --config_help


@pytest.mark.parametrize('module', ['vlp_jax.train', 'vlp_jax.evaluate'])
def test_help_exits_zero_and_lists_the_flags(module):
    result = run_cli(module, ['--help'], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ('--workdir', '--config', '--config_help', '--config.KEY=VALUE'):
        assert f'  {flag}' in result.stdout, (flag, result.stdout)
    if module == 'vlp_jax.evaluate':
        assert '  --checkpoint' in result.stdout


def _key_lines(text):
    """The key paths of --config_help's output (its key lines are indented, group headers are not)."""
    return [line.split()[0] for line in text.splitlines() if line.startswith('  ')]


def test_config_help_lists_every_group_and_key():
    from vlp_jax.config import GROUPS, all_keys

    result = run_cli('vlp_jax.train', ['--config_help'], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith('  optim.lr ') for line in result.stdout.splitlines())
    assert any(line.startswith('  loss.srcl.tau_w ') for line in result.stdout.splitlines())
    # The groups the package declares (a test module that registered plug-ins in this process adds its own).
    builtin = {path for path, cls in GROUPS.items() if cls.__module__.startswith('vlp_jax.')}
    for path in builtin:
        assert f'[{path or "top level"}]' in result.stdout, path
    keys = sorted(item.path for item in all_keys() if item.path.rpartition('.')[0] in builtin)
    assert sorted(_key_lines(result.stdout)) == keys


def test_config_help_of_one_group_lists_only_its_keys():
    result = run_cli('vlp_jax.train', ['--config_help=optim'], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    keys = _key_lines(result.stdout)
    assert 'optim.lr' in keys and all(key.startswith('optim.') for key in keys), keys


def test_config_help_of_an_unknown_group_is_one_line():
    result = run_cli('vlp_jax.train', ['--config_help=nope'], check=False, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "'nope'" in lines[0], result.stderr
    assert result.stdout == ''


# ---------------------------------------------------------------- the one :ARG syntax


@pytest.mark.parametrize('arg, fragment', [('abc', "'abc'"), ('steps=x', 'steps'), ('nope=1', "'nope=1'")])
def test_a_bad_config_argument_is_one_config_error(arg, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        load_config_file(f'{TINY_CONFIG}:{arg}')
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('arg', ['abc', 'steps=x', 'nope=1'])
def test_a_bad_config_argument_on_the_command_line_exits_2_in_one_line(tmp_path, arg):
    workdir = tmp_path / 'run'
    result = run_cli(
        'vlp_jax.train', ['--config', f'{TINY_CONFIG}:{arg}', '--workdir', str(workdir)], check=False, timeout=60
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and 'config argument' in lines[0], result.stderr
    assert not workdir.exists()


# ---------------------------------------------------------------- every key declared once


def _leaves(config, prefix=''):
    """{dotted path: value} of every key of a ConfigDict."""
    import ml_collections

    out = {}
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_leaves(value, f'{prefix}{name}.'))
        else:
            out[f'{prefix}{name}'] = value
    return out


def test_every_key_is_declared_once_with_help():
    from vlp_jax.config import all_keys, default_config, spec

    leaves = _leaves(default_config())
    declared = [item.path for item in all_keys()]
    assert len(declared) == len(set(declared)), 'a key path is declared twice'
    assert sorted(declared) == sorted(leaves)
    for path in leaves:
        item = spec(path)
        assert item is not None and item.path == path, path
        assert item.help.strip(), f'{path} has no help'


def test_the_dataclass_defaults_are_the_default_config():
    import dataclasses

    from vlp_jax.config import GROUPS, default_config, settings_of, value_at

    config = default_config()
    for path, cls in GROUPS.items():
        defaults = cls()  # every field has its default
        assert settings_of(config, cls) == defaults, path
        for field in dataclasses.fields(cls):
            dotted = f'{path}.{field.name}' if path else field.name
            assert value_at(config, dotted) == getattr(defaults, field.name), dotted


@pytest.mark.parametrize('spec', ['shapes_tiny.py:steps=37', 'shapes_grit.py', 'albef.py:tiny'])
def test_validate_never_writes_into_the_config(spec):
    """Derived values (the training set's size, the mesh) come back in Derived; the config stays as given."""
    config = load_config_file(os.path.join(os.path.dirname(TINY_CONFIG), spec))
    before, locked = config.to_dict(), config.is_locked
    derived = validate(config, 1)
    assert config.to_dict() == before and config.is_locked == locked
    assert derived.train_size > 0 and derived.steps_per_epoch == derived.train_size // config.batch_size


# ---------------------------------------------------------------- the workdir's config.json is the run's truth

TRUTH_STEPS = 3
FINE = '--config.data.shapes.detail=fine'  # a non-default key: evaluate and resume must read it from config.json


def _truth_args(workdir, *extra):
    return ['--config', f'{TINY_CONFIG}:steps={TRUTH_STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES, FINE, *extra]


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def _eval_part(metrics):
    return {key: value for key, value in metrics.items() if key.startswith('eval/')}


def _listing(workdir):
    """Every path under the workdir with its size and modification time: what a refused run must not change."""
    return sorted((str(p.relative_to(workdir)), p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob('*'))


@pytest.fixture(scope='module')
def truth_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('truth') / 'run'
    result = run_cli('vlp_jax.train', _truth_args(workdir))
    final = _last_json(result.stdout)
    assert final['step'] == TRUTH_STEPS and _eval_part(final), result.stdout
    return workdir, final


def test_evaluate_with_only_the_workdir_reproduces_the_final_eval(truth_run):
    workdir, final = truth_run
    assert json.loads((workdir / 'config.json').read_text())['data']['shapes']['detail'] == 'fine'
    result = run_cli('vlp_jax.evaluate', ['--workdir', str(workdir)])
    printed = _last_json(result.stdout)
    assert printed['step'] == TRUTH_STEPS
    assert _eval_part(printed) == _eval_part(final)  # exactly: same params, same sets, same code


def test_train_with_only_the_workdir_resumes_the_run(truth_run):
    workdir, final = truth_run
    result = run_cli('vlp_jax.train', ['--workdir', str(workdir)])
    assert f'already trained to step {TRUTH_STEPS}' in result.stdout, result.stdout
    assert _eval_part(_last_json(result.stdout)) == _eval_part(final)


def test_a_rerun_that_changes_a_fixed_key_is_refused_and_writes_nothing(truth_run):
    workdir, _ = truth_run
    saved, listing = (workdir / 'config.json').read_bytes(), _listing(workdir)
    result = run_cli('vlp_jax.train', _truth_args(workdir, '--config.optim.lr=5e-4'), check=False, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and 'optim.lr' in lines[0], result.stderr
    assert (workdir / 'config.json').read_bytes() == saved
    assert _listing(workdir) == listing


def test_a_rerun_with_more_steps_continues_and_records_the_change(truth_run, tmp_path):
    source, _ = truth_run
    workdir = tmp_path / 'run'
    shutil.copytree(source, workdir)  # the shared run stays as it was for the other tests
    more = TRUTH_STEPS + 2
    result = run_cli('vlp_jax.train', _truth_args(workdir, f'--config.total_steps={more}'))
    assert f'resumed from checkpoint at step {TRUTH_STEPS}' in result.stdout, result.stdout
    assert _last_json(result.stdout)['step'] == more
    changes = [json.loads(line) for line in (workdir / 'config_changes.jsonl').read_text().splitlines()]
    assert changes == [{'step': TRUTH_STEPS, 'key': 'total_steps', 'old': TRUTH_STEPS, 'new': more}]
    assert json.loads((workdir / 'config.json').read_text())['total_steps'] == more


def test_a_config_json_of_the_older_layout_is_read_with_todays_keys(tmp_path):
    """Workdirs written before the schema moved keys still resume and evaluate as they ran."""
    from vlp_jax.config_files import saved_config

    old = {
        'lr': 5e-4,
        'sampling': {'name': 'grit', 'queue_size': 256, 'search_space': 64, 'scope': 'local'},
        'data': {'name': 'shapes', 'train_size': 1000, 'test_size': 64, 'image_size': 64, 'detail': 'fine'},
        'eval': {'classification_size': 32},
        'model': {'kind': 'fusion', 'text': {'fusion_layers': 1}},
        'loss': {'queue_size': 0},
    }
    (tmp_path / 'config.json').write_text(json.dumps(old))
    config = saved_config(tmp_path)
    assert config.optim.lr == 5e-4 and config.objective == 'albef'
    assert (config.sampling.grit.queue_size, config.sampling.grit.search_space, config.sampling.grit.scope) == (
        256,
        64,
        'local',
    )
    assert (config.data.shapes.train_size, config.data.shapes.test_size, config.data.shapes.detail) == (
        1000,
        64,
        'fine',
    )
    assert config.eval.retrieval_size == 64 and config.data.shapes.classification_size == 32
