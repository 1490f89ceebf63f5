"""ALBEF's loss terms and momentum model: the checks that apply only with model.kind='fusion'.

Checks of loss.weights, loss.itm and loss.mlm belong in `validate_fusion_loss`: one place for ALBEF's terms.
"""

from __future__ import annotations

import ml_collections

from vlp_jax.config import _require


def validate_fusion_loss(config: ml_collections.ConfigDict) -> None:
    """loss.weights, loss.itm, loss.mlm: ALBEF's terms (model.kind='fusion')."""
    from vlp_jax.objectives.matching import NEGATIVE_CHOICES

    loss = config.loss
    for term in ('itc', 'itm', 'mlm'):
        _require(loss.weights[term] >= 0, f'config key loss.weights.{term} must be >= 0, got {loss.weights[term]}.')
    _require(
        loss.itm.negatives in NEGATIVE_CHOICES,
        f'config key loss.itm.negatives must be one of {NEGATIVE_CHOICES}, got {loss.itm.negatives!r}.',
    )
    _require(
        0.0 < loss.mlm.mask_ratio < 1.0, f'config key loss.mlm.mask_ratio must be in (0, 1), got {loss.mlm.mask_ratio}.'
    )
    max_predictions = loss.mlm.get('max_predictions', -1)
    _require(
        isinstance(max_predictions, int) and max_predictions >= -1,
        'config key loss.mlm.max_predictions must be -1 (derived from mask_ratio), 0 (every position) or a count '
        f'of tokens per caption, got {max_predictions!r}.',
    )
    _require(
        loss.negatives == 'global',
        "config key loss.negatives must be 'global' with model.kind='fusion' "
        '(ITM chooses its negatives from the global batch).',
    )
    validate_momentum(config)


def validate_momentum(config: ml_collections.ConfigDict) -> None:
    """loss.momentum and loss.queue_size: ALBEF's momentum model (fusion models only)."""
    loss = config.loss
    momentum = loss.get('momentum', None)
    enabled = bool(momentum is not None and momentum.enabled)
    queue = int(loss.get('queue_size', 0))
    _require(
        queue >= 0 and (queue == 0 or enabled),
        f'config key loss.queue_size ({queue}) needs loss.momentum.enabled=True (the queue holds momentum features); '
        'set it to 0 or enable the momentum model.',
    )
    _require(
        queue % config.batch_size == 0,
        f'config key loss.queue_size ({queue}) must be a multiple of batch_size ({config.batch_size}).',
    )
    if not enabled:
        return
    _require(0.0 <= momentum.decay < 1.0, f'config key loss.momentum.decay must be in [0, 1), got {momentum.decay}.')
    _require(
        0.0 <= momentum.distill_alpha <= 1.0,
        f'config key loss.momentum.distill_alpha must be in [0, 1], got {momentum.distill_alpha}.',
    )
    _require(
        momentum.alpha_ramp_steps >= -1,
        f'config key loss.momentum.alpha_ramp_steps must be -1 (one epoch) or >= 0, got {momentum.alpha_ramp_steps}.',
    )
    _require(
        loss.form == 'softmax',
        "config key loss.form must be 'softmax' with loss.momentum.enabled (distillation targets are soft).",
    )
    _require(
        not loss.stop_grad_keys and loss.consistency_weight == 0,
        'config keys loss.stop_grad_keys and loss.consistency_weight are GRIT-VLP options that do not apply with '
        'loss.momentum.enabled (the momentum keys carry no gradient; candidates are not square); turn them off.',
    )
