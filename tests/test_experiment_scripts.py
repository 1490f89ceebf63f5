"""Smoke tests of the experiment scripts (experiments/*.py): each runs end to end for 2-3 steps and writes its
table, plot and JSON, so a script broken by a change elsewhere (a renamed metric, a config key, a CLI flag)
fails here rather than hours into a sweep. The figures they print at this length mean nothing.

Each script trains several tiny runs in subprocesses (compile + eval each): minutes on 2 cores, so `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_fashion_mnist import _write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'experiments', name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f'{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result.stdout


def _outputs(out_dir, stem: str) -> dict:
    for suffix in ('.md', '.png', '.json'):
        path = os.path.join(out_dir, stem + suffix)
        assert os.path.getsize(path) > 0, f'{path} was not written'
    with open(os.path.join(out_dir, stem + '.json')) as handle:
        return json.load(handle)


def _fashion_mnist_idx(directory, per_class: int = 8) -> None:
    """Tiny idx files in the real format: 10 classes x per_class images of 28 x 28 for both splits."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = rng.integers(0, 256, (labels.size, 28, 28), dtype=np.uint8)
    for prefix in ('train', 't10k'):
        _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images)
        _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels)


def test_fn_density_writes_paired_table_plot_and_json(tmp_path):
    idx_dir = tmp_path / 'idx'
    idx_dir.mkdir()
    _fashion_mnist_idx(str(idx_dir))
    out = tmp_path / 'out'
    sweep = (
        *('--steps=2', '--seeds', '0', '1', '--granularities', 'class', 'group2'),
        *('--methods', 'InfoNCE', 'SRCL', 'COSMO', f'--workdir={tmp_path / "runs"}'),
    )
    stdout = _run_script(
        'fn_density.py',
        *sweep,
        f'--out={out}',
        '--extra',
        f'--config.data.fashion_mnist.directory={idx_dir}',
        '--config.data.fashion_mnist.train_size=64',
        '--config.data.fashion_mnist.test_size=40',
        '--config.batch_size=16',
        '--config.eval.retrieval_size=40',
    )
    written = _outputs(out, 'fn_density')
    results = written['runs']
    assert set(results) == {'class', 'group2'}
    assert set(written['cosmo_thresholds']) == {'class', 'group2'}  # calibrated on each granularity's reference
    assert all(-1.0 <= c['high'] <= 1.0 for c in written['cosmo_thresholds'].values())
    for granularity, runs in results.items():
        assert set(runs) == {'InfoNCE', 'SRCL', 'COSMO'}
        assert all(len(seeds) == 2 for seeds in runs.values()), granularity
        assert 0.0 <= runs['SRCL'][0]['zero-shot top-1'] <= 1.0
    assert 'Δ vs InfoNCE' in stdout
    # --collect trains nothing and tabulates the same runs; a seed some method lacks is left out
    shutil.rmtree(tmp_path / 'runs' / 'group2_SRCL_seed1')
    collected = tmp_path / 'collected'
    _run_script('fn_density.py', *sweep, '--collect', f'--out={collected}')
    again = _outputs(collected, 'fn_density')
    assert again['seeds'] == {'class': [0, 1], 'group2': [0]}
    assert again['runs']['class'] == results['class']
    assert again['runs']['group2']['SRCL'] == results['group2']['SRCL'][:1]
    assert not (tmp_path / 'runs' / 'group2_SRCL_seed1').exists()


def test_false_negatives_and_grit_scripts_share_a_reference(tmp_path):
    runs, out = tmp_path / 'runs', tmp_path / 'out'
    small = ['--config.batch_size=16', '--config.data.shapes.test_size=40', '--config.eval.retrieval_size=40']
    _run_script(
        'false_negatives.py',
        '--steps=2',
        '--reference-steps=2',
        '--train-size=128',
        '--seeds',
        '0',
        '--methods',
        'InfoNCE',
        'COSMO (MAFA)',
        f'--workdir={runs}',
        f'--out={out}',
        '--extra',
        *small,
    )
    results = _outputs(out, 'false_negatives')
    assert set(results) == {'InfoNCE', 'COSMO (MAFA)'}
    _run_script(
        'grit_sampling.py',
        f'--reference={runs / "reference"}',
        '--steps=6',  # 4 steps an epoch: GRIT's grouped order is in use from step 5
        '--seeds',
        '0',
        f'--workdir={tmp_path / "grit_runs"}',
        f'--out={out}',
        '--extra',
        *small,
        '--config.data.shapes.train_size=64',
        '--config.sampling.grit.queue_size=64',
        '--config.sampling.grit.search_space=32',
    )
    assert set(_outputs(out, 'grit_sampling')) == {'random', 'GRIT', 'GRIT+COSMO'}
    stdout = _run_script(
        'grit_batch_hardness.py',
        f'--run={tmp_path / "grit_runs" / "GRIT_seed0"}',
        f'--judge={runs / "reference"}',
        '--batches=1',
    )
    assert stdout.strip(), 'grit_batch_hardness printed nothing'


def test_fusion_methods_script(tmp_path):
    out = tmp_path / 'out'
    _run_script(
        'fusion_methods.py',
        '--steps=3',
        '--batch-size=8',
        '--reference-steps=2',
        '--seeds',
        '0',
        '--methods',
        'ALBEF (no momentum)',
        f'--workdir={tmp_path / "runs"}',
        f'--out={out}',
        '--extra',
        '--config.data.shapes.test_size=24',
        '--config.eval.retrieval_size=24',
    )
    results = _outputs(out, 'fusion_methods')
    assert 'ALBEF (no momentum)' in results and 'chance' in results


def test_shape_probe_script(tmp_path):
    from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli

    lines = _run_script('shape_probe.py', '--supervised', '--steps=2').strip().splitlines()
    row = json.loads(lines[-1])
    assert row['step'] == 2 and 0.0 <= row['shape accuracy'] <= 1.0
    workdir = tmp_path / 'run'
    run_cli(
        'vlp_jax.train', ['--config', TINY_CONFIG, '--workdir', str(workdir), *FAST_OVERRIDES, '--config.total_steps=4']
    )
    probe = json.loads(_run_script('shape_probe.py', f'--checkpoint={workdir}').strip().splitlines()[-1])
    assert 0.0 <= probe['shape linear probe'] <= 1.0 and 0.0 <= probe['colour linear probe'] <= 1.0
