"""Ground-truth diagnostics of the regulators, computed inside the train step.

On the built-in shapes world every caption carries a spec of what it claims and every
image its scene, so the truth of each in-batch negative is known: an off-diagonal
pair (image i, caption j) is a false negative when caption j is true of image i.
These metrics say how often that happens and how well each regulator treats it.

Means whose set is empty in a batch (no false negative, nothing converted) are NaN;
the pooled counts are logged beside them so runs can be averaged as sum / sum.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.data.synthetic import captions_true_of_scenes  # numpy/jax.numpy only: no TensorFlow
from vlp_jax.objectives.regulators import conversion_stats, srcl_weight_stats


def false_negative_mask_i2t(caption_spec: jax.Array, scene: jax.Array) -> jax.Array:
    """bool [B, B] in the i2t layout (rows images, columns captions): j != i and caption j is true of image i.

    The t2i mask is its transpose. The diagonal is never a false negative, even when
    caption noise made the paired caption false of its own image.
    """
    true_of = captions_true_of_scenes(caption_spec, scene, xp=jnp)   # [captions, images]
    n = true_of.shape[0]
    return true_of.T & ~jnp.eye(n, dtype=bool)


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


def _cosmo_metrics(infos: dict[str, dict[str, jax.Array]], masks: tuple[jax.Array, jax.Array],
                   batch_size: int) -> dict[str, jax.Array]:
    """Precision/recall of converted pairs against the truth, pooled over both directions."""
    stats = [conversion_stats(infos[name]['hardest'], infos[name]['converted'], mask)
             for name, mask in zip(('i2t', 't2i'), masks)]
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


def ground_truth_metrics(caption_spec: jax.Array, scene: jax.Array, aux: dict[str, Any]) -> dict[str, jax.Array]:
    """All diagnostics for one batch; `aux` is what `apply_regulators` returned besides the pair."""
    fn_i2t = false_negative_mask_i2t(caption_spec, scene)
    n = fn_i2t.shape[0]
    count = jnp.sum(fn_i2t)
    metrics = {'train/false_negative_fraction': _safe_ratio(count, n * (n - 1)),
               'train/false_negative_count': count}
    masks = (fn_i2t, fn_i2t.T)
    if 'srcl' in aux:
        metrics.update(_srcl_metrics(aux['srcl'], masks))
    if 'cosmo' in aux:
        metrics.update(_cosmo_metrics(aux['cosmo'], masks, n))
    return metrics
