"""AdamW with linear warmup + cosine decay, global-norm clipping and a decay mask.

Weight decay applies to matrices (kernels, embeddings) only: biases, norm scales,
the temperature and the sigmoid bias are scalars/vectors and are never decayed.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

MIN_DECAYED_NDIM = 2  # parameters with fewer dims (biases, norm scales, temperature) are not decayed


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),
        end_value=config.lr * config.min_lr_ratio,
    )


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay (matrices), False for vectors and scalars."""
    return jax.tree.map(lambda p: p.ndim >= MIN_DECAYED_NDIM, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    parts = []
    if config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate=learning_rate_schedule(config),
            b2=config.adam_b2,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts)
