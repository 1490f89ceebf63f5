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

from vlp_jax.config import MESH_AXES, ConfigError

BATCH_AXES = ('data', 'fsdp')


# What a launcher sets (launch/local_multiprocess.sh): JAX reads the coordinator address itself, but not
# the process count or this process's id, so those two are passed on explicitly from here.
COORDINATOR_ENV = 'JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES_ENV = 'JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'JAX_PROCESS_ID'
# '1' initialises even when none of the variables below is set (a Cloud TPU VM slice, whose workers JAX
# finds from the metadata server: launch/tpu_pod.sh sets it); '0' never initialises.
DISTRIBUTED_ENV = 'VLP_JAX_DISTRIBUTED'
# Seconds without a heartbeat after which a process counts as dead and every other one stops with an
# error instead of waiting on it forever (jax.distributed.initialize's heartbeat_timeout_seconds).
HEARTBEAT_ENV = 'VLP_JAX_HEARTBEAT_TIMEOUT_S'


def _is_multi_process_environment() -> bool:
    """True on a cluster launch: explicit coordinator, a multi-task SLURM job, a multi-host TPU slice, or forced."""
    forced = os.environ.get(DISTRIBUTED_ENV, '').strip()
    if forced in ('0', '1'):
        return forced == '1'
    if os.environ.get(COORDINATOR_ENV):
        return True
    if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
        return True
    return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def _int_from_env(name: str) -> int | None:
    value = os.environ.get(name, '').strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'{name}={value!r} must be an integer.') from None


def maybe_initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Starts JAX's multi-controller runtime when the arguments or the environment describe a cluster.

    Arguments win over the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); what
    neither gives, jax.distributed.initialize detects (SLURM, Cloud TPU). Calling it twice is harmless.
    """
    if jax.distributed.is_initialized():
        return
    if not coordinator_address and not _is_multi_process_environment():
        return
    if num_processes is None:
        num_processes = _int_from_env(NUM_PROCESSES_ENV)
    if process_id is None:
        process_id = _int_from_env(PROCESS_ID_ENV)
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ConfigError(
            f'process id {process_id} is not in [0, {num_processes}) ({PROCESS_ID_ENV}, {NUM_PROCESSES_ENV}).'
        )
    options = {}
    heartbeat = _int_from_env(HEARTBEAT_ENV)
    if heartbeat is not None:
        options['heartbeat_timeout_seconds'] = heartbeat
    try:
        jax.distributed.initialize(
            coordinator_address or os.environ.get(COORDINATOR_ENV) or None, num_processes, process_id, **options
        )
    except (ValueError, TypeError) as error:  # nothing to connect to: the launch is missing a setting
        raise ConfigError(f'jax.distributed.initialize: {str(error).splitlines()[0]}') from None


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
