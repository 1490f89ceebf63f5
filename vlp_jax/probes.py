"""Probes: ground-truth diagnostics that run inside the train step when the batch carries the truth.

A data source that knows which caption is true of which image (the built-in shapes
world) hands the step a `GroundTruthProbe`: the batch keys it reads and a function
batch -> [B, B] false-negative mask (i2t layout: rows images, columns captions). The
step runs it on every batch and these metrics say how often false negatives occur and
how well each regulator treats them (each regulator's `probe_metrics`, asked by the objective).
The probe's keys are never read by a loss.

Means whose set is empty in a batch (no false negative, nothing converted) are NaN;
the pooled counts are logged beside them so runs can be averaged as sum / sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GroundTruthProbe:
    batch_keys: tuple[str, ...]
    false_negatives: Callable[[Mapping[str, jax.Array]], jax.Array]  # batch -> bool [B, B], i2t layout


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    num, den = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)


def false_negative_metrics(fn_i2t: jax.Array) -> dict[str, jax.Array]:
    """How many of the batch's negatives are false negatives (the objective adds how its regulators treat them)."""
    n = fn_i2t.shape[0]
    count = jnp.sum(fn_i2t)
    return {'train/false_negative_fraction': _safe_ratio(count, n * (n - 1)), 'train/false_negative_count': count}
