"""`python -m vlp_jax.plot` on two runs, a missing workdir as one line, and the TensorBoard event files the
README points to, read with TensorBoard's own reader (when it is installed).

The default tests plot runs logged through the training loop's own writer (metrics.MetricsWriter: metrics.jsonl
and the event files) with the keys the step and the loop log (steps.py, metrics.SPEED_KEYS), which costs no
training; the slow test plots two real tiny runs (~1.5 min on 2 cores).
"""

import math
import os

import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli
from PIL import Image

from vlp_jax.metrics import SPEED_KEYS, MetricsWriter

STEPS, LOG_EVERY, EVAL_EVERY = 10, 2, 5


def logged_run(workdir, seed):
    """What a STEPS-step run logs: the step's scalars and the loop's throughput every LOG_EVERY steps, the
    evaluation every EVAL_EVERY steps, written by the run's writer."""
    writer = MetricsWriter(str(workdir))
    for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        record = {'train/loss': 4.0 / (1 + 0.1 * step) + 0.05 * seed, 'train/lr': 1e-3 * min(1.0, step / 4)}
        record.update({key: 100.0 + 10 * seed + step for key in SPEED_KEYS})
        record.update({'train/grad_norm': 1.0, 'train/temperature': 0.07})
        writer.write(step, record)
        if step % EVAL_EVERY == 0:
            r1 = 0.1 + 0.02 * step + 0.01 * seed
            writer.write(step, {'eval/retrieval/t2i_r1': r1, 'eval/retrieval/i2t_r1': r1 + 0.05})
    writer.write(STEPS, {'eval/zeroshot/shape/top1': 0.3, 'eval/retrieval/t2i_r5': math.nan})
    writer.close()
    return workdir


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    return [logged_run(tmp_path_factory.mktemp(f'seed{seed}'), seed) for seed in (0, 1)]


@pytest.fixture(scope='module')
def trained_runs(tmp_path_factory):
    """Two runs of the tiny model (seeds 0 and 1: one compiled program, shared through the cache)."""
    workdirs = []
    for seed in (0, 1):
        workdir = tmp_path_factory.mktemp(f'trained{seed}')
        args = ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES]
        args += [f'--config.log_every={LOG_EVERY}', f'--config.eval_every={EVAL_EVERY}', f'--config.seed={seed}']
        run_cli('vlp_jax.train', args)
        workdirs.append(workdir)
    return workdirs


def assert_plots(workdirs, tmp_path):
    out = tmp_path / 'pictures' / 'runs.png'
    result = run_cli('vlp_jax.plot', [*map(str, workdirs), '--out', str(out)])
    names = [os.path.basename(str(workdir)) for workdir in workdirs]
    assert result.stdout.strip() == f'wrote {out}: {names[0]} (to step {STEPS}), {names[1]} (to step {STEPS})'
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 30_000
    with Image.open(out) as image:
        assert image.size == (1300, 800)
        pixels = image.convert('RGB')
        assert len(set(pixels.getdata())) > 50  # lines, labels and legends, not an empty canvas


def assert_tensorboard_reads(workdir):
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    accumulator = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'))
    accumulator.Reload()
    tags = set(accumulator.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'eval/retrieval/t2i_r1'} <= tags
    assert [event.step for event in accumulator.Scalars('train/loss')] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))


@pytest.mark.slow
def test_plot_and_tensorboard_on_two_trained_runs(trained_runs, tmp_path):
    assert_plots(trained_runs, tmp_path)
    assert_tensorboard_reads(trained_runs[0])


def test_plot_draws_both_runs_into_one_png(runs, tmp_path):
    assert_plots(runs, tmp_path)


def test_a_missing_workdir_is_one_line(runs, tmp_path):
    missing = tmp_path / 'no_such_run'
    result = run_cli('vlp_jax.plot', [str(runs[0]), str(missing), '--out', str(tmp_path / 'x.png')], check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: workdir '{missing}' does not exist; pass the --workdir of a vlp_jax.train run."
    ]
    assert not (tmp_path / 'x.png').exists()
    result = run_cli('vlp_jax.plot', [str(tmp_path), '--out', str(tmp_path / 'x.png')], check=False)
    assert result.returncode == 2 and 'holds no metrics.jsonl' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tensorboard_reads_the_event_files(runs):
    """The README's `tensorboard --logdir WORKDIR/tensorboard`: TensorBoard (in requirements.txt) reads the
    scalars the run's writer logged."""
    assert_tensorboard_reads(runs[0])
