"""The train state pytree and its sharded initialisation.

State is a plain dict so orbax saves it as-is: params, opt_state, the objective's
extra state (momentum params, queues; {} for most objectives), step, and the RNG as
raw key data (the step folds the step number into it: steps.step_rng). Shapes and
shardings are derived under `jax.eval_shape` from the logical axis names the model
declares, then the real state is created directly in those shardings (no host copy of
the full model is ever made).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.models.vlp import VLPConfig, VLPModel, model_config_from_dict
from vlp_jax.objectives.base import Objective

PARAMS_INIT_STREAM = 0  # fold_in ids separate the init key from the training key
TRAIN_STREAM = 1
EXTRA_INIT_STREAM = 2


def create_model(config: ml_collections.ConfigDict) -> VLPModel:
    return VLPModel(model_config_from_dict(config.model))


def dummy_inputs(model: VLPConfig, batch: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs of the model's shapes: what init traces."""
    size, length = model.vision.image_size, model.text.max_len
    return (
        jnp.zeros((batch, size, size, 3), jnp.float32),
        jnp.zeros((batch, length), jnp.int32),
        jnp.ones((batch, length), jnp.int32),
    )


def abstract_from_boxed(boxed: Any, mesh: Mesh, rules) -> Any:
    """Boxed params under eval_shape -> ShapeDtypeStructs carrying their shardings."""
    shardings = parallel.shardings_from_logical(boxed, mesh, rules)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.meta.unbox(boxed),
        shardings,
    )


def abstract_params(model: VLPModel, mesh: Mesh, rules) -> Any:
    """A model's params as ShapeDtypeStructs carrying their shardings (a frozen model's restore target)."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config))['params'])
    return abstract_from_boxed(boxed, mesh, rules)


def _boxed_state(seed: int, model: VLPModel, optimizer: optax.GradientTransformation, objective: Objective) -> Any:
    root = jax.random.key(int(seed))
    variables = model.init(jax.random.fold_in(root, PARAMS_INIT_STREAM), *dummy_inputs(model.config))
    params = variables['params']
    return {
        'params': params,
        'opt_state': optimizer.init(params),
        'extra': objective.init_extra(params, jax.random.fold_in(root, EXTRA_INIT_STREAM)),
        'step': jnp.zeros((), jnp.int32),
        'rng': jax.random.key_data(jax.random.fold_in(root, TRAIN_STREAM)),
    }


def state_shardings(
    seed: int,
    model: VLPModel,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    mesh: Mesh,
    rules,
) -> tuple[Any, Any]:
    """(abstract state with shardings, sharding tree) without allocating anything."""
    boxed = jax.eval_shape(lambda: _boxed_state(seed, model, optimizer, objective))
    shardings = parallel.shardings_from_logical(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.meta.unbox(boxed),
        shardings,
    )
    return abstract, shardings


def init_state(
    seed: int,
    model: VLPModel,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    mesh: Mesh,
    rules,
    shardings: Any,
) -> Any:
    """The initial state, created inside jit directly in its target shardings."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jax.jit(
            lambda: nn.meta.unbox(_boxed_state(seed, model, optimizer, objective)), out_shardings=shardings
        )()
