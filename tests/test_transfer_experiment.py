"""experiments/transfer.py end to end for 2 steps (slow: 9 CLI runs)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SMALL = (  # tiny data for every run (each run reads only its own source's group)
    '--config.data.shapes.train_size=128',
    '--config.data.shapes_retrieval.train_size=64',
    '--config.data.shapes_snli_ve.train_size=64',
    '--config.data.shapes_snli_ve.test_size=24',
    '--config.data.shapes_nlvr2.train_size=64',
    '--config.data.shapes_nlvr2.test_size=24',
    '--config.data.shapes_grounding.train_size=64',
    '--config.eval.classification_size=24',
)


@pytest.mark.slow
def test_transfer_experiment_writes_its_table_json_and_plot(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
    command = [
        sys.executable,
        'experiments/transfer.py',
        '--seeds',
        '0',
        '--pretrain-steps',
        '2',
        '--task-steps',
        '2',
        '--workdir',
        str(tmp_path / 'runs'),
        '--out',
        str(tmp_path / 'out'),
        *SMALL,
    ]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=1800)
    results = json.loads((tmp_path / 'out' / 'transfer.json').read_text())
    assert results['seeds'] == [0]
    for task in ('retrieval', 'SNLI-VE', 'NLVR2', 'grounding'):
        assert len(results['tasks'][task]['scratch']) == len(results['tasks'][task]['pretrained']) == 1
    table = (tmp_path / 'out' / 'transfer.md').read_text()
    assert '| grounding (`eval/grounding/accuracy`) |' in table
    assert (tmp_path / 'out' / 'transfer.png').stat().st_size > 0
