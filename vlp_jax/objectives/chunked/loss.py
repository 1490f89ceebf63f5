"""The entry point: settings into a plan, pass 1, the regulators' [B] decisions, then the differentiable loss."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from vlp_jax.objectives.chunked.loss_parts import _loss_parts
from vlp_jax.objectives.chunked.plan import COMMS, DIRECTIONS, _Plan, _resolve_mesh, default_block_size
from vlp_jax.objectives.chunked.statistics import _stats_body
from vlp_jax.objectives.frozen import DISCRIMINATOR, REFERENCE
from vlp_jax.objectives.regulate import RegulatorChain
from vlp_jax.objectives.regulators import (
    MASKED_LOG_WEIGHT,
    STATE_CONVERTED,
    STATE_DROPPED,
    STATE_KEPT,
    _srcl_log_s,
    srcl_alpha,
)


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
