"""Config -> mesh, rules, model, optimizer, objective, shardings, state: the one place a run is built.

train, evaluate, the benchmarks and the experiments all start here, so a new objective,
a new layout rule or a new piece of state is wired once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from vlp_jax import config as config_lib
from vlp_jax import optim, parallel, steps
from vlp_jax import state as state_lib
from vlp_jax.models.vlp import VLPModel
from vlp_jax.objectives.albef import AlbefObjective
from vlp_jax.objectives.base import Objective
from vlp_jax.objectives.dual_encoder import DualEncoderContrastive
from vlp_jax.objectives.frozen import frozen_roles, load_frozen
from vlp_jax.probes import GroundTruthProbe

PyTree = Any


def build_objective(config: ml_collections.ConfigDict, model: VLPModel, mesh: Mesh) -> Objective:
    """The objective the model asks for: the regulated contrastive loss of a dual encoder, or
    ALBEF's ITC + ITM + MLM of a fusion model."""
    local_shards = config_lib.local_shards(config, parallel.batch_shards(mesh))
    if model.config.kind == 'fusion':
        return AlbefObjective(config, model, local_shards)
    return DualEncoderContrastive(config, model, local_shards)


@dataclasses.dataclass(frozen=True)
class Setup:
    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: tuple
    model: VLPModel
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    objective: Objective
    abstract_state: PyTree  # ShapeDtypeStructs carrying their shardings: the restore target
    shardings: PyTree

    def init_state(self) -> PyTree:
        """A fresh state, created directly in its shardings."""
        return state_lib.init_state(
            self.config, self.model, self.optimizer, self.objective, self.mesh, self.rules, self.shardings
        )

    def load_frozen(self) -> dict[str, PyTree]:
        """{role: params} of the frozen models the objective reads (FrozenModelError names a bad path)."""
        return load_frozen(frozen_roles(self.config), self.abstract_state['params'])

    def train_step(self, probe: GroundTruthProbe | None = None, keep_feedback: bool = False) -> Callable:
        return steps.make_train_step(
            self.objective,
            self.optimizer,
            self.schedule,
            self.mesh,
            self.rules,
            self.shardings,
            probe=probe,
            keep_feedback=keep_feedback,
        )

    def encoders(self) -> tuple[Callable, Callable]:
        return steps.make_encoders(self.model, self.mesh, self.rules, self.shardings['params'])


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Setup:
    """Everything but the state itself (see Setup.init_state), allocating nothing on the devices."""
    devices = list(devices if devices is not None else jax.devices())
    mesh = parallel.make_mesh(config_lib.mesh_shape(config, len(devices)), devices)
    rules = parallel.logical_rules(config.mesh.rules)
    model = state_lib.create_model(config)
    optimizer = optim.make_optimizer(config)
    objective = build_objective(config, model, mesh)
    abstract_state, shardings = state_lib.state_shardings(config, model, optimizer, objective, mesh, rules)
    return Setup(
        config,
        mesh,
        rules,
        model,
        optimizer,
        optim.learning_rate_schedule(config),
        objective,
        abstract_state,
        shardings,
    )
