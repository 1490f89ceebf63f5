"""The global-batch contrastive loss in memory-bounded chunks: the dense loss and regulators, block by block.

`chunked_contrastive_loss` computes exactly what `RegulatorChain` (objectives/regulate.py) followed by
`contrastive_loss` (objectives/contrastive.py) compute, without ever holding a [B, B] matrix:

- `jax.shard_map` over the mesh's batch axes ('data', 'fsdp'): each device keeps its b = B / D rows
  (anchors) and the candidates travel. `comm='ring'` (default) passes each device's [b, E] block
  around the ring with `ppermute`, D hops; `comm='all_gather'` gathers all [B, E] candidates once.
  Within a block the columns are taken `block_size` at a time, so the largest temporaries are
  [b, block_size] tiles (default: about TILE_ELEMENTS elements).
- Two sweeps forward, one backward (`jax.custom_vjp`, tiles recomputed, nothing [B, B] saved):
  1. statistics (no gradient): per row and direction the diagonal cosine, the top-2 off-diagonal
     cosines with their global column and (cosine discriminator) the discriminator's cosine there,
     and SRCL's logsumexp of -log s_ik over k != i. Then, on [B] vectors: SRCL's row means, COSMO's
     j1/j2, q (an ITM discriminator is called here, with the j1 it needs), conversions, metrics.
  2. loss: online logsumexp of z + log_w (softmax) or the summed terms (sigmoid); the targets y are
     linear in the per-row sums, so smoothing over the kept candidates (whose count n_i is only known
     at the end) is sum_j y0_ij z_ij and sum_j valid_ij z_ij accumulated apart. GRIT-VLP's
     consistency KL comes from the same pass: both directions' raw logsumexps and E_p[z' - z] online.
  3. backward: each tile recomputed from the saved per-row logsumexps; the candidates' gradients
     travel home with their block (ring) or are reduce-scattered (all_gather).
- The reference model's (SRCL) and the cosine discriminator's (COSMO) embeddings travel with the
  training model's, so their cosines are formed per tile too.

Frozen models answer with embeddings instead of [B, B] cosines: see `ask_embeddings`.

Unsupported: ALBEF's momentum candidates (`image_candidates` / `text_candidates`, [B + Q] keys),
asserted. The ground-truth probe (probes.py) reads SRCL's [B, B] log_w: the chunked loss reports
SRCL's per-row statistic (`aux['srcl']['log_mean']`) from which any log_w_ij follows
(`srcl_log_w_from_rows`), and with `dense_diagnostics=True` it also rebuilds the [B, B] log_w for
the probe (synthetic-data diagnostics, small B only: the probe's own mask is [B, B]).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from vlp_jax.config import MESH_AXES
from vlp_jax.objectives.frozen import COSINE, DISCRIMINATOR, REFERENCE, FrozenRole, ask
from vlp_jax.objectives.regulate import RegulatorChain
from vlp_jax.objectives.regulators import (
    _MASKED_THRESHOLD,
    MASKED_LOG_WEIGHT,
    STATE_CONVERTED,
    STATE_DROPPED,
    STATE_KEPT,
    _srcl_log_s,
    srcl_alpha,
)
from vlp_jax.parallel import BATCH_AXES

PyTree = Any
# Default size of one [rows, columns] tile: 2^21 float32 = 8 MiB per temporary.
TILE_ELEMENTS = 1 << 21
COMMS = ('ring', 'all_gather')
# Per direction: (name, anchor key, candidate key). Rows of i2t are images, of t2i texts; the
# reference ('r') and discriminator ('d') embeddings use the same letters with a prefix.
DIRECTIONS = (('i2t', 'v', 't'), ('t2i', 't', 'v'))


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call: shapes, mesh, which regulators, their Python settings."""

    form: str
    batch: int
    devices: int
    axes: tuple[str, ...]
    block: int
    comm: str
    stop_grad_keys: bool
    consistency: bool
    srcl: bool = False
    srcl_reference: bool = False
    alpha_static: float | None = None  # SRCL's alpha when a Python number (no reference model: 0)
    tau_w: float = 1.0
    w_min: float | None = None
    cosmo: bool = False
    cosmo_itm: bool = False  # discriminator is a scoring function (j1 only), not embeddings
    high: float = 0.0
    low: float = 0.0
    smoothing: bool = False  # targets smoothed (COSMO's eps or the smoothing regulator)


# ----------------------------------------------------------------------------- frozen answers


def ask_embeddings(model, role: FrozenRole, params: PyTree, batch: Mapping[str, jax.Array]) -> Any:
    """What the chunked loss needs from a frozen model (the dense path calls `frozen.ask`).

    'cosine' roles: the model's unit-norm (image, text) embeddings [B, E], no gradient: their [B, B]
    cosines are formed tile by tile. 'itm' roles: `frozen.ask`'s scoring function, which only needs
    the j1 indices.
    """
    if role.answer != COSINE:
        return ask(model, role, params, batch)
    params = jax.lax.stop_gradient(params)
    image = model.apply({'params': params}, batch['image'], method='encode_images')
    text = model.apply({'params': params}, batch['text_ids'], batch['text_mask'], method='encode_texts')
    return jax.lax.stop_gradient(image.astype(jnp.float32)), jax.lax.stop_gradient(text.astype(jnp.float32))


# ----------------------------------------------------------------------------- tiles


def _cos(anchors: jax.Array, keys: jax.Array) -> jax.Array:
    return jnp.einsum('ie,je->ij', anchors, keys)


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


# ----------------------------------------------------------------------------- sweeps


def _varying(plan: _Plan, tree):
    return jax.tree.map(lambda x: jax.lax.pcast(x, plan.axes, to='varying'), tree)


def _sweep(plan: _Plan, own: dict[str, jax.Array], carry, visit: Callable, grad_keys: tuple[str, ...] = ()):
    """Runs `visit(carry, chunk, col) -> (carry, chunk_grads)` over every column chunk of the global batch.

    `own` is this device's [b, E] candidate block (the training embeddings and any frozen ones);
    `col` the chunk's global column indices. With `grad_keys`, visit also returns the chunk's
    gradients for those keys, and the sweep returns their sums for this device's own rows.
    """
    b = own['v'].shape[0]
    me = jax.lax.axis_index(plan.axes)

    def over_block(carry, block, start):
        width = block['v'].shape[0]
        count = width // plan.block
        xs = {key: value.reshape(count, plan.block, *value.shape[1:]) for key, value in block.items()}
        starts = start + plan.block * jnp.arange(count, dtype=jnp.int32)

        def body(carry, x):
            chunk, first = x
            return visit(carry, chunk, first + jnp.arange(plan.block, dtype=jnp.int32))

        carry, grads = jax.lax.scan(body, carry, (xs, starts))
        grads = {key: grads[key].reshape(width, *grads[key].shape[2:]) for key in grad_keys}
        return carry, grads

    if plan.comm == 'all_gather' or plan.devices == 1:
        block = own
        if plan.devices > 1:
            block = {key: jax.lax.all_gather(value, plan.axes, tiled=True) for key, value in own.items()}
        carry, grads = over_block(carry, block, jnp.int32(0))
        if plan.devices > 1:
            grads = {
                key: jax.lax.psum_scatter(g, plan.axes, scatter_dimension=0, tiled=True) for key, g in grads.items()
            }
        return carry, grads

    # Ring: D hops; after hop s + 1 this device holds the block of device me - s - 1 (its own after D
    # hops), with that block's gradient so far, which is therefore home at the end.
    perm = [(k, (k + 1) % plan.devices) for k in range(plan.devices)]
    shift = lambda tree: jax.tree.map(lambda x: jax.lax.ppermute(x, plan.axes, perm), tree)
    acc = _varying(plan, {key: jnp.zeros(own[key].shape) for key in grad_keys})

    def hop(s, state):
        carry, block, acc = state
        block, acc = shift((block, acc))
        carry, grads = over_block(carry, block, ((me - s - 1) % plan.devices) * b)
        return carry, block, {key: acc[key] + grads[key] for key in grad_keys}

    carry, _, acc = jax.lax.fori_loop(0, plan.devices, hop, (carry, own, acc))
    return carry, acc


def _row_ids(plan: _Plan, b: int) -> jax.Array:
    return jax.lax.axis_index(plan.axes) * b + jnp.arange(b, dtype=jnp.int32)


# ----------------------------------------------------------------------------- pass 1: statistics


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


# ----------------------------------------------------------------------------- pass 2: loss


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
            if plan.smoothing:
                state.update(sv=zeros, n=zeros)
        else:
            state.update(total=zeros)
        if plan.consistency:
            state.update(raw_m=minus_inf, raw_s=zeros, cross=zeros)
        init[name] = state

    def visit(carry, chunk, col):
        diag = rows[:, None] == col[None, :]
        tiles = _direction_tiles(plan, local, chunk, scalars)
        logits = {name: scale * sim for name, (sim, _) in tiles.items()}
        new = {}
        for name, _, _ in DIRECTIONS:
            sim, ref_sim = tiles[name]
            state = dict(carry[name])
            log_w, y0, valid = _tile_regulation(plan, sim, ref_sim, diag, col, consts['rows'][name], scalars)
            z = logits[name]
            if plan.form == 'softmax':
                zz = z if log_w is None else z + log_w
                m = jnp.maximum(state['m'], jnp.max(zz, axis=1))
                state['s'] = state['s'] * jnp.exp(state['m'] - m) + jnp.sum(jnp.exp(zz - m[:, None]), axis=1)
                state['m'] = m
                state['sy'] = state['sy'] + jnp.sum(y0 * zz, axis=1)
                if plan.smoothing:
                    kept = jnp.ones_like(zz) if valid is None else valid.astype(jnp.float32)
                    state['sv'] = state['sv'] + jnp.sum(kept * zz, axis=1)
                    state['n'] = state['n'] + jnp.sum(kept, axis=1)
            else:
                labels, weights = _sigmoid_parts(plan, log_w, y0, valid, scalars)
                terms = -weights * jax.nn.log_sigmoid(labels * (z + bias))
                state['total'] = state['total'] + jnp.sum(terms, axis=1)
            if plan.consistency:  # online sum_j exp(z_ij - m_i) (z_ij - z'_ij), z' the other direction
                other = logits['t2i' if name == 'i2t' else 'i2t']
                m = jnp.maximum(state['raw_m'], jnp.max(z, axis=1))
                rescale = jnp.exp(state['raw_m'] - m)
                p = jnp.exp(z - m[:, None])
                state['raw_s'] = state['raw_s'] * rescale + jnp.sum(p, axis=1)
                state['cross'] = state['cross'] * rescale + jnp.sum(p * (z - other), axis=1)
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
            if plan.smoothing:
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
    if plan.consistency:  # KL(p || p') = E_p[z - z'] - lse + lse'
        i2t, t2i = residuals['i2t']['raw_lse'], residuals['t2i']['raw_lse']
        kl_t2i_i2t = carry['t2i']['cross'] / carry['t2i']['raw_s'] - t2i + i2t
        kl_i2t_t2i = carry['i2t']['cross'] / carry['i2t']['raw_s'] - i2t + t2i
        consistency = 0.5 * (jnp.sum(kl_t2i_i2t) + jnp.sum(kl_i2t_t2i))
    parts = jax.lax.psum(jnp.stack([losses[0], losses[1], consistency]), plan.axes) / plan.batch
    return parts, residuals


# ----------------------------------------------------------------------------- pass 3: backward


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
        tiles = _direction_tiles(plan, local, chunk, scalars)
        logits = {name: scale * sim for name, (sim, _) in tiles.items()}
        dz = {}
        for name, _, _ in DIRECTIONS:
            sim, ref_sim = tiles[name]
            res = residuals[name]
            log_w, y0, valid = _tile_regulation(plan, sim, ref_sim, diag, col, consts['rows'][name], scalars)
            z = logits[name]
            if plan.form == 'softmax':
                zz = z if log_w is None else z + log_w
                y = y0
                if plan.smoothing:
                    eps = scalars['eps']
                    kept = jnp.ones_like(zz) if valid is None else valid.astype(jnp.float32)
                    y = (1.0 - eps) * y0 + eps * kept / res['n'][:, None]
                dz[name] = weight[name] * (jnp.exp(zz - res['lse'][:, None]) - y)
            else:
                labels, weights = _sigmoid_parts(plan, log_w, y0, valid, scalars)
                dz[name] = weight[name] * (-weights * labels * jax.nn.sigmoid(-labels * (z + bias)))
        if plan.consistency:  # d/dz KL(sg p' || p) = p - p'
            p_i2t = jnp.exp(logits['i2t'] - residuals['i2t']['raw_lse'][:, None])
            p_t2i = jnp.exp(logits['t2i'] - residuals['t2i']['raw_lse'][:, None])
            dz['i2t'] = dz['i2t'] + consistency_weight * (p_i2t - p_t2i)
            dz['t2i'] = dz['t2i'] + consistency_weight * (p_t2i - p_i2t)
        carry = {
            'v': carry['v'] + scale * (dz['i2t'] @ chunk['t']),
            't': carry['t'] + scale * (dz['t2i'] @ chunk['v']),
            'scale': carry['scale'] + jnp.sum(dz['i2t'] * tiles['i2t'][0]) + jnp.sum(dz['t2i'] * tiles['t2i'][0]),
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


def _loss_parts(plan: _Plan, mesh) -> Callable:
    """parts(diff, consts) -> [loss_i2t, loss_t2i, consistency], differentiable in diff = {v, t, scale, bias}."""
    rows, whole = PartitionSpec(plan.axes), PartitionSpec()
    diff_specs = {'v': rows, 't': rows, 'scale': whole, 'bias': whole}
    const_specs = {'emb': rows, 'rows': rows, 'scalars': whole}
    forward = jax.shard_map(
        functools.partial(_forward_body, plan), mesh=mesh, in_specs=(diff_specs, const_specs), out_specs=(whole, rows)
    )
    backward = jax.shard_map(
        functools.partial(_backward_body, plan),
        mesh=mesh,
        in_specs=(diff_specs, const_specs, rows, whole),
        out_specs=diff_specs,
    )

    @jax.custom_vjp
    def parts(diff, consts):
        return forward(diff, consts)[0]

    def parts_fwd(diff, consts):
        out, residuals = forward(diff, consts)
        return out, (diff, consts, residuals)

    def parts_bwd(saved, cotangent):
        diff, consts, residuals = saved
        return backward(diff, consts, residuals, cotangent), None

    parts.defvjp(parts_fwd, parts_bwd)
    return parts


# ----------------------------------------------------------------------------- the entry point


def _resolve_mesh(mesh):
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:  # no mesh in context: one device
            mesh = Mesh(np.asarray(jax.devices()[:1]).reshape((1,) * len(MESH_AXES)), MESH_AXES)
    axes = tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)
    assert axes, f'the mesh {mesh.axis_names} has none of the batch axes {BATCH_AXES}'
    return mesh, axes, int(np.prod([mesh.shape[axis] for axis in axes]))


def default_block_size(rows_per_device: int, tile_elements: int = TILE_ELEMENTS) -> int:
    """Columns per tile: the largest halving of the local rows with rows x columns <= tile_elements."""
    block = rows_per_device
    while block % 2 == 0 and rows_per_device * block > tile_elements:
        block //= 2
    return block


def srcl_log_w_from_rows(
    sim_cur: jax.Array, sim_ref: jax.Array | None, alpha, log_mean: jax.Array, tau_w: float, w_min: float | None
) -> jax.Array:
    """SRCL's [B, B] log-weights of one direction rebuilt from its per-row statistic `log_mean` [B]
    (aux['srcl']['log_mean'] of the chunked loss): equal to regulators._srcl_log_w. Dense: diagnostics only."""
    diag = jnp.eye(sim_cur.shape[0], dtype=bool)
    log_w = jnp.where(diag, 0.0, -_srcl_log_s(sim_cur, sim_ref, alpha, tau_w) - log_mean[:, None])
    if w_min is not None:
        log_w = jnp.where(~diag & (log_w < math.log(w_min)), MASKED_LOG_WEIGHT, log_w)
    return log_w


def chunked_contrastive_loss(
    image_embed: jax.Array,
    text_embed: jax.Array,
    logit_scale: jax.Array,
    *,
    form: str = 'softmax',
    sigmoid_bias: jax.Array | None = None,
    regulators: RegulatorChain | None = None,
    step: jax.Array | int = 0,
    answers: Mapping[str, Any] | None = None,
    stop_grad_keys: bool = False,
    consistency_weight: float = 0.0,
    image_candidates: jax.Array | None = None,
    text_candidates: jax.Array | None = None,
    mesh: Mesh | None = None,
    block_size: int | None = None,
    comm: str = 'ring',
    dense_diagnostics: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """`regulators(step, sims, answers)` then `contrastive_loss(...)`, in memory-bounded chunks.

    Returns (loss, metrics, aux): loss and metrics as `contrastive_loss` ('loss_i2t', 'loss_t2i',
    'i2t_accuracy', 't2i_accuracy', 'consistency' when weighted) plus 'hardest_negative_similarity'
    (dual_encoder's metric); aux as RegulatorChain's, except aux['srcl'] = {'alpha', 'log_mean':
    (i2t, t2i) [B]} (+ 'log_w' [B, B] pair when `dense_diagnostics`).

    `answers[role]`: 'reference' -> (image, text) [B, E_r] embeddings of the frozen reference;
    'discriminator' -> (image, text) embeddings (cosine) or the ITM scoring function (`ask_embeddings`).
    `mesh`: default the context mesh (`jax.set_mesh`), else one device; rows are split over its
    batch axes. `block_size`: columns per tile (divides B / devices), default `default_block_size`.
    `comm`: 'ring' (ppermute) or 'all_gather'.
    """
    assert image_candidates is None and text_candidates is None, (
        "loss.impl='chunked' does not support ALBEF's momentum candidates (queue keys); use loss.impl='dense'."
    )
    if form not in ('softmax', 'sigmoid'):
        raise ValueError(f"loss form must be 'softmax' or 'sigmoid', got {form!r}")
    assert comm in COMMS, f'comm must be one of {COMMS}, got {comm!r}'
    assert form == 'softmax' or sigmoid_bias is not None, 'the sigmoid form needs the learnable bias'
    chain = regulators if regulators is not None else RegulatorChain()
    answers = dict(answers or {})
    mesh, axes, devices = _resolve_mesh(mesh)
    batch = image_embed.shape[0]
    assert text_embed.shape[0] == batch and batch % devices == 0, (image_embed.shape, text_embed.shape, devices)
    per_device = batch // devices
    block = int(block_size) if block_size else default_block_size(per_device)
    assert per_device % block == 0, f'block_size {block} must divide the {per_device} rows per device'

    emb = {
        'v': jax.lax.stop_gradient(image_embed.astype(jnp.float32)),
        't': jax.lax.stop_gradient(text_embed.astype(jnp.float32)),
    }
    scalars: dict[str, jax.Array] = {}
    settings: dict[str, Any] = {}
    aux: dict[str, Any] = {}
    alpha: Any = 0.0
    if chain.srcl is not None:
        s = chain.srcl
        assert batch >= 2, f'SRCL needs B >= 2, got {batch}'
        if s.w_min is not None:
            assert s.w_min > 0, f'w_min must be positive (None = off), got {s.w_min}'
        settings.update(srcl=True, srcl_reference=s.uses_reference, tau_w=s.tau_w, w_min=s.w_min)
        if s.uses_reference:
            alpha = srcl_alpha(step, s.alpha_start, s.alpha_end, s.decay_start, s.decay_end, s.alpha_shape)
            scalars['alpha'] = jax.lax.stop_gradient(jnp.asarray(alpha, jnp.float32))
            ref_image, ref_text = answers[REFERENCE]
            emb['rv'] = jax.lax.stop_gradient(ref_image.astype(jnp.float32))
            emb['rt'] = jax.lax.stop_gradient(ref_text.astype(jnp.float32))
        else:
            settings['alpha_static'] = 0.0
    if chain.cosmo is not None:
        c = chain.cosmo
        assert batch >= 3, f'COSMO needs two negatives per anchor (B >= 3), got B = {batch}'
        discriminator = answers[DISCRIMINATOR]
        settings.update(cosmo=True, cosmo_itm=callable(discriminator), high=c.high, low=c.low, smoothing=True)
        scalars['eps'] = jnp.where(step >= c.smoothing_start, jnp.asarray(c.eps, jnp.float32), 0.0)
        if not callable(discriminator):
            emb['dv'] = jax.lax.stop_gradient(discriminator[0].astype(jnp.float32))
            emb['dt'] = jax.lax.stop_gradient(discriminator[1].astype(jnp.float32))
    if chain.smoothing is not None:
        sm = chain.smoothing
        settings['smoothing'] = True
        scalars['eps'] = jnp.where(step >= sm.start, jnp.asarray(sm.eps, jnp.float32), 0.0)
    plan = _Plan(
        form=form,
        batch=batch,
        devices=devices,
        axes=axes,
        block=block,
        comm=comm,
        stop_grad_keys=bool(stop_grad_keys),
        consistency=bool(consistency_weight),
        **settings,
    )

    # Pass 1: per-row statistics, then the regulators' [B] decisions.
    rows, whole = PartitionSpec(axes), PartitionSpec()
    stats = jax.shard_map(functools.partial(_stats_body, plan), mesh=mesh, in_specs=(rows, whole), out_specs=rows)(
        emb, scalars
    )
    scale = jnp.asarray(logit_scale, jnp.float32)
    metrics: dict[str, jax.Array] = {}
    row_ids = jnp.arange(batch)
    for name, _, _ in DIRECTIONS:
        diag = scale * stats[name]['diag']
        hardest = scale * stats[name]['top']['value'][:, 0]
        first = stats[name]['top']['index'][:, 0]
        correct = (diag > hardest) | ((diag == hardest) & (row_ids < first))  # argmax(logits_i) == i
        metrics[f'{name}_accuracy'] = jnp.mean(correct)
    metrics['hardest_negative_similarity'] = jnp.mean(stats['i2t']['top']['value'][:, 0])

    regulated_rows: dict[str, dict[str, jax.Array]] = {'i2t': {}, 't2i': {}}
    if plan.srcl:
        log_means = tuple(stats[name]['lse'] - math.log(batch - 1) for name, _, _ in DIRECTIONS)
        for (name, _, _), log_mean in zip(DIRECTIONS, log_means):
            regulated_rows[name]['log_mean'] = log_mean
        aux['srcl'] = {'alpha': jnp.asarray(alpha, jnp.float32), 'log_mean': log_means}
        if dense_diagnostics:
            sims = jnp.einsum('ie,je->ij', emb['v'], emb['t'])
            refs = jnp.einsum('ie,je->ij', emb['rv'], emb['rt']) if plan.srcl_reference else None
            a = alpha if plan.alpha_static is None else plan.alpha_static
            aux['srcl']['log_w'] = tuple(
                srcl_log_w_from_rows(s, r, a, m, plan.tau_w, plan.w_min)
                for s, r, m in zip((sims, sims.T), (refs, None if refs is None else refs.T), log_means)
            )
    if plan.cosmo:
        tops = {name: stats[name]['top'] for name, _, _ in DIRECTIONS}
        if plan.cosmo_itm:
            scores = discriminator(tops['i2t']['index'][:, 0], tops['t2i']['index'][:, 0])
        else:
            scores = tuple(tops[name]['score'][:, 0] for name, _, _ in DIRECTIONS)
        aux['cosmo'] = {}
        for (name, _, _), q in zip(DIRECTIONS, scores):
            q = jax.lax.stop_gradient(q.astype(jnp.float32))
            converted = q > plan.high
            state = jnp.where(converted, STATE_CONVERTED, jnp.where(q >= plan.low, STATE_DROPPED, STATE_KEPT))
            hardest, second = tops[name]['index'][:, 0], tops[name]['index'][:, 1]
            regulated_rows[name].update(hardest=hardest, converted=converted)
            aux['cosmo'][name] = {
                'hardest': hardest,
                'second': second,
                'state': state.astype(jnp.int32),
                'converted': converted,
                'hardest_score': q,
            }

    # Passes 2 and 3: the loss, and its gradient by recomputation.
    consts = {'emb': {k: v for k, v in emb.items() if k not in ('v', 't')}, 'rows': regulated_rows, 'scalars': scalars}
    bias = jnp.zeros((), jnp.float32) if sigmoid_bias is None else jnp.asarray(sigmoid_bias, jnp.float32)
    diff = {'v': image_embed.astype(jnp.float32), 't': text_embed.astype(jnp.float32), 'scale': scale, 'bias': bias}
    parts = _loss_parts(plan, mesh)(diff, consts)
    metrics.update(loss_i2t=parts[0], loss_t2i=parts[1])
    loss = 0.5 * (parts[0] + parts[1])
    if consistency_weight:
        metrics['consistency'] = parts[2]
        loss = loss + consistency_weight * parts[2]
    return loss, metrics, aux
