"""The entry point: settings into a plan, pass 1, the regulators' [B] decisions, then the differentiable loss."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from vlp_jax.objectives.chunked.loss_parts import _loss_parts
from vlp_jax.objectives.chunked.plan import COMMS, DIRECTIONS, _Plan, _resolve_mesh, default_block_size, role_key
from vlp_jax.objectives.chunked.statistics import _stats_body
from vlp_jax.objectives.regulators.chain import RegulatorChain, full_tiles


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
    """`regulators.dense(...)` then `contrastive_loss(...)`, in memory-bounded chunks.

    Returns (loss, metrics, aux): loss and metrics as `contrastive_loss` ('loss_i2t', 'loss_t2i',
    'i2t_accuracy', 't2i_accuracy', 'consistency' when weighted) plus 'hardest_negative_similarity'
    (dual_encoder's metric); aux as the chain's `decide` gives it (per regulator: what its
    decisions were), plus each regulator's `dense_aux` when `dense_diagnostics` (a [B, B] rebuild,
    for the ground-truth probe at small B).

    `answers[role]`: a 'cosine' role's (image, text) [B, E] embeddings (they travel with the
    candidates, so the role's cosines are formed per tile), other roles' answers as they come (an
    ITM discriminator's scoring function, called with the [B] indices it is asked about).
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
    for regulator in chain.regulators:
        assert batch >= regulator.min_batch, f'{regulator.name} needs B >= {regulator.min_batch}, got {batch}'

    sg = lambda x: jax.lax.stop_gradient(x.astype(jnp.float32))
    emb = {'v': sg(image_embed), 't': sg(text_embed)}
    roles = tuple(role for role, answer in answers.items() if isinstance(answer, tuple))
    for role in roles:
        emb[role_key(role, 'v')], emb[role_key(role, 't')] = sg(answers[role][0]), sg(answers[role][1])
    chain_scalars = jax.tree.map(jax.lax.stop_gradient, chain.prepare(jnp.asarray(step)))
    eps = chain.uniform_mix(chain_scalars)
    scalars = {'chain': chain_scalars, 'eps': eps if eps is not None else jnp.zeros((), jnp.float32)}
    plan = _Plan(
        form=form,
        batch=batch,
        devices=devices,
        axes=axes,
        block=block,
        comm=comm,
        stop_grad_keys=bool(stop_grad_keys),
        consistency=bool(consistency_weight),
        chain=chain,
        roles=roles,
        smooths=eps is not None,
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

    decided, aux = chain.decide({name: stats[name]['chain'] for name, _, _ in DIRECTIONS}, chain_scalars, answers)
    if dense_diagnostics and chain.active:  # one [B, B] tile, as the dense loss sees it
        tiles = full_tiles(jnp.einsum('ie,je->ij', emb['v'], emb['t']), {r: answers[r] for r in roles})
        records = {name: {} for name, _, _ in DIRECTIONS}
        for name, _, _ in DIRECTIONS:
            chain.targets(tiles[name], decided[name], chain_scalars, records[name])
        for regulator in chain.regulators:
            extra = regulator.dense_aux(records['i2t'][regulator.name], records['t2i'][regulator.name])
            aux[regulator.name] = {**aux[regulator.name], **extra}

    # Passes 2 and 3: the loss, and its gradient by recomputation.
    consts = {'emb': {k: v for k, v in emb.items() if k not in ('v', 't')}, 'rows': decided, 'scalars': scalars}
    bias = jnp.zeros((), jnp.float32) if sigmoid_bias is None else jnp.asarray(sigmoid_bias, jnp.float32)
    diff = {'v': image_embed.astype(jnp.float32), 't': text_embed.astype(jnp.float32), 'scale': scale, 'bias': bias}
    parts = _loss_parts(plan, mesh)(diff, consts)
    metrics.update(loss_i2t=parts[0], loss_t2i=parts[1])
    loss = 0.5 * (parts[0] + parts[1])
    if consistency_weight:
        metrics['consistency'] = parts[2]
        loss = loss + consistency_weight * parts[2]
    return loss, metrics, aux
