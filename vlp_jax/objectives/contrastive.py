"""The one contrastive loss every method in vlp_jax uses.

For anchors a_i and candidates c_j (L2-normalised) and logit scale t:

    z_ij   = t * <a_i, c_j>
    loss_i = - sum_j y_ij * log_softmax_j(z_ij + log_w_ij)

The symmetric loss is the MEAN of the two directions, 0.5 * (L_i2t + L_t2i), as in
ALBEF and GRIT-VLP (SRCL's paper writes the sum; that is only a factor 2 on the loss).

`log_w` (additive log-weights on negatives, 0 on positives) and `y` (row-stochastic
targets) are what regulators change (SRCL, COSMO/MAFA, distillation); the loss never
knows which regulator produced them. Defaults (log_w = 0, y = identity) give InfoNCE.
The sigmoid (SigLIP) form takes the same inputs: label +1 where y > 0, and each
negative term weighted by exp(log_w).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Regulation(NamedTuple):
    """What regulators hand the loss for one direction; None means 'no change'."""

    log_w: jax.Array | None = None  # [B, C] additive log-weights (0 on positives); C = B without a queue
    y: jax.Array | None = None  # [B, C] row-stochastic targets


def _identity_targets(shape: tuple[int, ...], dtype) -> jax.Array:
    """Row i's positive is column i (the batch's own pair comes first among the candidates)."""
    return jnp.eye(shape[0], shape[1], dtype=dtype)


def softmax_direction_loss(logits: jax.Array, regulation: Regulation = Regulation()) -> jax.Array:
    """Mean over rows of -sum_j y_ij log_softmax(logits + log_w)_ij."""
    logits = logits.astype(jnp.float32)
    if regulation.log_w is not None:
        logits = logits + jax.lax.stop_gradient(regulation.log_w.astype(jnp.float32))
    y = regulation.y if regulation.y is not None else _identity_targets(logits.shape, logits.dtype)
    y = jax.lax.stop_gradient(y.astype(jnp.float32))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.sum(y * log_probs, axis=-1))


def sigmoid_direction_loss(logits: jax.Array, bias: jax.Array, regulation: Regulation = Regulation()) -> jax.Array:
    """SigLIP: -(1/B) sum_ij weight_ij * log sigmoid(label_ij * (z_ij + b)), label = +1 iff y_ij > 0."""
    logits = logits.astype(jnp.float32) + bias.astype(jnp.float32)
    y = regulation.y if regulation.y is not None else _identity_targets(logits.shape, logits.dtype)
    positive = jax.lax.stop_gradient(y) > 0
    labels = jnp.where(positive, 1.0, -1.0)
    weights = jnp.ones_like(logits)
    if regulation.log_w is not None:
        negative_weights = jnp.exp(jax.lax.stop_gradient(regulation.log_w.astype(jnp.float32)))
        weights = jnp.where(positive, 1.0, negative_weights)
    return -jnp.sum(weights * jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


def contrastive_loss(
    image_embed: jax.Array,
    text_embed: jax.Array,
    logit_scale: jax.Array,
    *,
    form: str = 'softmax',
    sigmoid_bias: jax.Array | None = None,
    i2t: Regulation = Regulation(),
    t2i: Regulation = Regulation(),
    stop_grad_keys: bool = False,
    consistency_weight: float = 0.0,
    image_candidates: jax.Array | None = None,
    text_candidates: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric loss over the global batch: 0.5 * (L_i2t + L_t2i), the mean of the two directions.

    Embeddings are the global [B, E] arrays (sharded over the batch); jit inserts the
    collectives. `i2t` regulates rows = images, `t2i` rows = texts. GRIT-VLP's options:
    `stop_grad_keys` (i2t logits see sg(texts), t2i logits sg(images)) and
    `consistency_weight` (softmax(i2t)_i pulled towards sg softmax(t2i)_i and back: `consistency_loss`).
    ALBEF's momentum model: `text_candidates` / `image_candidates` [C, E] replace the
    batch as the i2t / t2i keys (row i's positive is candidate i), C = B + queue.
    """
    image = image_embed.astype(jnp.float32)
    text = text_embed.astype(jnp.float32)
    if text_candidates is not None or image_candidates is not None:
        assert text_candidates is not None and image_candidates is not None, 'candidates come in pairs'
        assert not consistency_weight, 'the consistency term needs square logits'
        logits_i2t = logit_scale * jnp.einsum('ie,je->ij', image, text_candidates.astype(jnp.float32))
        logits_t2i = logit_scale * jnp.einsum('ie,je->ij', text, image_candidates.astype(jnp.float32))
    elif stop_grad_keys:
        logits_i2t = logit_scale * jnp.einsum('ie,je->ij', image, jax.lax.stop_gradient(text))
        logits_t2i = logit_scale * jnp.einsum('ie,je->ij', text, jax.lax.stop_gradient(image))
    else:
        logits_i2t = logit_scale * jnp.einsum('ie,je->ij', image, text)
        logits_t2i = logits_i2t.T
    if form == 'softmax':
        loss_i2t = softmax_direction_loss(logits_i2t, i2t)
        loss_t2i = softmax_direction_loss(logits_t2i, t2i)
    elif form == 'sigmoid':
        assert sigmoid_bias is not None, 'the sigmoid form needs the learnable bias'
        loss_i2t = sigmoid_direction_loss(logits_i2t, sigmoid_bias, i2t)
        loss_t2i = sigmoid_direction_loss(logits_t2i, sigmoid_bias, t2i)
    else:
        raise ValueError(f"loss form must be 'softmax' or 'sigmoid', got {form!r}")
    diagonal = jnp.arange(logits_i2t.shape[0])
    metrics = {
        'loss_i2t': loss_i2t,
        'loss_t2i': loss_t2i,
        'i2t_accuracy': jnp.mean(jnp.argmax(logits_i2t, axis=1) == diagonal),
        't2i_accuracy': jnp.mean(jnp.argmax(logits_t2i, axis=1) == diagonal),
    }
    loss = 0.5 * (loss_i2t + loss_t2i)
    if consistency_weight:
        consistency = consistency_loss(logits_i2t, logits_t2i)
        metrics['consistency'] = consistency
        loss = loss + consistency_weight * consistency
    return loss, metrics


def consistency_loss(logits_i2t: jax.Array, logits_t2i: jax.Array) -> jax.Array:
    """GRIT-VLP's ITC consistency, the value its official code reports: the mean of two cross-entropies,
    0.5 * (mean_i H(sg p_t2i_i, p_i2t_i) + mean_i H(sg p_i2t_i, p_t2i_i)), H(q, p) = -sum_j q_j log p_j.

    Official (models/model_pretrain_GRIT_VLP.py): "loss_c_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1)*
    F.softmax(sim_t2i_sg, dim=1), dim=1).mean()", the same for t2i, and "loss_ita = (loss_i2t+loss_t2i)/2
    + 0.2* (loss_c_i2t+loss_c_t2i)/2". The gradient is that of the KL (the targets' entropy is a constant).
    """
    log_p_i2t = jax.nn.log_softmax(logits_i2t.astype(jnp.float32), axis=-1)
    log_p_t2i = jax.nn.log_softmax(logits_t2i.astype(jnp.float32), axis=-1)

    def cross_entropy(target_log_p, log_p):
        target = jnp.exp(jax.lax.stop_gradient(target_log_p))
        return -jnp.mean(jnp.sum(target * log_p, axis=-1))

    return 0.5 * (cross_entropy(log_p_t2i, log_p_i2t) + cross_entropy(log_p_i2t, log_p_t2i))


def local_contrastive_loss(
    image_embed: jax.Array, text_embed: jax.Array, logit_scale: jax.Array, num_shards: int, **options
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRIT-VLP's per-device negatives: the loss within each of `num_shards` contiguous batch
    shards (the mesh's batch shards), averaged. Regulations are not supported here."""
    assert 'i2t' not in options and 't2i' not in options, 'regulators need global negatives'
    batch = image_embed.shape[0]
    assert batch % num_shards == 0, (batch, num_shards)
    shard = lambda x: x.reshape(num_shards, batch // num_shards, *x.shape[1:])
    losses, metrics = jax.vmap(lambda v, t: contrastive_loss(v, t, logit_scale, **options))(
        shard(image_embed), shard(text_embed)
    )
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)
