"""Shared set-up for the benchmarks: a config with overrides, a compiled step, a fixed batch."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path: str, override_args: Sequence[str]):
    import jax

    from vlp_jax.checks import validate
    from vlp_jax.config import split_overrides
    from vlp_jax.config_files import load_config_file

    _, overrides = split_overrides(list(override_args))
    config = load_config_file(path, overrides)
    validate(config, jax.device_count())
    return config


def build(config):
    """The run's Setup (vlp_jax.setup) and a freshly initialised state."""
    from vlp_jax import setup as setup_lib

    run_setup = setup_lib.build(config)
    return run_setup, run_setup.init_state()


def fixed_batch(config, mesh, seed: int = 0):
    """A random device batch of the spec's required keys (no input pipeline, no TensorFlow)."""
    from vlp_jax import parallel
    from vlp_jax.data.batch import example_batch

    host = example_batch(config.batch_size, config.model.image_size, config.model.max_text_len, seed)
    return parallel.global_batch(host, mesh)


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Mean wall time of `fn()` after one warm-up (compilation) call; blocks on the result."""
    import jax

    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def train_step_seconds(config, repeats: int) -> float:
    """Mean seconds of the config's train step on one fixed device batch (no input pipeline)."""
    run_setup, state = build(config)
    train_step = run_setup.train_step()
    batch = fixed_batch(config, run_setup.mesh)
    holder = {'state': state}

    def one_step():
        holder['state'], metrics, _ = train_step(holder['state'], batch)
        return metrics

    return seconds_per_call(one_step, repeats)
