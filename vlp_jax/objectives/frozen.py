"""Frozen models by role: resolved from the config once, outside jit; asked inside the step.

A regulator that reads a frozen model names a role: SRCL's 'reference' (its cosines
are the prior similarity), COSMO/MAFA's 'discriminator' (it scores the hardest
negatives). Each role is a vlp_jax checkpoint path in the config. Roles naming the same
path share one model: it is loaded once and asked once per step. Under jit the step
receives `frozen` = {role: params} and never sees a path.

A frozen model answers what its role asks: 'cosine' = the [B, B] image-text cosines of
its own embeddings; ITM match probabilities arrive with the fusion encoder.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import srcl_needs_reference

PyTree = Any
REFERENCE = 'reference'
DISCRIMINATOR = 'discriminator'
COSINE = 'cosine'


class FrozenModelError(Exception):
    """A frozen model's checkpoint cannot be used; the message names the config key and path."""


@dataclasses.dataclass(frozen=True)
class FrozenRole:
    role: str
    config_key: str
    path: str
    answer: str  # what the role asks the model: COSINE


def frozen_roles(config: ml_collections.ConfigDict) -> tuple[FrozenRole, ...]:
    """The frozen models the selected regulators read, in a fixed order."""
    regulators = tuple(config.loss.get('regulators', ()))
    roles = []
    if 'srcl' in regulators and srcl_needs_reference(config):
        roles.append(
            FrozenRole(REFERENCE, 'loss.srcl.reference_checkpoint', config.loss.srcl.reference_checkpoint, COSINE)
        )
    if 'cosmo' in regulators:
        roles.append(
            FrozenRole(
                DISCRIMINATOR,
                'loss.cosmo.reference_checkpoint',
                config.loss.cosmo.reference_checkpoint,
                config.loss.cosmo.discriminator,
            )
        )
    return tuple(roles)


def _canonical_checkpoint(path: str) -> str:
    """One name per checkpoint: a workdir, its checkpoints/ folder and its newest step folder are one model."""
    from vlp_jax.checkpointing import CheckpointError, resolve_step_dir

    absolute = pathlib.Path(path).absolute()
    try:
        return os.path.normpath(resolve_step_dir(absolute))
    except CheckpointError:  # missing or not a checkpoint: load_frozen reports it
        return os.path.normpath(absolute)


def shared_models(roles: tuple[FrozenRole, ...]) -> dict[str, str]:
    """role -> the first role naming the same checkpoint: whose loaded params it reuses."""
    first: dict[str, str] = {}
    return {role.role: first.setdefault(_canonical_checkpoint(role.path), role.role) for role in roles}


def shared_roles(roles: tuple[FrozenRole, ...]) -> dict[str, str]:
    """role -> the first role asking the same model the same question: whose answer it reuses."""
    first: dict[tuple[str, str], str] = {}
    return {role.role: first.setdefault((_canonical_checkpoint(role.path), role.answer), role.role) for role in roles}


def load_frozen(roles: tuple[FrozenRole, ...], abstract_params: PyTree) -> dict[str, PyTree]:
    """{role: params} restored into the shardings of `abstract_params` (a frozen model has the
    trained model's architecture); a checkpoint named by several roles is read once and its arrays reused."""
    from vlp_jax.checkpointing import CheckpointError, restore_params_from

    owner = shared_models(roles)
    loaded: dict[str, PyTree] = {}
    for role in roles:
        if owner[role.role] != role.role:
            continue
        try:
            loaded[role.role] = restore_params_from(role.path, abstract_params)
        except CheckpointError as error:
            keys = ' and '.join(r.config_key for r in roles if owner[r.role] == role.role)
            raise FrozenModelError(f'{keys} = {role.path!r}: {error}') from error
    return {role.role: loaded[owner[role.role]] for role in roles}


def image_text_cosines(image_embed: jax.Array, text_embed: jax.Array) -> jax.Array:
    """[B, B] cosines of unit-norm embeddings (rows images), float32, no logit scale, no gradient."""
    sims = jnp.einsum('ie,je->ij', image_embed.astype(jnp.float32), text_embed.astype(jnp.float32))
    return jax.lax.stop_gradient(sims)


def ask(model, role: FrozenRole, params: PyTree, batch: Mapping[str, jax.Array]) -> jax.Array:
    """What `role` asks its frozen model about the batch: [B, B], rows images, no gradient."""
    assert role.answer == COSINE, f'frozen answer {role.answer!r} is not available yet'
    params = jax.lax.stop_gradient(params)
    image = model.apply({'params': params}, batch['image'], method='encode_images')
    text = model.apply({'params': params}, batch['text_ids'], batch['text_mask'], method='encode_texts')
    return image_text_cosines(image, text)
