"""ALBEF's retrieval fine-tuning with its momentum model (model_retrieval.py, `distill: True`): ITC against the
momentum keys of the batch and a queue of past ones, positives by image id over batch and queue, targets
distilled from the momentum model's own softmax.

    idx_all = cat([idx.t(), idx_queue]); sim_targets = eq(idx, idx_all) / row sum
    sim_i2t_targets = alpha * softmax(image_feat_m @ text_feat_m_all / temp) + (1 - alpha) * sim_targets
    loss_i2t = -sum(log_softmax(image_feat @ text_feat_m_all / temp) * sim_i2t_targets, 1).mean()

(and t2i the same way), then `_dequeue_and_enqueue(image_feat_m, text_feat_m, idx)`. The queue keeps the image
ids beside the embeddings, so a queued caption of an anchor's own image is a positive. Queue slots not yet
filled are masked out (ALBEF fills them with random unit vectors and ids at start). The EMA and the alpha ramp
are objectives/momentum.py's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.objectives.momentum import IMAGE_QUEUE, QUEUE_COUNT, QUEUE_POINTER, TEXT_QUEUE, enqueue
from vlp_jax.objectives.regulators import MASKED_LOG_WEIGHT

ID_QUEUE = 'id_queue'  # the image id of each queued (image, text) pair


def init_id_queue(queue_size: int) -> jax.Array:
    return jnp.full((queue_size,), -1, jnp.int32)


def enqueue_with_ids(extra: dict[str, Any], image_m: jax.Array, text_m: jax.Array, ids: jax.Array) -> dict[str, Any]:
    """The momentum embeddings and their image ids over the oldest queue rows (one pointer for all three)."""
    if extra[IMAGE_QUEUE].shape[0] == 0:
        return extra
    ids_queue = jax.lax.dynamic_update_slice(extra[ID_QUEUE], ids.astype(jnp.int32), (extra[QUEUE_POINTER],))
    return {**enqueue(extra, image_m, text_m), ID_QUEUE: ids_queue}


def momentum_itc(
    image_embed: jax.Array,
    text_embed: jax.Array,
    image_m: jax.Array,
    text_m: jax.Array,
    ids: jax.Array,
    extra: dict[str, Any],
    logit_scale: jax.Array,
    alpha: jax.Array,
) -> jax.Array:
    """ALBEF's distilled ITC of the online embeddings [B, E] against the momentum ones [B, E] + the queue."""
    batch, queue_size = image_m.shape[0], extra[IMAGE_QUEUE].shape[0]
    valid = jnp.concatenate([jnp.ones((batch,), bool), jnp.arange(queue_size) < extra[QUEUE_COUNT]])
    ids_all = jnp.concatenate([ids.astype(jnp.int32), extra[ID_QUEUE]])
    same = (ids[:, None] == ids_all[None, :]) & valid[None, :]
    targets = same.astype(jnp.float32) / jnp.sum(same, axis=1, keepdims=True)
    empty = jnp.where(valid, 0.0, MASKED_LOG_WEIGHT)[None, :]
    scale = logit_scale.astype(jnp.float32)
    keys = {
        'i2t': jax.lax.stop_gradient(jnp.concatenate([text_m, extra[TEXT_QUEUE]]).astype(jnp.float32)),
        't2i': jax.lax.stop_gradient(jnp.concatenate([image_m, extra[IMAGE_QUEUE]]).astype(jnp.float32)),
    }
    anchors = {'i2t': (image_embed, image_m), 't2i': (text_embed, text_m)}
    losses = []
    for direction, (online, momentum) in anchors.items():
        soft = jax.nn.softmax(jax.lax.stop_gradient(scale) * momentum.astype(jnp.float32) @ keys[direction].T + empty)
        y = jax.lax.stop_gradient(alpha * soft + (1.0 - alpha) * targets)
        log_p = jax.nn.log_softmax(scale * online.astype(jnp.float32) @ keys[direction].T + empty, axis=-1)
        losses.append(-jnp.mean(jnp.sum(y * log_p, axis=-1)))
    return (losses[0] + losses[1]) / 2
