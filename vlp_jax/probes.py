"""Probes: ground-truth diagnostics that run inside the train step when the batch carries the truth.

A data source that knows which caption is true of which image (the built-in shapes
world) hands the step a `GroundTruthProbe`: the batch keys it reads and a function
batch -> [B, B] false-negative mask (i2t layout: rows images, columns captions). The
step runs it on every batch and these metrics say how often false negatives occur and
how well each regulator treats them. The probe's keys are never read by a loss.

Means whose set is empty in a batch (no false negative, nothing converted) are NaN;
the pooled counts are logged beside them so runs can be averaged as sum / sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.objectives.regulators import conversion_stats, srcl_weight_stats


@dataclasses.dataclass(frozen=True)
class GroundTruthProbe:
    batch_keys: tuple[str, ...]
    false_negatives: Callable[[Mapping[str, jax.Array]], jax.Array]  # batch -> bool [B, B], i2t layout

    def __call__(self, batch: Mapping[str, jax.Array], regulation: Mapping[str, Any]) -> dict[str, jax.Array]:
        return ground_truth_metrics(self.false_negatives(batch), regulation)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    num, den = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)


def _srcl_metrics(aux: dict[str, Any], masks: tuple[jax.Array, jax.Array]) -> dict[str, jax.Array]:
    """Mean SRCL weight on false vs true negatives, pooled over both directions."""
    stats = [srcl_weight_stats(log_w, mask) for log_w, mask in zip(aux['log_w'], masks)]
    out = {'train/srcl/alpha': aux['alpha']}
    for kind in ('false_negative', 'true_negative'):
        count = sum(s[f'count_{kind}'] for s in stats)
        total = sum(jnp.where(s[f'count_{kind}'] > 0, s[f'weight_{kind}'], 0.0) * s[f'count_{kind}'] for s in stats)
        out[f'train/srcl/weight_{kind}'] = _safe_ratio(total, count)
    return out


def _cosmo_metrics(
    infos: dict[str, dict[str, jax.Array]], masks: tuple[jax.Array, jax.Array], batch_size: int
) -> dict[str, jax.Array]:
    """Precision/recall of converted pairs against the truth, pooled over both directions."""
    stats = [
        conversion_stats(infos[name]['hardest'], infos[name]['converted'], mask)
        for name, mask in zip(('i2t', 't2i'), masks)
    ]
    true_pos = sum(s['num_true_positive'] for s in stats)
    converted = sum(s['num_converted'] for s in stats)
    hardest_fn = sum(s['num_hardest_fn'] for s in stats)
    return {
        'train/cosmo/precision': _safe_ratio(true_pos, converted),
        'train/cosmo/recall': _safe_ratio(true_pos, hardest_fn),
        'train/cosmo/converted_fraction': _safe_ratio(converted, 2 * batch_size),
        'train/cosmo/num_converted': converted,
        'train/cosmo/num_true_positive': true_pos,
        'train/cosmo/num_hardest_false_negative': hardest_fn,
    }


def ground_truth_metrics(fn_i2t: jax.Array, aux: Mapping[str, Any]) -> dict[str, jax.Array]:
    """All diagnostics for one batch from its false-negative mask; `aux` is what the regulators reported."""
    n = fn_i2t.shape[0]
    count = jnp.sum(fn_i2t)
    metrics = {'train/false_negative_fraction': _safe_ratio(count, n * (n - 1)), 'train/false_negative_count': count}
    masks = (fn_i2t, fn_i2t.T)
    if 'srcl' in aux and 'log_w' in aux['srcl']:  # the chunked loss keeps per-row statistics only
        metrics.update(_srcl_metrics(aux['srcl'], masks))
    if 'cosmo' in aux:
        metrics.update(_cosmo_metrics(aux['cosmo'], masks, n))
    return metrics
