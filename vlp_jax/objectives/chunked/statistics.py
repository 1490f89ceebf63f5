"""Pass 1 (no gradient): per row and direction the diagonal, the top-2 off-diagonal cosines and SRCL's logsumexp.

The regulators' [B] decisions (SRCL's row means, COSMO's j1/j2 and q) are taken from these in the entry point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan
from vlp_jax.objectives.chunked.sweep import _row_ids, _sweep, _varying
from vlp_jax.objectives.chunked.tiles import _direction_tiles, _srcl_neg_log_s


def _top2(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row, the two largest entries (first index on ties) of a tile with -inf where excluded."""
    columns = jnp.arange(x.shape[1])
    i1 = jnp.argmax(x, axis=1)
    v1 = jnp.take_along_axis(x, i1[:, None], axis=1)[:, 0]
    rest = jnp.where(columns[None, :] == i1[:, None], -jnp.inf, x)
    i2 = jnp.argmax(rest, axis=1)
    v2 = jnp.take_along_axis(rest, i2[:, None], axis=1)[:, 0]
    return jnp.stack([v1, v2], axis=1), jnp.stack([i1, i2], axis=1)


def _merge_top2(run: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The best two of four candidates per row: larger value first, then lower global index (= top_k)."""
    keys = sorted(run)
    operands = [-jnp.concatenate([run['value'], new['value']], axis=1)]
    operands.append(jnp.concatenate([run['index'], new['index']], axis=1))
    payload = [k for k in keys if k not in ('value', 'index')]
    operands += [jnp.concatenate([run[k], new[k]], axis=1) for k in payload]
    out = jax.lax.sort(operands, dimension=1, num_keys=2)
    merged = {'value': -out[0][:, :2], 'index': out[1][:, :2]}
    merged.update({k: o[:, :2] for k, o in zip(payload, out[2:])})
    return merged


def _stats_body(plan: _Plan, emb: dict[str, jax.Array], scalars) -> dict[str, dict[str, jax.Array]]:
    b = emb['v'].shape[0]
    rows = _row_ids(plan, b)
    disc_cosine = plan.cosmo and not plan.cosmo_itm
    init = {}
    for name, _, _ in DIRECTIONS:
        top = {'value': jnp.full((b, 2), -jnp.inf), 'index': jnp.zeros((b, 2), jnp.int32)}
        if disc_cosine:
            top['score'] = jnp.zeros((b, 2))
        init[name] = {'diag': jnp.zeros((b,)), 'top': top}
        if plan.srcl:
            init[name]['lse'] = jnp.full((b,), -jnp.inf)

    def visit(carry, chunk, col):
        diag = rows[:, None] == col[None, :]
        tiles = _direction_tiles(plan, emb, chunk, scalars)
        new = {}
        for name, a, k in DIRECTIONS:
            sim, ref_sim = tiles[name]
            state = dict(carry[name])
            state['diag'] = state['diag'] + jnp.sum(jnp.where(diag, sim, 0.0), axis=1)
            values, local_index = _top2(jnp.where(diag, -jnp.inf, sim))
            found = {'value': values, 'index': col[local_index]}
            if disc_cosine:  # the discriminator's cosine at the candidates: q for whichever wins
                found['score'] = jnp.einsum('ie,ike->ik', emb['d' + a], chunk['d' + k][local_index])
            state['top'] = _merge_top2(state['top'], found)
            if plan.srcl:
                neg_log_s = _srcl_neg_log_s(plan, sim, ref_sim, scalars)
                block_lse = jax.nn.logsumexp(jnp.where(diag, -jnp.inf, neg_log_s), axis=1)
                state['lse'] = jnp.logaddexp(state['lse'], block_lse)
            new[name] = state
        return new, {}

    carry, _ = _sweep(plan, emb, _varying(plan, init), visit)
    return carry
