"""Shared set-up for the benchmarks: a config with overrides, a compiled step, a fixed batch."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path: str, override_args: Sequence[str]):
    import jax

    from vlp_jax import config as config_lib

    _, overrides = config_lib.split_overrides(list(override_args))
    config = config_lib.load_config_file(path)
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config, jax.device_count())
    return config


def build(config):
    """(mesh, rules, model, optimizer, shardings, state) for `config`, state freshly initialised."""
    import jax

    from vlp_jax import config as config_lib
    from vlp_jax import optim, parallel, state as state_lib

    mesh = parallel.make_mesh(config_lib.mesh_shape(config, jax.device_count()))
    rules = parallel.logical_rules(config.mesh.rules)
    model, optimizer = state_lib.create_model(config), optim.make_optimizer(config)
    _, shardings = state_lib.state_shardings(config, model, optimizer, mesh, rules)
    state = state_lib.init_state(config, model, optimizer, mesh, rules, shardings)
    return mesh, rules, model, optimizer, shardings, state


def fixed_batch(config, mesh, seed: int = 0):
    """A random device batch of the config's shapes (no input pipeline, no TensorFlow)."""
    import numpy as np

    from vlp_jax import parallel

    rng = np.random.default_rng(seed)
    b, size, length = config.batch_size, config.data.image_size, config.data.max_text_len
    host = {
        'image': rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
        'text_ids': rng.integers(1000, 2000, (b, length)).astype(np.int32),
        'text_mask': np.ones((b, length), np.int32),
        'index': np.arange(b, dtype=np.int64),
        'sem': np.zeros(b, np.int32),
    }
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
