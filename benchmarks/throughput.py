"""Prints train-step and input-pipeline throughput for a config (asserts nothing).

    python benchmarks/throughput.py [--config configs/shapes_tiny.py] [--steps 30] [--config.key=value ...]

The step is timed on one fixed device batch (no input pipeline), the pipeline alone
(no training); their ratio says how far the loader is ahead of the step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/shapes_tiny.py')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--skip-pipeline', action='store_true', help='time only the step (no TensorFlow needed)')
    args, rest = parser.parse_known_args()

    import jax
    import numpy as np

    from vlp_jax import config as config_lib
    from vlp_jax import optim, parallel, state as state_lib, steps

    _, overrides = config_lib.split_overrides(rest)
    config = config_lib.load_config_file(args.config)
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config, jax.device_count())
    mesh = parallel.make_mesh(config_lib.mesh_shape(config, jax.device_count()))
    rules = parallel.logical_rules(config.mesh.rules)
    model, optimizer = state_lib.create_model(config), optim.make_optimizer(config)
    _, shardings = state_lib.state_shardings(config, model, optimizer, mesh, rules)
    state = state_lib.init_state(config, model, optimizer, mesh, rules, shardings)
    train_step = steps.make_train_step(config, model, optimizer, mesh, rules, shardings)

    rng = np.random.default_rng(0)
    b, size, length = config.batch_size, config.data.image_size, config.data.max_text_len
    host_batch = {
        'image': rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
        'text_ids': rng.integers(1000, 2000, (b, length)).astype(np.int32),
        'text_mask': np.ones((b, length), np.int32),
        'index': np.arange(b, dtype=np.int64),
        'sem': np.zeros(b, np.int32),
    }
    batch = parallel.global_batch(host_batch, mesh)
    state, metrics = train_step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    step_seconds = (time.perf_counter() - start) / args.steps
    step_rate = b / step_seconds
    print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}  batch {b}')
    print(f'train step: {1000 * step_seconds:.1f} ms/step  {step_rate:.0f} examples/s')
    if args.skip_pipeline:
        return

    from vlp_jax.data.pipeline import TrainPipeline
    from vlp_jax.data.sources import build_source

    pipeline = TrainPipeline(config, build_source(config, 'train'))
    batches = pipeline.iterate(0, args.steps + 1)
    next(batches)  # start the workers
    start = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    pipeline_rate = b * args.steps / (time.perf_counter() - start)
    del batches
    print(f'input pipeline alone: {pipeline_rate:.0f} examples/s ({config.data.workers} workers)')
    print(f'pipeline / step: {pipeline_rate / step_rate:.1f}x (target >= 3x)')


if __name__ == '__main__':
    main()
