"""One [rows, columns] tile: cosines per direction, and what the regulator chain makes of them there."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan, role_key
from vlp_jax.objectives.regulators.base import MASKED_THRESHOLD, Tile


def _cos(anchors: jax.Array, keys: jax.Array) -> jax.Array:
    return jnp.einsum('ie,je->ij', anchors, keys)


def _direction_tiles(plan: _Plan, local, chunk, diag, col) -> dict[str, Tile]:
    """Per direction the Tile of the local rows against a column chunk (frozen embeddings riding along)."""
    out = {}
    for name, a, k in DIRECTIONS:
        anchors = {role: local[role_key(role, a)] for role in plan.roles}
        candidates = {role: chunk[role_key(role, k)] for role in plan.roles}
        out[name] = Tile(_cos(local[a], chunk[k]), diag, col, anchors, candidates)
    return out


def _tile_regulation(plan: _Plan, tile: Tile, rows: Mapping[str, jax.Array], scalars):
    """One tile of what the regulator chain hands the loss: (log_w or None, y0, valid or None).

    y0 are the targets before the uniform mix (identity, plus any converted pairs, rows renormalised);
    `valid` the candidates the uniform mix spreads over (those no regulator removed).
    """
    targets, _ = plan.chain.targets(tile, rows, scalars['chain'])
    log_w = targets.log_w
    valid = None if log_w is None else log_w > MASKED_THRESHOLD
    return log_w, targets.targets_or_identity(tile), valid


def _sigmoid_parts(plan: _Plan, log_w, y0, valid, scalars):
    """SigLIP's label (+1 iff y > 0) and weight (1 on positives, exp(log_w) on negatives) of a tile."""
    if plan.smooths:
        eps = scalars['eps']
        kept = jnp.ones_like(y0, dtype=bool) if valid is None else valid
        positive = ((1.0 - eps) * y0 > 0) | ((eps > 0) & kept)
    else:
        positive = y0 > 0
    labels = jnp.where(positive, 1.0, -1.0)
    weights = jnp.ones_like(y0) if log_w is None else jnp.where(positive, 1.0, jnp.exp(log_w))
    return labels, weights
