"""Mesh, logical-axis rules -> shardings, multi-host init and global batch arrays.

One jit per step over one Mesh with axes ('data', 'fsdp', 'model'). The batch is
split over ('data', 'fsdp'); parameters follow the logical-axis rules in the config,
so data parallel, FSDP and tensor parallel are config choices, not code changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlp_jax.config import MESH_AXES

BATCH_AXES = ('data', 'fsdp')


def _is_multi_process_environment() -> bool:
    """True on a cluster launch: explicit coordinator, a multi-task SLURM job, or a multi-host TPU slice."""
    if os.environ.get('JAX_COORDINATOR_ADDRESS'):
        return True
    if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
        return True
    return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def maybe_initialize_distributed() -> None:
    """Starts JAX's multi-controller runtime when the environment describes a cluster."""
    if _is_multi_process_environment():
        jax.distributed.initialize()


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes MESH_AXES; `sizes` must multiply to the device count."""
    devices = list(devices if devices is not None else jax.devices())
    shape = tuple(int(sizes[axis]) for axis in MESH_AXES)
    assert int(np.prod(shape)) == len(devices), (shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Config rules (lists from overrides, tuples from files) as flax wants them."""
    out = []
    for name, target in rules:
        if isinstance(target, list):
            target = tuple(target)
        out.append((name, target))
    return tuple(out)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis over the batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shardings_from_logical(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree of (possibly nn.Partitioned-boxed) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the global batch into sharded global arrays."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), np.asarray(value))
        for key, value in local_batch.items()
    }


def host_to_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (evaluation sets).

    Each process fills only its own devices' shards, so this works across processes,
    where `jax.device_put` of a host value onto other processes' devices cannot.
    """
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(array: jax.Array) -> np.ndarray:
    """The whole of a global array as numpy on every process.

    A fully replicated array is read from a local shard; a sharded one is gathered
    from all processes (`jax.device_get` fails on shards held by another process),
    through the same call whether there is one process or many.
    """
    if array.is_fully_replicated:
        return np.asarray(array.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def batch_shards(mesh: Mesh) -> int:
    return mesh.shape['data'] * mesh.shape['fsdp']
