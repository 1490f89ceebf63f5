"""The values a run derives from its config, computed once, in one place: the mesh, the data's size, the epoch.

The config states what the user asked for; what follows from it and the machine (how many
devices, how large the training set is) lives here and nowhere else, so the checks, setup
and every plug-in read the same numbers.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vlp_jax.config import MESH_AXES, ConfigError, settings_of
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import SourceContext, SourcePlugin
from vlp_jax.registry import SOURCES


@dataclasses.dataclass(frozen=True)
class Derived:
    device_count: int
    mesh_sizes: dict[str, int]
    batch_shards: int  # mesh data x fsdp: what the global batch is split over
    local_shards: int  # what 'local' grouping and negatives mean (mesh.local_shards, -1 = batch_shards)
    train_size: int  # examples in the training split
    steps_per_epoch: int  # global batches per epoch (a tail short of a batch is dropped)


def mesh_shape(mesh: ml_collections.ConfigDict, device_count: int) -> dict[str, int]:
    """The mesh sizes (one axis may be -1: all remaining devices); ConfigError when they do not fit."""
    sizes = {axis: int(mesh[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f'only one of mesh.{"/".join(MESH_AXES)} may be -1, got {sizes}.')
    for axis, size in sizes.items():
        if not (size == -1 or size >= 1):
            raise ConfigError(f'config key mesh.{axis} must be -1 or a positive integer, got {size}.')
    fixed = 1
    for size in sizes.values():
        fixed *= size if size != -1 else 1
    if free:
        if device_count % fixed:
            raise ConfigError(f'mesh sizes {sizes} do not divide the {device_count} devices; change mesh.*.')
        sizes[free[0]] = device_count // fixed
    if fixed * (sizes[free[0]] if free else 1) != device_count:
        raise ConfigError(f'mesh {sizes} needs {fixed} devices but {device_count} are present; change mesh.*.')
    return sizes


def source_plugin(config: ml_collections.ConfigDict, name: str) -> SourcePlugin:
    """The registered source `name` with its typed settings."""
    cls = SOURCES.get(name)
    settings = settings_of(config, cls.Settings) if cls.Settings is not None else None
    return cls(settings, SourceContext(seed=int(config.seed), image_size=int(config.model.image_size)))


def derive(config: ml_collections.ConfigDict, device_count: int) -> Derived:
    """The derived values; opens the training source for its size (a missing or unprepared set is a ConfigError)."""
    sizes = mesh_shape(config.mesh, device_count)
    batch_shards = sizes['data'] * sizes['fsdp']
    local = int(config.mesh.local_shards)
    try:
        train_size = int(source_plugin(config, str(config.data.name)).train_size())
    except DataError as error:
        raise ConfigError(str(error)) from None
    return Derived(
        device_count=device_count,
        mesh_sizes=sizes,
        batch_shards=batch_shards,
        local_shards=batch_shards if local == -1 else local,
        train_size=train_size,
        steps_per_epoch=train_size // int(config.batch_size),
    )
