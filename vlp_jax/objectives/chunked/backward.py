"""Pass 3: the gradient, each tile recomputed from the saved per-row logsumexps (nothing [B, B] saved)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan
from vlp_jax.objectives.chunked.sweep import _row_ids, _sweep, _varying
from vlp_jax.objectives.chunked.tiles import _direction_tiles, _sigmoid_parts, _tile_regulation


def _backward_body(plan: _Plan, diff, consts, residuals, cotangent):
    local = {'v': diff['v'], 't': diff['t'], **consts['emb']}
    scale, bias, scalars = diff['scale'], diff['bias'], consts['scalars']
    b, width = local['v'].shape
    rows = _row_ids(plan, b)
    weight = {'i2t': cotangent[0] / plan.batch, 't2i': cotangent[1] / plan.batch}
    consistency_weight = 0.5 * cotangent[2] / plan.batch
    grad_keys = () if plan.stop_grad_keys else ('v', 't')
    init = {'v': jnp.zeros((b, width)), 't': jnp.zeros((b, width)), 'scale': jnp.zeros(()), 'bias': jnp.zeros(())}

    def visit(carry, chunk, col):
        diag = rows[:, None] == col[None, :]
        tiles = _direction_tiles(plan, local, chunk, diag, col)
        logits = {name: scale * tile.sim for name, tile in tiles.items()}
        dz = {}
        for name, _, _ in DIRECTIONS:
            res = residuals[name]
            log_w, y0, valid = _tile_regulation(plan, tiles[name], consts['rows'][name], scalars)
            z = logits[name]
            if plan.form == 'softmax':
                zz = z if log_w is None else z + log_w
                y = y0
                if plan.smooths:
                    eps = scalars['eps']
                    kept = jnp.ones_like(zz) if valid is None else valid.astype(jnp.float32)
                    y = (1.0 - eps) * y0 + eps * kept / res['n'][:, None]
                dz[name] = weight[name] * (jnp.exp(zz - res['lse'][:, None]) - y)
            else:
                labels, weights = _sigmoid_parts(plan, log_w, y0, valid, scalars)
                dz[name] = weight[name] * (-weights * labels * jax.nn.sigmoid(-labels * (z + bias)))
        if plan.consistency:  # d/dz H(sg p', p) = p - p' (the cross-entropy's gradient is the KL's)
            p_i2t = jnp.exp(logits['i2t'] - residuals['i2t']['raw_lse'][:, None])
            p_t2i = jnp.exp(logits['t2i'] - residuals['t2i']['raw_lse'][:, None])
            dz['i2t'] = dz['i2t'] + consistency_weight * (p_i2t - p_t2i)
            dz['t2i'] = dz['t2i'] + consistency_weight * (p_t2i - p_i2t)
        carry = {
            'v': carry['v'] + scale * (dz['i2t'] @ chunk['t']),
            't': carry['t'] + scale * (dz['t2i'] @ chunk['v']),
            'scale': carry['scale'] + jnp.sum(dz['i2t'] * tiles['i2t'].sim) + jnp.sum(dz['t2i'] * tiles['t2i'].sim),
            'bias': carry['bias'] + (jnp.sum(dz['i2t']) + jnp.sum(dz['t2i']) if plan.form == 'sigmoid' else 0.0),
        }
        grads = {}
        if grad_keys:
            grads = {'t': scale * (dz['i2t'].T @ local['v']), 'v': scale * (dz['t2i'].T @ local['t'])}
        return carry, grads

    carry, home = _sweep(plan, local, _varying(plan, init), visit, grad_keys)
    grads = {
        'v': carry['v'] + home.get('v', 0.0),
        't': carry['t'] + home.get('t', 0.0),
        'scale': jax.lax.psum(carry['scale'], plan.axes),
        'bias': jax.lax.psum(carry['bias'], plan.axes),
    }
    return grads
