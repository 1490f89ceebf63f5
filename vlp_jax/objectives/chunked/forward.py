"""Pass 2: the loss by online logsumexp over the tiles, and the per-row residuals the backward needs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import DIRECTIONS, _Plan
from vlp_jax.objectives.chunked.sweep import _row_ids, _sweep, _varying
from vlp_jax.objectives.chunked.tiles import _direction_tiles, _sigmoid_parts, _tile_regulation


def _forward_body(plan: _Plan, diff, consts):
    """Per device: the psum'd [loss_i2t, loss_t2i, consistency] and the per-row residuals of the backward."""
    local = {'v': diff['v'], 't': diff['t'], **consts['emb']}
    scale, bias, scalars = diff['scale'], diff['bias'], consts['scalars']
    b = local['v'].shape[0]
    rows = _row_ids(plan, b)
    zeros, minus_inf = jnp.zeros((b,)), jnp.full((b,), -jnp.inf)
    init = {}
    for name, _, _ in DIRECTIONS:
        state = {}
        if plan.form == 'softmax':
            state.update(m=minus_inf, s=zeros, sy=zeros)
            if plan.smooths:
                state.update(sv=zeros, n=zeros)
        else:
            state.update(total=zeros)
        if plan.consistency:
            state.update(raw_m=minus_inf, raw_s=zeros, cross=zeros)
        init[name] = state

    def visit(carry, chunk, col):
        diag = rows[:, None] == col[None, :]
        tiles = _direction_tiles(plan, local, chunk, diag, col)
        logits = {name: scale * tile.sim for name, tile in tiles.items()}
        new = {}
        for name, _, _ in DIRECTIONS:
            state = dict(carry[name])
            log_w, y0, valid = _tile_regulation(plan, tiles[name], consts['rows'][name], scalars)
            z = logits[name]
            if plan.form == 'softmax':
                zz = z if log_w is None else z + log_w
                m = jnp.maximum(state['m'], jnp.max(zz, axis=1))
                state['s'] = state['s'] * jnp.exp(state['m'] - m) + jnp.sum(jnp.exp(zz - m[:, None]), axis=1)
                state['m'] = m
                state['sy'] = state['sy'] + jnp.sum(y0 * zz, axis=1)
                if plan.smooths:
                    kept = jnp.ones_like(zz) if valid is None else valid.astype(jnp.float32)
                    state['sv'] = state['sv'] + jnp.sum(kept * zz, axis=1)
                    state['n'] = state['n'] + jnp.sum(kept, axis=1)
            else:
                labels, weights = _sigmoid_parts(plan, log_w, y0, valid, scalars)
                terms = -weights * jax.nn.log_sigmoid(labels * (z + bias))
                state['total'] = state['total'] + jnp.sum(terms, axis=1)
            if plan.consistency:  # online sum_j exp(z_ij - m_i) z'_ij, z' the other direction
                other = logits['t2i' if name == 'i2t' else 'i2t']
                m = jnp.maximum(state['raw_m'], jnp.max(z, axis=1))
                rescale = jnp.exp(state['raw_m'] - m)
                p = jnp.exp(z - m[:, None])
                state['raw_s'] = state['raw_s'] * rescale + jnp.sum(p, axis=1)
                state['cross'] = state['cross'] * rescale + jnp.sum(p * other, axis=1)
                state['raw_m'] = m
            new[name] = state
        return new, {}

    carry, _ = _sweep(plan, local, _varying(plan, init), visit)
    losses, residuals = [], {}
    for name, _, _ in DIRECTIONS:
        state, res = carry[name], {}
        if plan.form == 'softmax':
            lse = state['m'] + jnp.log(state['s'])
            target = state['sy']
            if plan.smooths:
                eps = scalars['eps']
                target = (1.0 - eps) * state['sy'] + eps * state['sv'] / state['n']
                res['n'] = state['n']
            row_loss = lse - target  # sum_j y_ij = 1
            res['lse'] = lse
        else:
            row_loss = state['total']
        if plan.consistency:
            res['raw_lse'] = state['raw_m'] + jnp.log(state['raw_s'])
        losses.append(jnp.sum(row_loss))
        residuals[name] = res
    consistency = jnp.zeros(())
    if plan.consistency:  # H(p, p') = -E_p[log p'] = lse' - E_p[z'] (contrastive.consistency_loss: GRIT-VLP's value)
        i2t, t2i = residuals['i2t']['raw_lse'], residuals['t2i']['raw_lse']
        ce_t2i_i2t = i2t - carry['t2i']['cross'] / carry['t2i']['raw_s']
        ce_i2t_t2i = t2i - carry['i2t']['cross'] / carry['i2t']['raw_s']
        consistency = 0.5 * (jnp.sum(ce_t2i_i2t) + jnp.sum(ce_i2t_t2i))
    parts = jax.lax.psum(jnp.stack([losses[0], losses[1], consistency]), plan.axes) / plan.batch
    return parts, residuals
