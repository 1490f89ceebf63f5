"""Pass 1 (no gradient): per row and direction the diagonal, the hardest negative, and the regulators' statistics.

The regulators' [B] decisions are taken from these in the entry point (RegulatorChain.decide).
"""

from __future__ import annotations

import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan
from vlp_jax.objectives.chunked.sweep import _row_ids, _sweep, _varying
from vlp_jax.objectives.chunked.tiles import _direction_tiles
from vlp_jax.objectives.regulators.rows import init_top2, merge_top2, top2


def _stats_body(plan: _Plan, emb, scalars):
    b = emb['v'].shape[0]
    rows = _row_ids(plan, b)
    init = {
        name: {'diag': jnp.zeros((b,)), 'top': init_top2(b), 'chain': plan.chain.init_rows(b)}
        for name, _, _ in DIRECTIONS
    }

    def visit(carry, chunk, col):
        diag = rows[:, None] == col[None, :]
        tiles = _direction_tiles(plan, emb, chunk, diag, col)
        new = {}
        for name, _, _ in DIRECTIONS:
            tile, state = tiles[name], carry[name]
            values, local_index = top2(jnp.where(diag, -jnp.inf, tile.sim))
            new[name] = {
                'diag': state['diag'] + jnp.sum(jnp.where(diag, tile.sim, 0.0), axis=1),
                'top': merge_top2(state['top'], {'value': values, 'index': col[local_index]}),
                'chain': plan.chain.update_rows(state['chain'], tile, scalars['chain']),
            }
        return new, {}

    carry, _ = _sweep(plan, emb, _varying(plan, init), visit)
    return carry
