"""Frozen models answer the chunked loss with embeddings, not [B, B] cosines: those are formed tile by tile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.objectives.frozen import COSINE, FrozenRole, ask

PyTree = Any


def ask_embeddings(model, role: FrozenRole, params: PyTree, batch: Mapping[str, jax.Array]) -> Any:
    """What the chunked loss needs from a frozen model (the dense path calls `frozen.ask`).

    'cosine' roles: the model's unit-norm (image, text) embeddings [B, E], no gradient: their [B, B]
    cosines are formed tile by tile. 'itm' roles: `frozen.ask`'s scoring function, which only needs
    the j1 indices.
    """
    if role.answer != COSINE:
        return ask(model, role, params, batch)
    params = jax.lax.stop_gradient(params)
    image = model.apply({'params': params}, batch['image'], method='encode_images')
    text = model.apply({'params': params}, batch['text_ids'], batch['text_mask'], method='encode_texts')
    return jax.lax.stop_gradient(image.astype(jnp.float32)), jax.lax.stop_gradient(text.astype(jnp.float32))
