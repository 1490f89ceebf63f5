"""`python -m vlp_jax.plot` on two tiny demo-like runs, a missing workdir as one line, and the TensorBoard
event files the README points to, read with TensorBoard's own reader (when it is installed)."""

import os

import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli
from PIL import Image

STEPS = 10


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two runs of the tiny model (seeds 0 and 1: one compiled program, shared through the cache)."""
    workdirs = []
    for seed in (0, 1):
        workdir = tmp_path_factory.mktemp(f'seed{seed}')
        args = ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES]
        args += ['--config.log_every=2', '--config.eval_every=5', f'--config.seed={seed}']
        run_cli('vlp_jax.train', args)
        workdirs.append(workdir)
    return workdirs


def test_plot_draws_both_runs_into_one_png(runs, tmp_path):
    out = tmp_path / 'pictures' / 'runs.png'
    result = run_cli('vlp_jax.plot', [*map(str, runs), '--out', str(out)])
    names = [os.path.basename(str(workdir)) for workdir in runs]
    assert result.stdout.strip() == f'wrote {out}: {names[0]} (to step {STEPS}), {names[1]} (to step {STEPS})'
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 30_000
    with Image.open(out) as image:
        assert image.size == (1300, 800)
        pixels = image.convert('RGB')
        assert len(set(pixels.getdata())) > 50  # lines, labels and legends, not an empty canvas


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
    scalars the run logged."""
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    accumulator = event_accumulator.EventAccumulator(str(runs[0] / 'tensorboard'))
    accumulator.Reload()
    tags = set(accumulator.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'eval/retrieval/t2i_r1'} <= tags
    assert [event.step for event in accumulator.Scalars('train/loss')] == list(range(2, STEPS + 1, 2))
