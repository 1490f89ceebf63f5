"""Runs a vlp_jax CLI module with TFDS mocked (tfds.testing.mock_data: random examples, no files, offline).

    python tests/tfds_mock_main.py NUM_EXAMPLES MODULE ARGS...

mock_data patches TFDS inside one process, so the CLI runs here rather than in a child.
"""

import runpy
import sys

import tensorflow_datasets as tfds

if __name__ == '__main__':
    num_examples, module, *args = sys.argv[1:]
    with tfds.testing.mock_data(num_examples=int(num_examples)):
        sys.argv = [module, *args]
        runpy.run_module(module, run_name='__main__', alter_sys=True)
