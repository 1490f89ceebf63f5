"""The start-of-run lines (vlp_jax/start_warnings.py) and an ETA that does not count compilation
(metrics.Throughput). The lines in a real records run are checked in test_photos_run.py."""

import types

import numpy as np
import pytest
from conftest import make_config

from vlp_jax import metrics
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.start_warnings import start_lines


def _evaluator(spec, images, captions=None, classes=None):
    data = types.SimpleNamespace(images=np.zeros((images, 2, 2, 3)))
    if captions is not None:
        data.text_ids = np.zeros((captions, 4))
    if classes is not None:
        data.class_names = [f'class {i}' for i in range(classes)]
    return types.SimpleNamespace(spec=spec, data=data)


DERIVED = types.SimpleNamespace(batch_shards=1)


def test_a_small_run_gets_one_line_per_set_and_per_misleading_setting():
    config = make_config('--config.total_steps=20', '--config.optim.warmup_steps=100', '--config.eval.batch_size=64')
    records = _evaluator(EvalSpec('retrieval', 'records', '', ''), 16, captions=61)
    cifar = _evaluator(EvalSpec('classification', 'tfds', 'cifar10:test', 'cifar10_test'), 500, classes=10)
    lines = start_lines(config, DERIVED, [records, cifar])
    own = "retrieval:records (the run's own split)"
    assert lines == [
        'WARNING: optim.warmup_steps=100 >= total_steps=20: the learning rate never reaches optim.lr '
        '(it ends at 20% of it); lower optim.warmup_steps.',
        f'eval set {own}: 16 images, 61 captions',
        f'WARNING: eval set {own} holds only 16 images: one image moves a recall or top-1 figure by 6%, and '
        'random ranking already gives R@5 = 0.31; figures on fewer than 100 images say little.',
        f'WARNING: eval.batch_size=64 does not divide the 16 images of eval set {own}: 48 of the 64 rows each '
        'evaluation encodes are padding; eval.batch_size=16 divides it.',
        'eval set cifar10_test (classification:tfds:cifar10:test): 500 images, 10 classes',
    ]


def test_a_sound_run_gets_the_sizes_only():
    """The demo's settings: 600 steps, 100 warmup, 1000 test images at eval batch 256 (2.3% padding)."""
    config = make_config('--config.total_steps=600', '--config.optim.warmup_steps=100', '--config.eval.batch_size=256')
    lines = start_lines(config, DERIVED, [_evaluator(EvalSpec('retrieval', 'shapes', '', ''), 1000, captions=5000)])
    assert lines == ["eval set retrieval:shapes (the run's own split): 1000 images, 5000 captions"]


def test_the_first_eta_does_not_count_compilation(monkeypatch):
    """Step 1 compiles for 60 s, then each step takes 1 s: at step 10 of 100, 90 s remain (the old ETA
    counted the compilation: 69 s / 10 steps x 90 = 621 s, 'ETA 8:52' at step 10 of a 2-minute run)."""
    clock = [0.0]
    monkeypatch.setattr(metrics.time, 'perf_counter', lambda: clock[0])
    throughput = metrics.Throughput(batch_size=4, total_steps=100, start_step=0)
    first = None
    for step in range(1, 11):
        clock[0] += 60.0 if step == 1 else 1.0
        throughput.step_done()
        if step == 1:
            first = throughput.window(step)
    assert 'eta_seconds' not in first and metrics.console_line(1, 100, _values(first)).endswith('ETA -')
    window = throughput.window(10)
    assert window['eta_seconds'] == pytest.approx(90.0)
    assert metrics.console_line(10, 100, _values(window)).endswith('ETA 1:30')
    token = throughput.pause()  # an evaluation of 30 s does not count either
    clock[0] += 30.0
    throughput.resume(token)
    clock[0] += 1.0
    throughput.step_done()
    assert throughput.window(11)['eta_seconds'] == pytest.approx(89.0)


def _values(window):
    return {**window, 'train/loss': 1.0, 'train/temperature': 0.07}
