"""SRCL: each negative weighted by how dissimilar it is, so near-duplicates (false negatives) push less.

    s_ij     = alpha * exp(<v_ref_i, t_ref_j> / tau_w) + (1 - alpha) * exp(<v_i, t_j> / tau_w)
    log_w_ij = -log s_ij - log mean_{k != i} (1 / s_ik)       (log_w_ii = 0: weights average 1)

alpha anneals from trusting a frozen reference model to trusting the model itself (`srcl_alpha`).
The row statistic is a logsumexp of -log s over the row's negatives, which merges across tiles.
Negatives whose weight falls below `w_min` are removed (MASKED_LOG_WEIGHT).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.config import in_range, key
from vlp_jax.objectives.frozen import COSINE, FrozenRole
from vlp_jax.objectives.regulators.base import (
    DIRECTIONS,
    MASKED_LOG_WEIGHT,
    WEIGHTS,
    Regulator,
    Tile,
    TileTargets,
    off_diagonal,
    safe_ratio,
)
from vlp_jax.registry import REGULATORS

REFERENCE = 'reference'
ALPHA_SHAPES = ('linear', 'cosine')


@dataclasses.dataclass(frozen=True)
class SrclSettings:
    """SRCL's negative weights: the schedule of the reference model's share, the weights' temperature."""

    alpha_start: float = key(1.0, "the reference model's share of the similarity at the start", check=in_range(0, 1))
    alpha_end: float = key(0.0, '... and from alpha_decay_end on', check=in_range(0, 1))
    alpha_decay_start: int = key(
        0, 'step where alpha starts moving', check=lambda v: None if v >= 0 else 'must be >= 0'
    )
    alpha_decay_end: int = key(
        -1, 'step where it reaches alpha_end (-1 = total_steps)', check=lambda v: None if v >= -1 else 'must be >= -1'
    )
    alpha_shape: str = key('linear', "'linear' | 'cosine' between the two steps", choices=ALPHA_SHAPES)
    tau_w: float = key(
        1.0, "temperature of the weights' exp(sim / tau_w)", check=lambda v: None if v > 0 else 'must be > 0'
    )
    w_min: float = key(0.0, 'negatives with weight < w_min are dropped (0 = off)', check=in_range(0, 1, high_open=True))
    reference_checkpoint: str = key('', 'the frozen reference model: a workdir, its checkpoints/ or a step dir')

    @property
    def uses_reference(self) -> bool:
        """SRCL reads the reference model's similarities whenever its alpha schedule is above 0."""
        return max(self.alpha_start, self.alpha_end) > 0


def srcl_alpha(
    step: jax.Array,
    alpha_start: float = 1.0,
    alpha_end: float = 0.0,
    decay_start: int = 0,
    decay_end: int = 1,
    shape: str = 'linear',
) -> jax.Array:
    """SRCL's mixing weight of the reference model, annealed from trusting it to trusting the model.

    alpha_start before `decay_start`, alpha_end from `decay_end` on, linear or cosine in
    between. `decay_end <= decay_start` gives a step change at `decay_end`.
    """
    step = jnp.asarray(step, jnp.float32)
    if decay_end <= decay_start:
        progress = (step >= decay_end).astype(jnp.float32)
    else:
        progress = jnp.clip((step - decay_start) / (decay_end - decay_start), 0.0, 1.0)
    if shape == 'linear':
        fraction = progress
    elif shape == 'cosine':
        fraction = 0.5 * (1.0 - jnp.cos(math.pi * progress))
    else:
        raise ValueError(f"alpha schedule shape must be 'linear' or 'cosine', got {shape!r}")
    return alpha_start + (alpha_end - alpha_start) * fraction


def _is_python_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def srcl_log_s(sim_cur: jax.Array, sim_ref: jax.Array | None, alpha, tau_w: float) -> jax.Array:
    """log s_ij = log(alpha e^{ref/tau} + (1 - alpha) e^{cur/tau}), exact at alpha in {0, 1}."""
    cur = sim_cur / tau_w
    if sim_ref is None:
        return cur
    ref = sim_ref / tau_w
    if _is_python_number(alpha):  # static: no dead branch is traced
        if alpha >= 1.0:
            return ref
        if alpha <= 0.0:
            return cur
        return jnp.logaddexp(math.log(alpha) + ref, math.log1p(-alpha) + cur)
    alpha = jnp.asarray(alpha, jnp.float32)
    tiny = jnp.finfo(jnp.float32).tiny
    safe = jnp.clip(alpha, tiny, 1.0 - jnp.finfo(jnp.float32).epsneg)
    mixed = jnp.logaddexp(jnp.log(safe) + ref, jnp.log1p(-safe) + cur)
    return jnp.where(alpha >= 1.0, ref, jnp.where(alpha <= 0.0, cur, mixed))


@REGULATORS.register('srcl')
class Srcl(Regulator):
    """Similarity-regulated negative weights (SRCL, ACL 2023)."""

    Settings = SrclSettings
    stage = WEIGHTS

    def __init__(self, settings: SrclSettings, context):
        super().__init__(settings, context)
        end = settings.alpha_decay_end
        self.decay_end = context.total_steps if end == -1 else end
        self.w_min = settings.w_min if settings.w_min > 0 else None

    def check(self) -> str | None:
        if self.settings.uses_reference and not self.settings.reference_checkpoint:
            return (
                'config key loss.srcl.reference_checkpoint is empty but the alpha schedule uses the reference '
                'model (alpha_start or alpha_end > 0); pass a reference run, e.g. '
                '--config.loss.srcl.reference_checkpoint=workdirs/reference, or set both alphas to 0.'
            )
        return None

    def frozen_roles(self) -> tuple[FrozenRole, ...]:
        if not self.settings.uses_reference:
            return ()
        return (FrozenRole(REFERENCE, 'loss.srcl.reference_checkpoint', self.settings.reference_checkpoint, COSINE),)

    def prepare(self, step: jax.Array) -> dict[str, jax.Array]:
        if not self.settings.uses_reference:
            return {}
        s = self.settings
        alpha = srcl_alpha(step, s.alpha_start, s.alpha_end, s.alpha_decay_start, self.decay_end, s.alpha_shape)
        return {'alpha': jax.lax.stop_gradient(jnp.asarray(alpha, jnp.float32))}

    def _neg_log_s(self, tile: Tile, scalars: Mapping[str, Any]) -> jax.Array:
        if not self.settings.uses_reference:
            return -srcl_log_s(tile.sim, None, 0.0, self.settings.tau_w)
        return -srcl_log_s(tile.sim, tile.cosines(REFERENCE), scalars['alpha'], self.settings.tau_w)

    def init_rows(self, rows: int) -> dict[str, jax.Array]:
        return {'lse': jnp.full((rows,), -jnp.inf)}

    def update_rows(self, state, tile: Tile, scalars) -> dict[str, jax.Array]:
        block = jax.nn.logsumexp(jnp.where(tile.diag, -jnp.inf, self._neg_log_s(tile, scalars)), axis=1)
        return {'lse': jnp.logaddexp(state['lse'], block)}

    def decide(self, stats, scalars, answers):
        batch = stats['i2t']['lse'].shape[0]
        log_means = {d: stats[d]['lse'] - math.log(batch - 1) for d in DIRECTIONS}
        alpha = scalars.get('alpha', 0.0)
        aux = {'alpha': jnp.asarray(alpha, jnp.float32), 'log_mean': tuple(log_means[d] for d in DIRECTIONS)}
        return {d: {'log_mean': log_means[d]} for d in DIRECTIONS}, aux

    def apply(self, targets: TileTargets, tile: Tile, rows, scalars) -> TileTargets:
        log_w = jnp.where(tile.diag, 0.0, self._neg_log_s(tile, scalars) - rows['log_mean'][:, None])
        if self.w_min is not None:
            log_w = jnp.where(~tile.diag & (log_w < math.log(self.w_min)), MASKED_LOG_WEIGHT, log_w)
        if targets.log_w is not None:
            log_w = jnp.maximum(log_w + targets.log_w, MASKED_LOG_WEIGHT)
        return TileTargets(log_w, targets.y0)

    def metrics(self, aux) -> dict[str, jax.Array]:
        return {'train/srcl/alpha': aux['alpha']} if self.settings.uses_reference else {}

    def dense_aux(self, i2t: TileTargets, t2i: TileTargets) -> dict[str, Any]:
        return {'log_w': (i2t.log_w, t2i.log_w)}

    def probe_metrics(self, aux, false_negatives) -> dict[str, jax.Array]:
        """Mean SRCL weight on false vs true negatives, pooled over both directions (needs the dense log_w)."""
        if 'log_w' not in aux:
            return {}
        stats = [srcl_weight_stats(log_w, mask) for log_w, mask in zip(aux['log_w'], false_negatives)]
        out = {'train/srcl/alpha': aux['alpha']}
        for kind in ('false_negative', 'true_negative'):
            count = sum(s[f'count_{kind}'] for s in stats)
            total = sum(jnp.where(s[f'count_{kind}'] > 0, s[f'weight_{kind}'], 0.0) * s[f'count_{kind}'] for s in stats)
            out[f'train/srcl/weight_{kind}'] = safe_ratio(total, count)
        return out


def _masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan), count


def srcl_weight_stats(log_w: jax.Array, false_negative_mask: jax.Array) -> dict[str, jax.Array]:
    """Ground-truth diagnostic: do false negatives get smaller weights than true negatives?

    Means of exp(log_w) over off-diagonal false negatives / true negatives; NaN when a
    set is empty (the counts are returned so steps can be pooled as sum / count).
    """
    n = log_w.shape[0]
    off = off_diagonal(n)
    weights = jnp.exp(log_w.astype(jnp.float32))
    fn = off & false_negative_mask.astype(bool)
    tn = off & ~false_negative_mask.astype(bool)
    mean_fn, count_fn = _masked_mean(weights, fn)
    mean_tn, count_tn = _masked_mean(weights, tn)
    return {
        'weight_false_negative': mean_fn,
        'weight_true_negative': mean_tn,
        'count_false_negative': count_fn,
        'count_true_negative': count_tn,
    }
