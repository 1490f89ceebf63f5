"""Frozen models by role: resolved from the config once, outside jit; asked inside the step.

A regulator that reads a frozen model declares a role (Regulator.frozen_roles): SRCL's
'reference' (its cosines are the prior similarity), COSMO/MAFA's 'discriminator' (it scores
the hardest negatives). Each role is a vlp_jax checkpoint path named by a config key. Roles
naming the same path share one model: it is loaded once and asked once per step. Under jit
the step receives `frozen` = {role: params} and never sees a path.

A frozen model has its own architecture: train saves the model config beside every
checkpoint and `frozen_models` builds that model (a fusion checkpoint can judge a dual
encoder's batches, and the reverse); a checkpoint without one is taken to have the
trained model's. A frozen model answers what its role asks: 'cosine' = its own unit-norm
(image, text) embeddings of the batch (any kind; the loss forms their cosines tile by tile);
'itm' = the match probability its ITM head gives the pairs a regulator names (a fusion model;
MAFA's discriminator).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
COSINE = 'cosine'
ITM = 'itm'


class FrozenModelError(Exception):
    """A frozen model's checkpoint cannot be used; the message names the config key and path."""


@dataclasses.dataclass(frozen=True)
class FrozenRole:
    role: str
    config_key: str
    path: str
    answer: str  # what the role asks the model: COSINE | ITM


@dataclasses.dataclass(frozen=True)
class FrozenModel:
    """A frozen model's architecture and its params' restore target (ShapeDtypeStructs with shardings)."""

    model: Any  # VLPModel
    abstract_params: PyTree


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


def frozen_models(
    roles: tuple[FrozenRole, ...], trained: FrozenModel, trained_model_config: Mapping[str, Any], mesh, rules
) -> dict[str, FrozenModel]:
    """{role: FrozenModel}: the architecture each checkpoint was written with, or the trained model's
    when the checkpoint does not say (or cannot be read yet: `load_frozen` reports that)."""
    from vlp_jax import state as state_lib
    from vlp_jax.checkpointing import read_model_config
    from vlp_jax.models.vlp import VLPModel, model_config_from_dict

    owner = shared_models(roles)
    built: dict[str, FrozenModel] = {}
    for role in roles:
        if owner[role.role] != role.role:
            continue
        stored = read_model_config(role.path)
        if stored is None or stored == dict(trained_model_config):
            built[role.role] = trained
        else:
            model = VLPModel(model_config_from_dict(stored))
            built[role.role] = FrozenModel(model, state_lib.abstract_params(model, mesh, rules))
    return {role.role: built[owner[role.role]] for role in roles}


def load_frozen(
    roles: tuple[FrozenRole, ...], models: Mapping[str, FrozenModel], trained_model: Any
) -> dict[str, PyTree]:
    """{role: params} restored into each role's shardings; a checkpoint named by several roles is read
    once and its arrays reused. A model that cannot read the trained model's batches (image size, text
    length) or answer its role's question is refused here, before anything is written."""
    from vlp_jax.checkpointing import CheckpointError, restore_params_from

    owner = shared_models(roles)
    loaded: dict[str, PyTree] = {}
    wanted = trained_model.config
    for role in roles:
        config = models[role.role].model.config
        for what, have, need in (
            ('image size', config.vision.image_size, wanted.vision.image_size),
            ('text length', config.text.max_len, wanted.text.max_len),
        ):
            if have != need:
                raise FrozenModelError(
                    f'{role.config_key} = {role.path!r} was trained with {what} {have}, but this run feeds it '
                    f'batches of {what} {need}; name a checkpoint trained on inputs of this size.'
                )
        kind = config.kind
        if role.answer == ITM and kind != 'fusion':
            raise FrozenModelError(
                f"{role.config_key} = {role.path!r} is a {kind!r} model, but the 'itm' discriminator needs a "
                "fusion checkpoint (model.kind='fusion'); name one, or use loss.cosmo.discriminator='cosine'."
            )
        if owner[role.role] != role.role:
            continue
        try:
            loaded[role.role] = restore_params_from(role.path, models[role.role].abstract_params)
        except CheckpointError as error:
            keys = ' and '.join(r.config_key for r in roles if owner[r.role] == role.role)
            raise FrozenModelError(f'{keys} = {role.path!r}: {error}') from error
    return {role.role: loaded[owner[role.role]] for role in roles}


def image_text_cosines(image_embed: jax.Array, text_embed: jax.Array) -> jax.Array:
    """[B, B] cosines of unit-norm embeddings (rows images), float32, no logit scale, no gradient."""
    sims = jnp.einsum('ie,je->ij', image_embed.astype(jnp.float32), text_embed.astype(jnp.float32))
    return jax.lax.stop_gradient(sims)


def itm_match_probability(
    model, params: PyTree, text_tokens: jax.Array, text_mask: jax.Array, image_tokens: jax.Array
) -> jax.Array:
    """[P] probability that each (text, image) pair matches, by a fusion model's ITM head, no gradient."""
    fused = model.apply({'params': params}, text_tokens, text_mask, image_tokens, method='fuse')
    logits = model.apply({'params': params}, fused, method='itm_logits')
    return jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1])


def ask(model, role: FrozenRole, params: PyTree, batch: Mapping[str, jax.Array]) -> Any:
    """What `role` asks its frozen model about the batch, no gradient.

    COSINE: the model's unit-norm (image, text) embeddings [B, E] (float32). ITM: a function
    (j_i2t, j_t2i) -> (q_i2t, q_t2i) scoring, for each image i, the pair (image i, text j_i2t[i]) and,
    for each text i, (image j_t2i[i], text i): a regulator names the pairs (COSMO: the hardest
    negatives), so only 2B pairs are fused, not B^2.
    """
    params = jax.lax.stop_gradient(params)
    if role.answer == COSINE:
        image = model.apply({'params': params}, batch['image'], method='encode_images')
        text = model.apply({'params': params}, batch['text_ids'], batch['text_mask'], method='encode_texts')
        return jax.lax.stop_gradient(image.astype(jnp.float32)), jax.lax.stop_gradient(text.astype(jnp.float32))
    assert role.answer == ITM, role.answer
    out = model.apply({'params': params}, batch['image'], batch['text_ids'], batch['text_mask'])
    texts, images, mask = out['text_tokens'], out['image_tokens'], batch['text_mask']

    def score(j_i2t: jax.Array, j_t2i: jax.Array) -> tuple[jax.Array, jax.Array]:
        q_i2t = itm_match_probability(model, params, texts[j_i2t], mask[j_i2t], images)
        q_t2i = itm_match_probability(model, params, texts, mask, images[j_t2i])
        return q_i2t, q_t2i

    return score
