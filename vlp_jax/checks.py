"""Checks of a whole config that need the registries and the machine, before anything is built or written.

`vlp_jax.config` checks each key against the schema when a config is loaded; here come the
rules that span groups (batch and mesh arithmetic, what the objective supports), each plug-in's
own checks (regulators, sampler, source, eval sets), and the derived values (the training set's
size). All cheap: the checks that need the model's parameter shapes run in setup.build, where the
shapes are computed once. Every problem is one ConfigError naming the key and what to do.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from vlp_jax import optim
from vlp_jax.config import ConfigError, OptimSettings, check_values, settings_of
from vlp_jax.data import backend as input_backend
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.errors import DataError
from vlp_jax.derived import Derived, derive, source_plugin
from vlp_jax.evaluators.specs import DEFAULT, parse_all
from vlp_jax.layout import layout_problem
from vlp_jax.models import importers
from vlp_jax.models.import_checks import ImportWeightsError
from vlp_jax.models.vlp import VLPModel, model_config_from_dict
from vlp_jax.objectives.regulators import RegulatorChain, RegulatorContext
from vlp_jax.registry import EVALUATORS, OBJECTIVES, SAMPLERS, SOURCES


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def regulator_context(config: ml_collections.ConfigDict, derived: Derived) -> RegulatorContext:
    return RegulatorContext(
        batch_size=int(config.batch_size),
        total_steps=int(config.total_steps),
        steps_per_epoch=derived.steps_per_epoch,
        loss_form=str(config.loss.form),
        model_kind=str(config.model.kind),
    )


def check_config(config: ml_collections.ConfigDict, device_count: int) -> Derived:
    """Every cheap check, in order; returns the derived values (ConfigError on the first problem)."""
    check_values(config)
    batch = int(config.batch_size)
    model = config.model
    _require(
        (model.kind == 'fusion') == (model.text.fusion_layers > 0),
        f'config keys model.kind={model.kind!r} and model.text.fusion_layers={model.text.fusion_layers!r} disagree: '
        "'fusion' needs fusion_layers > 0 and 'dual' needs 0.",
    )
    try:
        model_config_from_dict(model)
    except ValueError as error:
        raise ConfigError(f'config group model.* cannot be built: {error}; change those model keys.') from None
    objective = OBJECTIVES.get(str(config.objective))
    _require(
        model.kind in objective.model_kinds,
        f'config key objective={config.objective!r} trains model.kind in {objective.model_kinds}, not '
        f"{model.kind!r}; set objective='albef' for a fusion model or 'contrastive' for a dual encoder.",
    )
    _require(
        config.loss.impl == 'dense' or objective.supports_chunked,
        f"config key loss.impl='chunked' is not supported by objective {config.objective!r} (its ITM choice and "
        "queue read [B, B] similarities); use loss.impl='dense'.",
    )
    _require(
        config.loss.impl == 'dense' or config.loss.negatives == 'global',
        "config key loss.impl='chunked' needs loss.negatives='global'; use loss.impl='dense' for local negatives.",
    )
    _require(
        config.loss.negatives == 'global' or objective.supports_local_negatives,
        f"config key loss.negatives must be 'global' with objective {config.objective!r} "
        '(ITM chooses its negatives from the global batch).',
    )
    _require(
        config.loss.negatives == 'global' or not tuple(config.loss.regulators),
        'loss.negatives=local cannot be combined with loss.regulators yet; use global negatives.',
    )
    micro = int(config.micro_batches)
    _require(
        micro == 1 or objective.supports_micro_batches,
        f'config key micro_batches > 1 (GradCache accumulation) is not supported by objective {config.objective!r}: '
        "ALBEF's ITM and MLM are not functions of the embeddings alone; set micro_batches=1.",
    )
    problem = objective.check(config)
    _require(problem is None, problem or '')
    rerank_k = int(config.eval.rerank_k)
    _require(
        rerank_k == 0 or model.kind == 'fusion',
        f"config key eval.rerank_k must be 0, or a positive int with model.kind='fusion' (ITM re-ranks), "
        f'got {rerank_k!r}.',
    )

    sampler = SAMPLERS.get(str(config.sampling.name))
    if sampler.Settings is not None:
        problem = sampler.check(settings_of(config, sampler.Settings), batch)
        _require(problem is None, problem or '')
    check_input_backend(config)  # before the source's own checks: without TF its set cannot be read at all
    source = source_plugin(config, str(config.data.name))
    problem = source.check()
    _require(problem is None, problem or '')
    block = source.train_block()
    _require(
        block == 1 or (sampler.keeps_blocks and batch % block == 0),
        f'data source data.name={config.data.name!r} keeps {block} consecutive examples in one batch (its twins), '
        f'which needs a batch_size divisible by {block} (got {batch}) and a sampler that keeps them together '
        f"(sampling.name={config.sampling.name!r} does not: use 'random'); or turn its twins off.",
    )
    wanted = [key for key in objective.batch_keys if key not in batch_spec.REQUIRED_KEYS]
    if wanted:  # a task's fields (labels, image ids, a second image): the training source must give them
        try:
            given = source.train_fields()
        except DataError as error:
            raise ConfigError(str(error)) from None
        missing = [key for key in wanted if key not in given]
        _require(
            not missing,
            f'config key objective={config.objective!r} reads the batch fields {missing}, which data source '
            f'data.name={config.data.name!r} does not give (it gives {list(given)}); choose the source of that '
            'task (docs/finetuning.md).',
        )
    for spec in parse_all(config.eval.sets):
        if spec.evaluator != DEFAULT:
            EVALUATORS.get(spec.evaluator)
            SOURCES.get(spec.source)

    derived = derive(config, device_count)
    shards = derived.batch_shards
    _require(
        batch % shards == 0,
        f'config key batch_size ({batch}) must be divisible by the {shards} batch shards '
        f'(mesh data x fsdp over {device_count} devices).',
    )
    local = int(config.mesh.local_shards)
    _require(
        local == -1 or (local >= 1 and batch % local == 0),
        f'config key mesh.local_shards must be -1 (one per batch shard) or a positive divisor of batch_size '
        f'({batch}), got {local}.',
    )
    _require(
        batch % (shards * micro) == 0,
        f"config key micro_batches must be a positive int dividing each batch shard's rows (batch_size "
        f'{batch} / {shards} batch shards), got {micro!r}.',
    )
    _require(
        config.eval.batch_size % shards == 0,
        f'config key eval.batch_size ({config.eval.batch_size}) must be divisible by the {shards} batch shards.',
    )
    _require(
        derived.steps_per_epoch >= 1,
        f'the training set ({derived.train_size} examples) is smaller than batch_size ({batch}); '
        'lower batch_size or use more data.',
    )
    RegulatorChain.from_config(config, regulator_context(config, derived)).check(batch)
    return derived


def check_input_backend(config: ml_collections.ConfigDict) -> None:
    """data.backend against this machine, and every source the run reads against the chosen input path."""
    backend = str(config.data.backend)
    problem = input_backend.problem(backend)
    _require(problem is None, problem or '')
    if input_backend.resolve(backend) != input_backend.NUMPY:
        return
    name = str(config.data.name)
    _require(not SOURCES.get(name).needs_tensorflow, input_backend.source_problem(backend, f'data.name={name!r}'))
    for spec in parse_all(config.eval.sets):
        if spec.evaluator != DEFAULT:
            where = f':{spec.where}' if spec.where else ''
            what = f'eval.sets entry {spec.evaluator}:{spec.source}{where}'
            _require(not SOURCES.get(spec.source).needs_tensorflow, input_backend.source_problem(backend, what))


def check_shapes(config: ml_collections.ConfigDict, model: VLPModel, boxed: Any, derived: Derived) -> None:
    """The checks that need the params' shapes (`boxed`: the model's params under jax.eval_shape): the layout,
    the optimizer's patterns, imported files' headers. Setup runs them where it computes the shapes."""
    problem = layout_problem(boxed, config.mesh.rules, derived.mesh_sizes)
    if problem is None:
        names = optim.param_names(boxed)
        problem = optim.optim_problem(settings_of(config, OptimSettings), names)
    if problem is not None:
        raise ConfigError(problem)
    inits = importers.configured_inits(config)
    if inits:
        try:
            importers.check_inits(inits, model.config, boxed)
        except ImportWeightsError as error:
            raise ConfigError(str(error)) from error


def validate(config: ml_collections.ConfigDict, device_count: int) -> Derived:
    """Every check a run makes before it builds anything: check_config, then the shape checks on the model's
    params built under jax.eval_shape (nothing allocated). For tools and tests; train and setup run the same."""
    import jax

    from vlp_jax import state as state_lib

    derived = check_config(config, device_count)
    model = state_lib.create_model(config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *state_lib.dummy_inputs(model.config))['params'])
    check_shapes(config, model, boxed, derived)
    return derived
