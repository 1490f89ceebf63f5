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
from vlp_jax.objectives.frozen import FrozenModel, frozen_models, frozen_roles, load_frozen
from vlp_jax.probes import GroundTruthProbe

PyTree = Any


def build_objective(
    config: ml_collections.ConfigDict, model: VLPModel, mesh: Mesh, frozen: dict[str, FrozenModel] | None = None
) -> Objective:
    """The objective the model asks for: the regulated contrastive loss of a dual encoder, or
    ALBEF's ITC + ITM + MLM of a fusion model. `frozen`: each role's model (default: the trained one's)."""
    local_shards = config_lib.local_shards(config, parallel.batch_shards(mesh))
    frozen_modules = {role: spec.model for role, spec in (frozen or {}).items()}
    if model.config.kind == 'fusion':
        return AlbefObjective(config, model, local_shards, frozen_modules)
    return DualEncoderContrastive(config, model, local_shards, frozen_modules)


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
    frozen: dict[str, FrozenModel]  # role -> its architecture and restore target

    def init_state(self) -> PyTree:
        """A fresh state, created directly in its shardings, with the towers that `model.<tower>.init`
        names imported from their safetensors files (models/importers.py; validate checked them)."""
        state = state_lib.init_state(
            self.config, self.model, self.optimizer, self.objective, self.mesh, self.rules, self.shardings
        )
        from vlp_jax.models import importers

        if not importers.configured_inits(self.config):
            return state
        arrays, lines = importers.imported_params(self.config, self.model.config, state['params'])
        if jax.process_index() == 0:
            print('\n'.join(lines), flush=True)
        return self.warm_started(state, arrays)

    def warm_started(self, state: PyTree, arrays: dict[str, jax.Array]) -> PyTree:
        """A fresh `state` whose params take `arrays` (warm_start.load_warm_start) where they match, and
        whose extra state is rebuilt from them (a momentum model starts as a copy of the warm params)."""
        from vlp_jax.warm_start import warm_start

        params = warm_start(state['params'], arrays)
        rng = jax.random.fold_in(jax.random.key(self.config.seed), state_lib.EXTRA_INIT_STREAM)
        with jax.set_mesh(self.mesh):
            extra = jax.jit(lambda p: self.objective.init_extra(p, rng), out_shardings=self.shardings['extra'])(params)
        return {**state, 'params': params, 'extra': extra}

    def load_frozen(self) -> dict[str, PyTree]:
        """{role: params} of the frozen models the objective reads (FrozenModelError names a bad path)."""
        return load_frozen(frozen_roles(self.config), self.frozen, self.model)

    def train_step(self, probe: GroundTruthProbe | None = None, keep_feedback: bool = False) -> Callable:
        return steps.make_train_step(
            self.objective,
            self.optimizer,
            self.schedule,
            self.mesh,
            self.rules,
            self.shardings,
            frozen_shardings={role: spec.abstract_params for role, spec in self.frozen.items()},
            probe=probe,
            keep_feedback=keep_feedback,
            lock=optim.stop_locked_gradients(self.config),
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
    trained = FrozenModel(model, state_lib.abstract_params(model, mesh, rules))
    frozen = frozen_models(frozen_roles(config), trained, config.model.to_dict(), mesh, rules)
    objective = build_objective(config, model, mesh, frozen)
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
        frozen,
    )
