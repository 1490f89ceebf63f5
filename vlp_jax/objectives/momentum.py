"""ALBEF's momentum model: EMA params, a queue of momentum features, and distillation targets.

The momentum model is an exponential moving average of *all* the trained params (towers,
projections, fusion layers, heads), kept in the objective's `extra` state beside a ring
buffer of the momentum embeddings of past batches. With it, ITC (as in ALBEF, MoCo-style):

- anchors are the online embeddings of the batch; candidates are the momentum
  embeddings of the batch, then the queue (so [B, B + Q] logits, no gradient through keys);
- empty queue slots (before the queue has filled once) are masked out of the loss,
  where ALBEF fills its queue with random unit vectors;
- targets mix in the momentum model's own softmax over the same candidates:
  y = alpha * softmax(t * sim_m) + (1 - alpha) * y, alpha ramped from 0 over the first
  epoch (ALBEF). The mix is one more regulation of the general loss's `y`;
- regulators that need [B, B] statistics (SRCL weights, COSMO's top-2 and its
  conversions, smoothing) see only the batch columns, from the online cosines as without
  a queue; queue columns get log-weight 0 (weight 1) and target 0 before distillation.
  The reference and discriminator models cannot embed the queue's examples (their pixels
  and tokens are gone), which is why the queue is left unregulated.

The EMA runs after every optimizer update, so the momentum params that embed step k's
batch are EMA(m, params_k), as in ALBEF (which updates them first thing in step k).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vlp_jax.config import at_least, in_range, key
from vlp_jax.objectives.contrastive import Regulation
from vlp_jax.objectives.regulators import MASKED_LOG_WEIGHT, Pair

PyTree = Any
MOMENTUM_PARAMS = 'momentum'
IMAGE_QUEUE = 'image_queue'
TEXT_QUEUE = 'text_queue'
QUEUE_POINTER = 'queue_pointer'  # next row to overwrite
QUEUE_COUNT = 'queue_count'  # rows filled so far (saturates at the queue size)


@dataclasses.dataclass(frozen=True)
class MomentumSettings:
    """ALBEF's momentum model: EMA copies of all params, their features queued as extra ITC candidates,
    and distillation: targets y = alpha * softmax(sim_momentum) + (1 - alpha) * y."""

    enabled: bool = key(False, 'use the momentum model (objective albef)')
    decay: float = key(
        0.995, 'EMA: m <- decay * m + (1 - decay) * params, after every update', check=in_range(0, 1, high_open=True)
    )
    distill_alpha: float = key(0.4, "ALBEF's distillation weight alpha; 0 turns distillation off", check=in_range(0, 1))
    alpha_ramp_steps: int = key(
        -1, 'alpha rises linearly from 0 over these steps (-1 = the first epoch, as ALBEF)', check=at_least(-1)
    )
    queue_size: int = key(
        0,
        'momentum features of past batches kept as ITC candidates (ALBEF: 65,536; a multiple of batch_size)',
        check=at_least(0),
    )


@dataclasses.dataclass(frozen=True)
class Momentum:
    """The momentum model as the step runs it: its settings with the ramp resolved."""

    decay: float
    distill_alpha: float
    ramp_steps: int
    queue_size: int

    @classmethod
    def of(cls, settings: MomentumSettings, steps_per_epoch: int) -> Momentum | None:
        if not settings.enabled:
            return None
        ramp = steps_per_epoch if settings.alpha_ramp_steps == -1 else settings.alpha_ramp_steps
        return cls(settings.decay, settings.distill_alpha, ramp, settings.queue_size)

    def alpha(self, step: jax.Array) -> jax.Array:
        """ALBEF's distillation weight: alpha * min(1, step / ramp_steps)."""
        if self.ramp_steps <= 0:
            return jnp.asarray(self.distill_alpha, jnp.float32)
        ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / self.ramp_steps)
        return self.distill_alpha * ramp


def init_momentum_extra(params: PyTree, queue_size: int, embed_dim: int) -> dict[str, Any]:
    """The momentum model starts as a copy of the params (boxed leaves keep their logical axes)."""
    return {
        MOMENTUM_PARAMS: jax.tree.map(lambda x: x, params),
        IMAGE_QUEUE: jnp.zeros((queue_size, embed_dim), jnp.float32),
        TEXT_QUEUE: jnp.zeros((queue_size, embed_dim), jnp.float32),
        QUEUE_POINTER: jnp.zeros((), jnp.int32),
        QUEUE_COUNT: jnp.zeros((), jnp.int32),
    }


def ema(momentum: PyTree, params: PyTree, decay: float) -> PyTree:
    """m <- decay * m + (1 - decay) * params, leaf by leaf, in the momentum params' dtype."""
    return jax.tree.map(lambda m, p: (decay * m + (1.0 - decay) * p).astype(m.dtype), momentum, params)


def enqueue(extra: dict[str, Any], image_embed: jax.Array, text_embed: jax.Array) -> dict[str, Any]:
    """Writes a batch of momentum embeddings over the oldest queue rows (a ring buffer).

    The queue size is a multiple of the batch (validated), so a batch never wraps.
    """
    queue_size = extra[IMAGE_QUEUE].shape[0]
    if queue_size == 0:
        return extra
    batch = image_embed.shape[0]
    assert queue_size % batch == 0, (queue_size, batch)
    pointer = extra[QUEUE_POINTER]
    write = lambda queue, rows: jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype), (pointer, 0))
    return {
        **extra,
        IMAGE_QUEUE: write(extra[IMAGE_QUEUE], image_embed),
        TEXT_QUEUE: write(extra[TEXT_QUEUE], text_embed),
        QUEUE_POINTER: (pointer + batch) % queue_size,
        QUEUE_COUNT: jnp.minimum(extra[QUEUE_COUNT] + batch, queue_size),
    }


class Candidates(NamedTuple):
    """ITC's candidates with a momentum model: [B + Q, E] each; `valid` [B + Q] masks empty queue slots."""

    image: jax.Array  # t2i candidates: momentum image embeddings of the batch, then the image queue
    text: jax.Array  # i2t candidates: momentum text embeddings of the batch, then the text queue
    valid: jax.Array
    image_anchor: jax.Array  # the momentum embeddings of the batch's own images (distillation's rows)
    text_anchor: jax.Array


def candidates(extra: dict[str, Any], image_m: jax.Array, text_m: jax.Array) -> Candidates:
    batch, queue_size = image_m.shape[0], extra[IMAGE_QUEUE].shape[0]
    image_m, text_m = jax.lax.stop_gradient(image_m), jax.lax.stop_gradient(text_m)
    valid = jnp.concatenate([jnp.ones((batch,), bool), jnp.arange(queue_size) < extra[QUEUE_COUNT]])
    return Candidates(
        image=jnp.concatenate([image_m, extra[IMAGE_QUEUE].astype(image_m.dtype)]),
        text=jnp.concatenate([text_m, extra[TEXT_QUEUE].astype(text_m.dtype)]),
        valid=valid,
        image_anchor=image_m,
        text_anchor=text_m,
    )


def _pad_direction(regulation: Regulation, batch: int, valid: jax.Array) -> Regulation:
    """[B, B] -> [B, B + Q]: queue columns get log-weight 0 (MASKED where empty) and target 0."""
    width = valid.shape[0]
    column_mask = jnp.where(valid, 0.0, MASKED_LOG_WEIGHT).astype(jnp.float32)
    log_w = jnp.broadcast_to(column_mask, (batch, width))
    if regulation.log_w is not None:
        log_w = log_w.at[:, :batch].set(regulation.log_w.astype(jnp.float32))
    y = jnp.eye(batch, width, dtype=jnp.float32)
    if regulation.y is not None:
        y = jnp.zeros((batch, width), jnp.float32).at[:, :batch].set(regulation.y.astype(jnp.float32))
    return Regulation(log_w=log_w, y=y)


def distilled_regulation(
    pair: Pair, cands: Candidates, logit_scale: jax.Array, alpha: jax.Array
) -> tuple[Pair, dict[str, jax.Array]]:
    """The batch's (i2t, t2i) regulations padded to the candidates, then mixed with the momentum targets.

    y = alpha * softmax(t * sim_m + mask) + (1 - alpha) * y, where sim_m are the momentum
    anchors' cosines to the candidates and `mask` removes empty queue slots.
    """
    batch = cands.image_anchor.shape[0]
    scale = jax.lax.stop_gradient(logit_scale).astype(jnp.float32)
    out = []
    for regulation, anchors, keys in zip(pair, (cands.image_anchor, cands.text_anchor), (cands.text, cands.image)):
        padded = _pad_direction(regulation, batch, cands.valid)
        sim_m = jnp.einsum('ie,je->ij', anchors.astype(jnp.float32), keys.astype(jnp.float32))
        soft = jax.nn.softmax(scale * sim_m + jnp.where(cands.valid, 0.0, MASKED_LOG_WEIGHT), axis=-1)
        y = alpha * soft + (1.0 - alpha) * padded.y
        out.append(Regulation(log_w=padded.log_w, y=jax.lax.stop_gradient(y)))
    return (out[0], out[1]), {'train/momentum/alpha': jnp.asarray(alpha, jnp.float32)}
