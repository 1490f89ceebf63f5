"""Config -> regulators, applied in order: the glue between `loss.*` and regulators.py.

`config.loss.regulators` names the regulators (validated by `config.validate_loss`:
known names, the order srcl -> cosmo -> smoothing, never cosmo + smoothing). Each one
reads its own block (`loss.srcl`, `loss.cosmo`, `loss.smoothing`). Frozen models the
regulators need are identified by checkpoint path; two regulators naming the same path
share one model (loaded once, run once per step).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import alpha_decay_end, smoothing_start, srcl_needs_reference
from vlp_jax.objectives.contrastive import Regulation
from vlp_jax.objectives.regulators import (Pair, cosmo_regulation, smoothing_regulation, srcl_alpha,
                                           srcl_regulation)


def _regulators(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(config.loss.get('regulators', ()))


def reference_roles(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Config key -> checkpoint path of every frozen model the selected regulators read."""
    roles = {}
    regulators = _regulators(config)
    if 'srcl' in regulators and srcl_needs_reference(config):
        roles['loss.srcl.reference_checkpoint'] = config.loss.srcl.reference_checkpoint
    if 'cosmo' in regulators:
        roles['loss.cosmo.reference_checkpoint'] = config.loss.cosmo.reference_checkpoint
    return roles


def reference_checkpoints(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The distinct reference paths, in a fixed order: the frozen param trees the step receives."""
    paths: list[str] = []
    for path in reference_roles(config).values():
        if os.path.normpath(path) not in [os.path.normpath(p) for p in paths]:
            paths.append(path)
    return tuple(paths)


def _reference_index(config: ml_collections.ConfigDict, key: str) -> int:
    wanted = os.path.normpath(reference_roles(config)[key])
    return [os.path.normpath(p) for p in reference_checkpoints(config)].index(wanted)


def apply_regulators(config: ml_collections.ConfigDict, step: jax.Array, sim_cur: jax.Array,
                     reference_sims: Sequence[jax.Array]) -> tuple[Pair, dict[str, Any]]:
    """The (i2t, t2i) Regulations of the configured regulators, plus what diagnostics need.

    `sim_cur` [B, B] are the training model's image-text cosines (rows images), and
    `reference_sims[k]` the same for the k-th of `reference_checkpoints(config)`.
    Returns (pair, aux): aux['srcl'] = {'alpha', 'log_w': (i2t, t2i)} (SRCL's own
    weights, before COSMO), aux['cosmo'] = cosmo_regulation's per-direction info.
    With no regulators the pair is two empty Regulations (InfoNCE / SigLIP).
    """
    pair: Pair | None = None
    aux: dict[str, Any] = {}
    regulators = _regulators(config)
    if 'srcl' in regulators:
        block = config.loss.srcl
        if srcl_needs_reference(config):
            alpha = srcl_alpha(step, block.alpha_start, block.alpha_end, block.alpha_decay_start,
                               alpha_decay_end(config), block.alpha_shape)
            sim_ref = reference_sims[_reference_index(config, 'loss.srcl.reference_checkpoint')]
        else:
            alpha, sim_ref = 0.0, None
        pair = srcl_regulation(sim_cur, sim_ref, alpha, tau_w=block.tau_w,
                               w_min=block.w_min if block.w_min > 0 else None, base=pair)
        aux['srcl'] = {'alpha': jnp.asarray(alpha, jnp.float32), 'log_w': (pair[0].log_w, pair[1].log_w)}
    if 'cosmo' in regulators:
        block = config.loss.cosmo
        scores = reference_sims[_reference_index(config, 'loss.cosmo.reference_checkpoint')]
        pair, aux['cosmo'] = cosmo_regulation(sim_cur, scores, block.high, block.low, block.eps,
                                              step >= smoothing_start(config, block.smoothing_start_step), base=pair)
    if 'smoothing' in regulators:
        block = config.loss.smoothing
        pair = smoothing_regulation(sim_cur.shape[0], block.eps, step >= smoothing_start(config, block.start_step),
                                    base=pair)
    return (pair if pair is not None else (Regulation(), Regulation())), aux
