"""One [rows, columns] tile: cosines per direction, and what the regulator chain makes of them there."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan
from vlp_jax.objectives.regulators import _MASKED_THRESHOLD, MASKED_LOG_WEIGHT, _srcl_log_s


def _cos(anchors: jax.Array, keys: jax.Array) -> jax.Array:
    return jnp.einsum('ie,je->ij', anchors, keys)


def _srcl_neg_log_s(plan: _Plan, sim: jax.Array, ref_sim: jax.Array | None, scalars) -> jax.Array:
    alpha = plan.alpha_static if plan.alpha_static is not None else scalars['alpha']
    return -_srcl_log_s(sim, ref_sim, alpha, plan.tau_w)


def _tile_regulation(plan: _Plan, sim, ref_sim, diag, col, rows: Mapping[str, jax.Array], scalars):
    """One tile of what the regulator chain hands the loss: (log_w or None, y0, valid or None).

    y0 are the targets before smoothing (identity, COSMO's converted pairs, rows renormalised);
    `valid` the candidates smoothing spreads over (those SRCL's w_min kept).
    """
    log_w = None
    if plan.srcl:
        neg_log_s = _srcl_neg_log_s(plan, sim, ref_sim, scalars)
        log_w = jnp.where(diag, 0.0, neg_log_s - rows['log_mean'][:, None])
        if plan.w_min is not None:
            log_w = jnp.where(~diag & (log_w < math.log(plan.w_min)), MASKED_LOG_WEIGHT, log_w)
    y0 = diag.astype(jnp.float32)
    if plan.cosmo:
        extra = rows['converted'][:, None] & (col[None, :] == rows['hardest'][:, None])
        y0 = (y0 + extra.astype(jnp.float32)) / (1.0 + rows['converted'].astype(jnp.float32))[:, None]
        if log_w is not None:
            log_w = jnp.where(extra, 0.0, log_w)
    valid = None if log_w is None else log_w > _MASKED_THRESHOLD
    return log_w, y0, valid


def _sigmoid_parts(plan: _Plan, log_w, y0, valid, scalars):
    """SigLIP's label (+1 iff y > 0) and weight (1 on positives, exp(log_w) on negatives) of a tile."""
    if plan.smoothing:
        eps = scalars['eps']
        kept = jnp.ones_like(y0, dtype=bool) if valid is None else valid
        positive = ((1.0 - eps) * y0 > 0) | ((eps > 0) & kept)
    else:
        positive = y0 > 0
    labels = jnp.where(positive, 1.0, -1.0)
    weights = jnp.ones_like(y0) if log_w is None else jnp.where(positive, 1.0, jnp.exp(log_w))
    return labels, weights


def _direction_tiles(plan: _Plan, local, chunk, scalars):
    """Per direction: (cosines, reference cosines or None) of the local rows against a column chunk."""
    out = {}
    for name, a, k in DIRECTIONS:
        sim = _cos(local[a], chunk[k])
        ref_sim = _cos(local['r' + a], chunk['r' + k]) if plan.srcl_reference else None
        out[name] = (sim, ref_sim)
    return out
