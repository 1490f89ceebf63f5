"""Host arrays through a jitted encoder in fixed-size batches over the mesh: what every evaluator does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from jax.sharding import Mesh

from vlp_jax import parallel


def embed_in_batches(encode: Callable, arrays: tuple[np.ndarray, ...], batch_size: int, mesh: Mesh) -> np.ndarray:
    """Encodes host arrays in fixed-size batches (last one padded) sharded over the mesh's batch axes.

    Every process holds the whole eval set and gets every embedding back, also when the
    mesh spans several processes.
    """
    count = arrays[0].shape[0]
    outputs = []
    for start in range(0, count, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        real = chunk[0].shape[0]
        if real < batch_size:  # pad so every call has one static shape (one compilation)
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - real, axis=0)]) for c in chunk]
        sharded = [parallel.host_to_global(c, parallel.batch_sharding(mesh, c.ndim)) for c in chunk]
        outputs.append(parallel.to_host(encode(*sharded))[:real])
    return np.concatenate(outputs)
