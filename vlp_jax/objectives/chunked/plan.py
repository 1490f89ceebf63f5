"""What is static about one call of the chunked loss: the tile size, the mesh's batch axes, the regulator chain."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vlp_jax.config import MESH_AXES
from vlp_jax.parallel import BATCH_AXES

# Default size of one [rows, columns] tile: 2^21 float32 = 8 MiB per temporary.
TILE_ELEMENTS = 1 << 21
COMMS = ('ring', 'all_gather')
# Per direction: (name, anchor key, candidate key). Rows of i2t are images, of t2i texts; a frozen
# model's embeddings use the same letters after its role: 'ROLE:v', 'ROLE:t'.
DIRECTIONS = (('i2t', 'v', 't'), ('t2i', 't', 'v'))


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """Everything static about one call: shapes, mesh, the regulators (applied tile by tile), which frozen
    models' embeddings travel with the candidates."""

    form: str
    batch: int
    devices: int
    axes: tuple[str, ...]
    block: int
    comm: str
    stop_grad_keys: bool
    consistency: bool
    chain: Any  # objectives.regulators.RegulatorChain
    roles: tuple[str, ...] = ()  # frozen 'cosine' roles whose embeddings ride along
    smooths: bool = False  # a regulator mixes a uniform distribution into the targets (Regulator.uniform_mix)


def role_key(role: str, letter: str) -> str:
    return f'{role}:{letter}'


def _resolve_mesh(mesh):
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:  # no mesh in context: one device
            mesh = Mesh(np.asarray(jax.devices()[:1]).reshape((1,) * len(MESH_AXES)), MESH_AXES)
    axes = tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)
    assert axes, f'the mesh {mesh.axis_names} has none of the batch axes {BATCH_AXES}'
    return mesh, axes, int(np.prod([mesh.shape[axis] for axis in axes]))


def default_block_size(rows_per_device: int, tile_elements: int = TILE_ELEMENTS) -> int:
    """Columns per tile: the largest halving of the local rows with rows x columns <= tile_elements."""
    block = rows_per_device
    while block % 2 == 0 and rows_per_device * block > tile_elements:
        block //= 2
    return block
