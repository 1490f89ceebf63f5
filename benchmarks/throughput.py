"""Prints train-step and input-pipeline throughput for a config (asserts nothing).

    python benchmarks/throughput.py [--config configs/shapes_tiny.py] [--steps 30] [--config.key=value ...]

The step is timed on one fixed device batch (no input pipeline), the pipeline alone
(no training); their ratio says how far the loader is ahead of the step.
"""

from __future__ import annotations

import argparse

from common import load_config, train_step_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/shapes_tiny.py')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--skip-pipeline', action='store_true', help='time only the step (no TensorFlow needed)')
    args, rest = parser.parse_known_args()

    import jax

    config = load_config(args.config, rest)
    step_seconds = train_step_seconds(config, args.steps)
    b = config.batch_size
    step_rate = b / step_seconds
    print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}  batch {b}')
    print(f'train step: {1000 * step_seconds:.1f} ms/step  {step_rate:.0f} examples/s')
    if args.skip_pipeline:
        return

    import time

    from vlp_jax import setup

    pipeline = setup.train_inputs(config).pipeline
    batches = pipeline.iterate(0, args.steps + 1)
    next(batches)  # start the workers
    start = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    pipeline_rate = b * args.steps / (time.perf_counter() - start)
    print(f'input pipeline alone: {pipeline_rate:.0f} examples/s ({config.data.workers} workers)')
    print(f'pipeline / step: {pipeline_rate / step_rate:.1f}x (target >= 3x)')


if __name__ == '__main__':
    main()
