"""loss.regulators and the blocks of those selected (loss.srcl, loss.cosmo, loss.smoothing)."""

from __future__ import annotations

import ml_collections

from vlp_jax.config import _require, srcl_needs_reference

REGULATORS = ('srcl', 'cosmo', 'smoothing')  # also the order they must be applied in
ALPHA_SHAPES = ('linear', 'cosine')
DISCRIMINATORS = ('cosine', 'itm')
COSMO_MIN_BATCH = 3  # an anchor needs a hardest and a second-hardest negative


def validate_loss(config: ml_collections.ConfigDict) -> None:
    """The regulators: names, order, and each one's block (only the blocks of those selected)."""
    loss = config.loss
    regulators = tuple(loss.get('regulators', ()))
    for name in regulators:
        _require(
            name in REGULATORS, f'config key loss.regulators has unknown regulator {name!r}; choose from {REGULATORS}.'
        )
    _require(
        len(set(regulators)) == len(regulators), f'config key loss.regulators lists a regulator twice: {regulators}.'
    )
    ordered = tuple(name for name in REGULATORS if name in regulators)
    _require(
        regulators == ordered,
        f'config key loss.regulators must be in the order {ordered} '
        f'(weights, then converted targets, then smoothing), got {regulators}.',
    )
    _require(
        not {'cosmo', 'smoothing'} <= set(regulators),
        "config key loss.regulators has both 'cosmo' and 'smoothing'; COSMO smooths its own targets, "
        "so drop 'smoothing' and set loss.cosmo.eps.",
    )
    sigmoid = loss.form == 'sigmoid'
    if 'srcl' in regulators:
        srcl = loss.srcl
        for key in ('alpha_start', 'alpha_end'):
            _require(0.0 <= srcl[key] <= 1.0, f'config key loss.srcl.{key} must be in [0, 1], got {srcl[key]}.')
        _require(
            srcl.alpha_shape in ALPHA_SHAPES,
            f'config key loss.srcl.alpha_shape must be one of {ALPHA_SHAPES}, got {srcl.alpha_shape!r}.',
        )
        _require(
            srcl.alpha_decay_start >= 0,
            f'config key loss.srcl.alpha_decay_start must be >= 0, got {srcl.alpha_decay_start}.',
        )
        _require(
            srcl.alpha_decay_end >= -1,
            f'config key loss.srcl.alpha_decay_end must be >= 0 (or -1 = total_steps), got {srcl.alpha_decay_end}.',
        )
        _require(srcl.tau_w > 0, f'config key loss.srcl.tau_w must be > 0, got {srcl.tau_w}.')
        _require(0.0 <= srcl.w_min < 1.0, f'config key loss.srcl.w_min must be in [0, 1) (0 = off), got {srcl.w_min}.')
        _require(
            not srcl_needs_reference(config) or srcl.reference_checkpoint,
            'config key loss.srcl.reference_checkpoint is empty but the alpha schedule uses the reference '
            'model (alpha_start or alpha_end > 0); pass a reference run, e.g. '
            '--config.loss.srcl.reference_checkpoint=workdirs/reference, or set both alphas to 0.',
        )
    if 'cosmo' in regulators:
        cosmo = loss.cosmo
        _require(
            cosmo.discriminator in DISCRIMINATORS,
            f'config key loss.cosmo.discriminator must be one of {DISCRIMINATORS}, got {cosmo.discriminator!r}.',
        )
        if cosmo.discriminator == 'itm':
            _require(
                0.0 <= cosmo.low <= cosmo.high <= 1.0,
                'config keys loss.cosmo.low and loss.cosmo.high are ITM match probabilities with the itm '
                f'discriminator and must satisfy 0 <= low <= high <= 1, got low={cosmo.low}, high={cosmo.high}.',
            )
        else:
            _require(
                -1.0 <= cosmo.low <= cosmo.high <= 1.0,
                'config keys loss.cosmo.low and loss.cosmo.high are cosine '
                f'thresholds and must satisfy -1 <= low <= high <= 1, got low={cosmo.low}, high={cosmo.high}.',
            )
        _require(
            config.model.get('kind', 'dual') != 'fusion' or loss.itm.negatives == 'hardest',
            "config key loss.itm.negatives must be 'hardest' with loss.regulators 'cosmo' on a fusion model: "
            "MAFA's ITM negatives are the mined j1 or j2 (METHODS.md).",
        )
        _require_smoothing('cosmo', cosmo.eps, 'smoothing_start_step', cosmo.smoothing_start_step)
        _require(
            bool(cosmo.reference_checkpoint),
            'config key loss.cosmo.reference_checkpoint is empty but the '
            'discriminator scores pairs with a frozen model; pass a trained run, e.g. '
            '--config.loss.cosmo.reference_checkpoint=workdirs/reference.',
        )
        _require(
            not (sigmoid and cosmo.eps > 0),
            "config key loss.cosmo.eps must be 0 with loss.form='sigmoid': "
            'the sigmoid loss treats every target > 0 as a positive, so smoothing would make all pairs positive.',
        )
        _require(
            config.batch_size >= COSMO_MIN_BATCH,
            f'config key batch_size must be >= {COSMO_MIN_BATCH} for COSMO (hardest and second-hardest negatives).',
        )
    if 'smoothing' in regulators:
        smoothing = loss.smoothing
        _require_smoothing('smoothing', smoothing.eps, 'start_step', smoothing.start_step)
        _require(
            not sigmoid,
            "config key loss.regulators has 'smoothing', which the sigmoid loss cannot take "
            "(it treats every target > 0 as a positive); use loss.form='softmax'.",
        )


def _require_smoothing(group: str, eps: float, start_key: str, start: int) -> None:
    """loss.GROUP's smoothing weight in [0, 1] and its start step (>= 0, or -1 = epoch 1's first step)."""
    _require(0.0 <= eps <= 1.0, f'config key loss.{group}.eps must be in [0, 1], got {eps}.')
    _require(
        start >= -1,
        f'config key loss.{group}.{start_key} must be >= 0 (or -1 = the first step of epoch 1), got {start}.',
    )
