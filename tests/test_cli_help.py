"""`--help` of every command-line tool is help: exit 0, text on stdout, nothing written (once
`example_photos --help` wrote a CSV file named `--help`)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

# The tools that import JAX at start (~4 s each on 2 cores) run in the slow suite; train and evaluate parse
# with absl, whose --help is help by construction.
SLOW = pytest.mark.slow
CLIS = (
    pytest.param('vlp_jax.train', marks=SLOW),
    pytest.param('vlp_jax.evaluate', marks=SLOW),
    'vlp_jax.data.prepare',
    'vlp_jax.data.example_photos',
    'vlp_jax.data.fashion_mnist',
    pytest.param('vlp_jax.models.importers', marks=SLOW),
    'vlp_jax.plot',
)


@pytest.mark.parametrize('module', CLIS)
def test_help_is_help_and_writes_nothing(tmp_path, module, flag='--help'):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
    result = subprocess.run(
        [sys.executable, '-m', module, flag], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert 'usage' in result.stdout.lower() or module.rsplit('.', 1)[-1] in result.stdout, result.stdout
    assert os.listdir(tmp_path) == [], f'{module} {flag} wrote {os.listdir(tmp_path)}'


def test_a_stray_word_is_refused_not_dropped(tmp_path):
    """`train --workdir a b` once trained into a and ignored b: absl leaves b as a positional argument."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
    command = [sys.executable, '-m', 'vlp_jax.train', '--config', 'configs/shapes_tiny.py', '--workdir', 'run', 'b']
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unexpected argument 'b'" in result.stderr
    assert os.listdir(tmp_path) == []
