"""COSMO / MAFA: the hardest negative, if a frozen discriminator says it matches, becomes a positive.

Per anchor and direction the training model's hardest (j1) and second-hardest (j2) in-batch
negatives are found (a top-2 that merges across tiles); the discriminator scores (anchor, j1)
with q: q > high converts j1 (Y[i, j1] += 1, rows renormalised, log_w[i, j1] = 0), q < low
keeps it a negative, in between drops it for ITM (j2 is the ITM negative). Targets are smoothed
by eps from `smoothing_start_step` on. The discriminator is a frozen model's cosine ('cosine',
any kind) or a frozen fusion model's ITM match probability of the chosen pairs ('itm', MAFA's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.config import key
from vlp_jax.objectives.frozen import COSINE, ITM, FrozenRole
from vlp_jax.objectives.matching import mafa_pairs
from vlp_jax.objectives.regulators.base import DIRECTIONS, TARGETS, Regulator, Tile, TileTargets, safe_ratio
from vlp_jax.objectives.regulators.rows import init_top2, merge_top2, top2
from vlp_jax.registry import REGULATORS

DISCRIMINATOR = 'discriminator'
DISCRIMINATORS = (COSINE, ITM)
# What the discriminator's score q of (anchor, hardest negative j1) decides, with MAFA's strict inequalities:
STATE_KEPT = 0  # q < low: j1 stays a negative (the ITM negative)
STATE_DROPPED = 1  # low < q < high: ambiguous, j1 dropped, ITM uses j2
STATE_CONVERTED = 2  # q > high: j1 is a false negative and becomes a positive
STATE_AT_THRESHOLD = 3  # q == low or q == high: MAFA's code forms no ITM pair


def _smoothing_start_check(value: int) -> str | None:
    return None if isinstance(value, int) and value >= -1 else 'must be >= 0 (or -1 = the first step of epoch 1)'


@dataclasses.dataclass(frozen=True)
class CosmoSettings:
    """COSMO/MAFA: which discriminator judges the hardest negatives, its thresholds, the smoothing."""

    discriminator: str = key(
        COSINE,
        "'cosine': a frozen model's cosine | 'itm': a frozen fusion model's ITM probability (MAFA)",
        choices=DISCRIMINATORS,
    )
    high: float = key(0.8, 'a score above this converts the hardest negative into a positive')
    low: float = key(0.5, 'below this it stays a negative (between: dropped, for ITM)')
    eps: float = key(
        0.5,
        'label smoothing of the targets from smoothing_start_step on',
        check=lambda v: None if 0 <= v <= 1 else 'must be in [0, 1]',
    )
    smoothing_start_step: int = key(
        -1, '-1: the first step of epoch 1 (MAFA: when grouped batches start)', check=_smoothing_start_check
    )
    reference_checkpoint: str = key('', "the discriminator's frozen model (may be SRCL's reference)")
    converted_negative: bool = key(
        False, "fusion models: also give a converted anchor the ITM negative j2 (not MAFA's code, which gives none)"
    )


@REGULATORS.register('cosmo')
class Cosmo(Regulator):
    """Converting and smoothing false negatives (COSMO / MAFA, CVPR 2024)."""

    Settings = CosmoSettings
    stage = TARGETS
    smooths = True
    decides_pairs = True
    min_batch = 3  # an anchor needs a hardest and a second-hardest negative

    def __init__(self, settings: CosmoSettings, context):
        super().__init__(settings, context)
        start = settings.smoothing_start_step
        self.smoothing_start = context.steps_per_epoch if start == -1 else start
        self.itm = settings.discriminator == ITM

    def check(self) -> str | None:
        s = self.settings
        if self.itm and not 0.0 <= s.low <= s.high <= 1.0:
            return (
                'config keys loss.cosmo.low and loss.cosmo.high are ITM match probabilities with the itm '
                f'discriminator and must satisfy 0 <= low <= high <= 1, got low={s.low}, high={s.high}.'
            )
        if not self.itm and not -1.0 <= s.low <= s.high <= 1.0:
            return (
                'config keys loss.cosmo.low and loss.cosmo.high are cosine '
                f'thresholds and must satisfy -1 <= low <= high <= 1, got low={s.low}, high={s.high}.'
            )
        if not s.reference_checkpoint:
            return (
                'config key loss.cosmo.reference_checkpoint is empty but the discriminator scores pairs with a '
                'frozen model; pass a trained run, e.g. --config.loss.cosmo.reference_checkpoint=workdirs/reference.'
            )
        if self.context.loss_form == 'sigmoid' and s.eps > 0:
            return (
                "config key loss.cosmo.eps must be 0 with loss.form='sigmoid': the sigmoid loss treats every "
                'target > 0 as a positive, so smoothing would make all pairs positive.'
            )
        return None

    def frozen_roles(self) -> tuple[FrozenRole, ...]:
        s = self.settings
        return (FrozenRole(DISCRIMINATOR, 'loss.cosmo.reference_checkpoint', s.reference_checkpoint, s.discriminator),)

    def prepare(self, step: jax.Array) -> dict[str, jax.Array]:
        return {'eps': jnp.where(step >= self.smoothing_start, jnp.asarray(self.settings.eps, jnp.float32), 0.0)}

    def uniform_mix(self, scalars: Mapping[str, jax.Array]) -> jax.Array:
        return scalars['eps']

    def init_rows(self, rows: int) -> dict[str, jax.Array]:
        return init_top2(rows, () if self.itm else ('score',))

    def update_rows(self, state, tile: Tile, scalars) -> dict[str, jax.Array]:
        values, local = top2(jnp.where(tile.diag, -jnp.inf, tile.sim))
        found = {'value': values, 'index': tile.col[local]}
        if not self.itm:  # the discriminator's cosine at the candidates: q for whichever wins
            found['score'] = tile.cosines_at(DISCRIMINATOR, local)
        return merge_top2(state, found)

    def decide(self, stats, scalars, answers):
        hardest = {d: stats[d]['index'][:, 0] for d in DIRECTIONS}
        if self.itm:
            scores = dict(zip(DIRECTIONS, answers[DISCRIMINATOR](hardest['i2t'], hardest['t2i'])))
        else:
            scores = {d: stats[d]['score'][:, 0] for d in DIRECTIONS}
        rows, aux = {}, {}
        for d in DIRECTIONS:
            q = jax.lax.stop_gradient(scores[d].astype(jnp.float32))
            high, low = self.settings.high, self.settings.low
            converted = q > high
            between = jnp.where((q > low) & (q < high), STATE_DROPPED, STATE_AT_THRESHOLD)
            state = jnp.where(converted, STATE_CONVERTED, jnp.where(q < low, STATE_KEPT, between))
            rows[d] = {'hardest': hardest[d], 'converted': converted}
            aux[d] = {
                'hardest': hardest[d],
                'second': stats[d]['index'][:, 1],
                'state': state.astype(jnp.int32),
                'converted': converted,
                'hardest_score': q,
            }
        return rows, aux

    def apply(self, targets: TileTargets, tile: Tile, rows, scalars) -> TileTargets:
        extra = rows['converted'][:, None] & (tile.col[None, :] == rows['hardest'][:, None])  # new positives
        y0 = targets.targets_or_identity(tile) + extra.astype(jnp.float32)
        y0 = y0 / (1.0 + rows['converted'].astype(jnp.float32))[:, None]
        log_w = None if targets.log_w is None else jnp.where(extra, 0.0, targets.log_w)
        return TileTargets(log_w, y0)

    def metrics(self, aux) -> dict[str, jax.Array]:
        converted = sum(jnp.sum(aux[d]['converted']) for d in DIRECTIONS)
        return {'train/cosmo/converted_fraction': converted / (2 * aux['i2t']['converted'].shape[0])}

    def matching_pairs(self, aux: Mapping[str, Any]) -> Any:
        s = self.settings
        return mafa_pairs(aux['i2t'], aux['t2i'], s.high, s.low, s.converted_negative)

    def probe_metrics(self, aux, false_negatives) -> dict[str, jax.Array]:
        """Precision/recall of converted pairs against the truth, pooled over both directions."""
        stats = [
            conversion_stats(aux[d]['hardest'], aux[d]['converted'], mask)
            for d, mask in zip(DIRECTIONS, false_negatives)
        ]
        true_pos = sum(s['num_true_positive'] for s in stats)
        converted = sum(s['num_converted'] for s in stats)
        hardest_fn = sum(s['num_hardest_fn'] for s in stats)
        batch = aux['i2t']['hardest'].shape[0]
        return {
            'train/cosmo/precision': safe_ratio(true_pos, converted),
            'train/cosmo/recall': safe_ratio(true_pos, hardest_fn),
            'train/cosmo/converted_fraction': safe_ratio(converted, 2 * batch),
            'train/cosmo/num_converted': converted,
            'train/cosmo/num_true_positive': true_pos,
            'train/cosmo/num_hardest_false_negative': hardest_fn,
        }


def conversion_stats(hardest: jax.Array, converted: jax.Array, false_negative_mask: jax.Array) -> dict[str, jax.Array]:
    """Ground-truth diagnostic of one direction's conversions: precision and recall.

    precision = |converted & j1 truly FN| / |converted|, recall = same / |j1 truly FN|;
    NaN when the denominator is 0 (counts returned to pool steps as sum / sum).
    """
    rows = jnp.arange(hardest.shape[0])
    hardest_fn = false_negative_mask.astype(bool)[rows, hardest]
    converted = converted.astype(bool)
    true_pos = jnp.sum(converted & hardest_fn)
    num_converted = jnp.sum(converted)
    num_hardest_fn = jnp.sum(hardest_fn)
    return {
        'precision': safe_ratio(true_pos, num_converted),
        'recall': safe_ratio(true_pos, num_hardest_fn),
        'num_true_positive': true_pos,
        'num_converted': num_converted,
        'num_hardest_fn': num_hardest_fn,
    }
