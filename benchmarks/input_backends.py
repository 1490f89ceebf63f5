r"""The training pipeline alone on each input path (data.backend 'tf' and 'numpy'), in turns.

    python benchmarks/input_backends.py [--config configs/fashion_mnist.py] [--steps 50] [--rounds 2] \
        [--config.KEY=VALUE ...]

For each round and backend: the config's training pipeline (its own source, sampler, workers and
prefetch) is started, its first 5 batches are let through (threads, tf.data graph), and the next
`--steps` are timed. The backends alternate, so a machine whose load changes during the run
slows both alike. Prints one JSON line per timing; asserts nothing. Without TensorFlow only the
numpy path is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import load_config

WARM_UP = 5


def pipeline_rate(config, backend: str, steps: int) -> float:
    """Examples/s of the training pipeline on `backend`, after WARM_UP batches."""
    from vlp_jax import setup

    config = config.copy_and_resolve_references()
    config.data.backend = backend
    inputs = setup.train_inputs(config)
    batches = inputs.pipeline.iterate(0, WARM_UP + steps)
    for _ in range(WARM_UP):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return config.batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/fashion_mnist.py')
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--rounds', type=int, default=2)
    args, rest = parser.parse_known_args()

    from vlp_jax.data.backend import tensorflow_installed

    config = load_config(args.config, rest)
    backends = ('tf', 'numpy') if tensorflow_installed() else ('numpy',)
    for round_ in range(args.rounds):
        for backend in backends:
            rate = pipeline_rate(config, backend, args.steps)
            line = {
                'what': 'training pipeline alone',
                'config': args.config,
                'backend': backend,
                'round': round_,
                'image_size': int(config.model.image_size),
                'batch': int(config.batch_size),
                'workers': int(config.data.workers),
                'examples_per_sec': round(rate, 1),
                'ms_per_batch': round(1000 * config.batch_size / rate, 1),
                'cpu_cores': os.cpu_count(),
            }
            print(json.dumps(line), flush=True)


if __name__ == '__main__':
    main()
