"""End-to-end runs of the CLI: learning, 1 vs 8 devices, stop/SIGKILL + resume, evaluate."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, kill_after_checkpoint, read_metrics, run_cli

from vlp_jax.metrics import SPEED_KEYS

TIMING_KEYS = SPEED_KEYS
STEPS = 30


def _train_args(workdir, steps=STEPS, extra=()):
    return ['--config', f'{TINY_CONFIG}:steps={steps}', '--workdir', str(workdir), *FAST_OVERRIDES, *extra]


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_records(actual, expected, rtol, atol=1e-7):
    assert [r['step'] for r in actual] == [r['step'] for r in expected]
    for a, e in zip(_comparable(actual), _comparable(expected)):
        assert a.keys() == e.keys(), (a.keys(), e.keys())
        for key in e:
            np.testing.assert_allclose(a[key], e[key], rtol=rtol, atol=atol, err_msg=f'step {e["step"]} {key}')


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('straight')
    result = run_cli('vlp_jax.train', _train_args(workdir))
    return workdir, result


def test_straight_run_logs_and_checkpoints(straight_run):
    workdir, result = straight_run
    records = read_metrics(workdir)
    assert [r['step'] for r in records] == [5, 10, 15, 20, 25, 30]
    for key in ('train/loss', 'train/temperature', 'train/lr', 'train/examples_per_sec', 'train/data_wait_fraction'):
        assert key in records[0]
    for key in ('train/mfu', 'train/flops_per_example', 'train/skipped_steps'):
        assert all(key in record for record in records), key
    assert 0 < records[-1]['train/mfu'] < 1 and records[-1]['train/flops_per_example'] > 1e6
    assert 'eval/retrieval/i2t_r1' in records[-1] and 'eval/zeroshot/shape/top1' in records[-1]
    assert records[-1]['train/loss'] < records[0]['train/loss']
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20', '30']
    assert any(name.startswith('events') for name in os.listdir(workdir / 'tensorboard'))
    assert 'step 30/30' in result.stdout
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last['eval/retrieval/t2i_r1'] == records[-1]['eval/retrieval/t2i_r1']


@pytest.mark.slow  # CI: the SIGTERM (bit-exact) and SIGKILL resume tests below cover resuming
def test_stop_and_resume_reproduces_straight_run(straight_run, tmp_path):
    workdir = tmp_path / 'resumed'
    first = run_cli('vlp_jax.train', _train_args(workdir, extra=('--stop_at_step=15',)))
    assert 'stopped at step 15' in first.stdout
    second = run_cli('vlp_jax.train', _train_args(workdir))
    assert 'resumed from checkpoint at step 15' in second.stdout
    _assert_same_records(read_metrics(workdir), read_metrics(straight_run[0]), rtol=1e-6)


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_sigkill_between_checkpoints_then_resume(straight_run, tmp_path):
    workdir = tmp_path / 'killed'
    kill_after_checkpoint(_train_args(workdir), workdir, 10)
    resumed = run_cli('vlp_jax.train', _train_args(workdir))
    assert 'resumed from checkpoint at step' in resumed.stdout
    _assert_same_records(read_metrics(workdir), read_metrics(straight_run[0]), rtol=1e-6)


def test_sigterm_checkpoints_the_current_step_exits_zero_and_resumes_bit_exactly(straight_run, tmp_path):
    workdir = tmp_path / 'preempted'
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', PYTHONPATH=REPO)
    args = _train_args(workdir, extra=('--config.checkpoint_every=1000',))  # only the signal's checkpoint
    process = subprocess.Popen(
        [sys.executable, '-m', 'vlp_jax.train', *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    log = workdir / 'metrics.jsonl'
    while not (log.exists() and log.read_text().endswith('\n')):  # the first log line (step 5) is written
        assert process.poll() is None and time.monotonic() < deadline, 'run ended before its first log'
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and time.monotonic() - sent < 60, out
    stopped = int(out.split('received SIGTERM: checkpointed step ')[1].split(';')[0])
    assert 5 <= stopped < STEPS and sorted(os.listdir(workdir / 'checkpoints')) == [str(stopped)]
    resumed = run_cli('vlp_jax.train', args)
    assert f'resumed from checkpoint at step {stopped}' in resumed.stdout
    _assert_same_records(read_metrics(workdir), read_metrics(straight_run[0]), rtol=0, atol=0)


def test_evaluate_reproduces_final_eval(straight_run):
    workdir, _ = straight_run
    result = run_cli(
        'vlp_jax.evaluate', ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES]
    )
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    final = read_metrics(workdir)[-1]
    assert printed['step'] == STEPS
    for key, value in final.items():
        if key.startswith('eval/'):
            assert printed[key] == pytest.approx(value, rel=1e-6), key


def test_evaluate_on_eight_devices_equals_one(straight_run):
    """Evaluation gathers batch-sharded embeddings; with 8 devices every metric equals the 1-device run's."""
    workdir, _ = straight_run
    result = run_cli(
        'vlp_jax.evaluate',
        ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES],
        devices=8,
    )
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    final = read_metrics(workdir)[-1]
    eval_keys = [key for key in final if key.startswith('eval/')]
    assert len(eval_keys) == 14
    for key in eval_keys:
        assert printed[key] == pytest.approx(final[key], abs=1e-9), key


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_dropout_run_resumes_bit_exactly(tmp_path):
    """Dropout draws from the step's RNG (folded by step): a resumed run replays the same masks."""
    dropout = ('--config.model.vision.dropout=0.1', '--config.model.text.dropout=0.1')
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    run_cli('vlp_jax.train', _train_args(straight, steps=20, extra=dropout))
    run_cli('vlp_jax.train', _train_args(resumed, steps=20, extra=(*dropout, '--stop_at_step=10')))
    second = run_cli('vlp_jax.train', _train_args(resumed, steps=20, extra=dropout))
    assert 'resumed from checkpoint at step 10' in second.stdout
    _assert_same_records(read_metrics(resumed), read_metrics(straight), rtol=0)


def test_evaluate_missing_checkpoint_is_one_line(tmp_path):
    result = run_cli(
        'vlp_jax.evaluate',
        ['--config', TINY_CONFIG, '--checkpoint', str(tmp_path / 'nothing')],
        check=False,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_one_and_eight_devices_agree(straight_run, tmp_path):
    workdir = tmp_path / 'eight'
    run_cli('vlp_jax.train', _train_args(workdir, steps=20), devices=8)
    single = tmp_path / 'one'
    run_cli('vlp_jax.train', _train_args(single, steps=20), devices=1)
    eight_losses = [r['train/loss'] for r in read_metrics(workdir)]
    one_losses = [r['train/loss'] for r in read_metrics(single)]
    assert len(one_losses) == 4
    np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-3)


def test_tiny_training_beats_chance(tmp_path):
    workdir = tmp_path / 'learn'
    run_cli(
        'vlp_jax.train',
        _train_args(
            workdir,
            steps=150,
            extra=(
                '--config.batch_size=64',
                '--config.log_every=50',
                '--config.checkpoint_every=150',
                '--config.optim.lr=2e-3',
                '--config.data.shapes.test_size=100',
                '--config.data.shapes.train_size=10000',
            ),
        ),
    )
    final = read_metrics(workdir)[-1]
    chance = 1 / 100
    assert final['eval/retrieval/t2i_r1'] >= 5 * chance, final
    assert final['eval/retrieval/i2t_r1'] >= 5 * chance, final
    assert final['eval/zeroshot/colour/top1'] > 2 / 7, final  # 7 colours


def test_resume_with_a_different_architecture_is_one_line(straight_run):
    workdir, _ = straight_run
    before = sorted(os.listdir(workdir / 'checkpoints'))
    saved = (workdir / 'config.json').read_bytes()
    result = run_cli('vlp_jax.train', _train_args(workdir, extra=('--config.model.embed_dim=16',)), check=False)
    lines = result.stderr.strip().splitlines()
    # The run's config.json is compared before the checkpoint is opened: the line names the key.
    assert result.returncode == 2 and len(lines) == 1 and 'model.embed_dim' in lines[0], result.stderr
    assert sorted(os.listdir(workdir / 'checkpoints')) == before  # nothing moved aside or deleted
    assert (workdir / 'config.json').read_bytes() == saved
