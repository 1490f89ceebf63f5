"""Config -> mesh, rules, model, optimizer, objective, sampler, shardings, state: the one place a run is built.

train, evaluate, the benchmarks and the experiments all start here, so a new objective, a new
layout rule or a new piece of state is wired once. `build` runs the checks that need the
model's parameter shapes (the layout, the optimizer's patterns, imported files' headers) once,
where those shapes are computed, and raises ConfigError before anything is compiled or written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from vlp_jax import optim, parallel, steps
from vlp_jax import state as state_lib
from vlp_jax.checks import check_config, check_shapes, regulator_context
from vlp_jax.config import DataSettings, OptimSettings, settings_of
from vlp_jax.data.pipeline import TrainPipeline
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.derived import Derived, source_plugin
from vlp_jax.models import importers
from vlp_jax.models.vlp import VLPModel
from vlp_jax.objectives.base import Objective, ObjectiveParts
from vlp_jax.objectives.frozen import FrozenModel, frozen_models, load_frozen
from vlp_jax.objectives.regulators import RegulatorChain
from vlp_jax.registry import OBJECTIVES, SAMPLERS
from vlp_jax.sampling.base import Sampler, SamplerContext

PyTree = Any
SAMPLER_STATE = 'sampler'  # the sampler's packed state, beside the train state (when it has one)


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    """What feeds the loop: the training source, its sampler and the pipeline over both."""

    source: Source
    sampler: Sampler
    pipeline: TrainPipeline


@dataclasses.dataclass(frozen=True)
class Setup:
    config: ml_collections.ConfigDict
    derived: Derived
    mesh: Mesh
    rules: tuple
    model: VLPModel
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    objective: Objective
    abstract_state: PyTree  # ShapeDtypeStructs carrying their shardings: the restore target
    shardings: PyTree
    frozen: dict[str, FrozenModel]  # role -> its architecture and restore target
    frozen_roles: tuple  # objectives.frozen.FrozenRole of every role the regulators read

    def init_state(self) -> PyTree:
        """A fresh state, created directly in its shardings, with the towers that `model.<tower>.init`
        names imported from their safetensors files (models/importers.py; build checked their headers)."""
        state = state_lib.init_state(
            self.config.seed, self.model, self.optimizer, self.objective, self.mesh, self.rules, self.shardings
        )
        if not importers.configured_inits(self.config):
            return state
        arrays, lines = importers.imported_params(self.config, self.model.config, state['params'])
        if jax.process_index() == 0:
            print('\n'.join(lines), flush=True)
        return self.warm_started(state, arrays)

    def load_warm_start(self) -> Any:
        """The warm start from `model.init_checkpoint` (warm_start.WarmStart; WarmStartError names a bad path),
        with the model's own mapping of params the checkpoint holds under other paths."""
        from vlp_jax.models.vlp import checkpoint_sources
        from vlp_jax.warm_start import load_warm_start

        path = str(self.config.model.init_checkpoint)
        return load_warm_start(path, self.abstract_state['params'], checkpoint_sources(self.model.config))

    def warm_started(self, state: PyTree, arrays: dict[str, Any]) -> PyTree:
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
        return load_frozen(self.frozen_roles, self.frozen, self.model)

    def train_step(self, probe: Any = None, keep_feedback: bool = False) -> steps.TrainStep:
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
            lock=optim.stop_locked_gradients(settings_of(self.config, OptimSettings)),
        )

    def encoders(self) -> tuple[Callable, Callable]:
        return steps.make_encoders(self.model, self.mesh, self.rules, self.shardings['params'])

    def source_plugin(self, name: str) -> SourcePlugin:
        return source_plugin(self.config, name)

    def train_inputs(self, process_index: int = 0, process_count: int = 1) -> TrainInputs:
        """The training source, its sampler and this process's pipeline."""
        return train_inputs(self.config, process_index, process_count, self.derived.local_shards)

    def checkpoint_target(self, sampler: Sampler) -> PyTree:
        """The abstract state a checkpoint restores into: the train state and the sampler's state, if it has any
        (a stateless sampler adds nothing, so its checkpoints are exactly the train state's)."""
        packed = sampler.abstract_state()
        return {**self.abstract_state, SAMPLER_STATE: packed} if packed else self.abstract_state

    @staticmethod
    def checkpoint_state(state: PyTree, sampler: Sampler) -> PyTree:
        """What a checkpoint saves: the train state and the sampler's state, if it has any."""
        packed = sampler.state()
        return {**state, SAMPLER_STATE: packed} if packed else state

    @staticmethod
    def restored_state(restored: PyTree, sampler: Sampler) -> PyTree:
        """The train state of a restored checkpoint (checkpoint_target's tree); the sampler gets its part."""
        state = dict(restored)
        sampler.load(state.pop(SAMPLER_STATE, {}))
        return state


def make_sampler(config: ml_collections.ConfigDict, source: Source, local_shards: int = 1) -> Sampler:
    """The configured sampler over `source` (registry SAMPLERS, `sampling.name`)."""
    cls = SAMPLERS.get(str(config.sampling.name))
    settings = settings_of(config, cls.Settings) if cls.Settings is not None else None
    context = SamplerContext(
        seed=int(config.seed),
        batch_size=int(config.batch_size),
        dataset_size=len(source),
        steps_per_epoch=len(source) // int(config.batch_size),
        embed_dim=int(config.model.embed_dim),
        local_shards=int(local_shards),
        block=int(source.block),
    )
    assert context.block == 1 or cls.keeps_blocks, 'the checks refuse a sampler that would split blocks'
    return cls(settings, context)


def pipeline(
    config: ml_collections.ConfigDict, source: Source, sampler: Sampler, process_index: int = 0, process_count: int = 1
) -> TrainPipeline:
    """The training pipeline of `config` over `source` in `sampler`'s order."""
    return TrainPipeline(
        source,
        sampler,
        settings_of(config, DataSettings),
        seed=int(config.seed),
        batch_size=int(config.batch_size),
        image_size=int(config.model.image_size),
        max_text_len=int(config.model.max_text_len),
        process_index=process_index,
        process_count=process_count,
    )


def train_inputs(
    config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1, local_shards: int = 1
) -> TrainInputs:
    """The training source (`data.name`'s 'train' split), its sampler and this process's pipeline."""
    source = source_plugin(config, str(config.data.name)).open('train')
    sampler = make_sampler(config, source, local_shards)
    return TrainInputs(source, sampler, pipeline(config, source, sampler, process_index, process_count))


def build(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None, derived: Derived | None = None
) -> Setup:
    """Everything but the state itself (see Setup.init_state), allocating nothing on the devices.

    Runs the config checks first (checks.check_config) unless `derived` says they ran.
    """
    devices = list(devices if devices is not None else jax.devices())
    derived = derived if derived is not None else check_config(config, len(devices))
    mesh = parallel.make_mesh(derived.mesh_sizes, devices)
    rules = parallel.logical_rules(config.mesh.rules)
    model = state_lib.create_model(config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *state_lib.dummy_inputs(model.config))['params'])
    check_shapes(config, model, boxed, derived)
    optim_settings = settings_of(config, OptimSettings)
    optimizer = optim.make_optimizer(optim_settings, int(config.total_steps))
    chain = RegulatorChain.from_config(config, regulator_context(config, derived))
    roles = chain.frozen_roles()
    trained = FrozenModel(model, state_lib.abstract_from_boxed(boxed, mesh, rules))
    frozen = frozen_models(roles, trained, config.model.to_dict(), mesh, rules)
    parts = ObjectiveParts(
        model=model,
        regulators=chain,
        frozen_models={role: spec.model for role, spec in frozen.items()},
        local_shards=derived.local_shards,
        batch_size=int(config.batch_size),
        total_steps=int(config.total_steps),
        steps_per_epoch=derived.steps_per_epoch,
    )
    objective = OBJECTIVES.get(str(config.objective)).build(config, parts)
    abstract_state, shardings = state_lib.state_shardings(config.seed, model, optimizer, objective, mesh, rules)
    return Setup(
        config,
        derived,
        mesh,
        rules,
        model,
        optimizer,
        optim.learning_rate_schedule(optim_settings, int(config.total_steps)),
        objective,
        abstract_state,
        shardings,
        frozen,
        roles,
    )
