"""Config -> the chain of regulators, resolved once outside jit and applied in order inside it.

`config.loss.regulators` names the regulators (validated by `validation.validate_loss`:
known names, the order srcl -> cosmo -> smoothing, never cosmo + smoothing). Each one
reads its own block (`loss.srcl`, `loss.cosmo`, `loss.smoothing`); every value the
traced code needs is copied into a frozen dataclass here, so nothing under jit reads
the config. Frozen models are named by role (objectives/frozen.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import alpha_decay_end, smoothing_start, srcl_needs_reference
from vlp_jax.objectives.contrastive import Regulation
from vlp_jax.objectives.frozen import DISCRIMINATOR, REFERENCE
from vlp_jax.objectives.regulators import Pair, cosmo_regulation, smoothing_regulation, srcl_alpha, srcl_regulation


@dataclasses.dataclass(frozen=True)
class SrclSettings:
    uses_reference: bool
    alpha_start: float
    alpha_end: float
    decay_start: int
    decay_end: int
    alpha_shape: str
    tau_w: float
    w_min: float | None


@dataclasses.dataclass(frozen=True)
class CosmoSettings:
    high: float
    low: float
    eps: float
    smoothing_start: int


@dataclasses.dataclass(frozen=True)
class SmoothingSettings:
    eps: float
    start: int


@dataclasses.dataclass(frozen=True)
class RegulatorChain:
    """The configured regulators; `None` for each one not selected."""

    srcl: SrclSettings | None = None
    cosmo: CosmoSettings | None = None
    smoothing: SmoothingSettings | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RegulatorChain:
        regulators = tuple(config.loss.get('regulators', ()))
        srcl = cosmo = smoothing = None
        if 'srcl' in regulators:
            block = config.loss.srcl
            srcl = SrclSettings(
                uses_reference=srcl_needs_reference(config),
                alpha_start=float(block.alpha_start),
                alpha_end=float(block.alpha_end),
                decay_start=int(block.alpha_decay_start),
                decay_end=alpha_decay_end(config),
                alpha_shape=str(block.alpha_shape),
                tau_w=float(block.tau_w),
                w_min=float(block.w_min) if block.w_min > 0 else None,
            )
        if 'cosmo' in regulators:
            block = config.loss.cosmo
            cosmo = CosmoSettings(
                high=float(block.high),
                low=float(block.low),
                eps=float(block.eps),
                smoothing_start=smoothing_start(config, block.smoothing_start_step),
            )
        if 'smoothing' in regulators:
            block = config.loss.smoothing
            smoothing = SmoothingSettings(eps=float(block.eps), start=smoothing_start(config, block.start_step))
        return cls(srcl, cosmo, smoothing)

    @property
    def active(self) -> bool:
        return any(r is not None for r in (self.srcl, self.cosmo, self.smoothing))

    def __call__(
        self, step: jax.Array, sim_cur: jax.Array, answers: Mapping[str, jax.Array]
    ) -> tuple[Pair, dict[str, Any]]:
        """The (i2t, t2i) Regulations, plus what probes need.

        `sim_cur` [B, B] are the training model's image-text cosines (rows images) and
        `answers[role]` what each frozen model answered on the same batch. Returns (pair,
        aux): aux['srcl'] = {'alpha', 'log_w': (i2t, t2i)} (SRCL's own weights, before
        COSMO), aux['cosmo'] = cosmo_regulation's per-direction info. With no regulators
        the pair is two empty Regulations (InfoNCE / SigLIP).
        """
        pair: Pair | None = None
        aux: dict[str, Any] = {}
        if self.srcl is not None:
            s = self.srcl
            if s.uses_reference:
                alpha = srcl_alpha(step, s.alpha_start, s.alpha_end, s.decay_start, s.decay_end, s.alpha_shape)
                sim_ref = answers[REFERENCE]
            else:
                alpha, sim_ref = 0.0, None
            pair = srcl_regulation(sim_cur, sim_ref, alpha, tau_w=s.tau_w, w_min=s.w_min, base=pair)
            aux['srcl'] = {'alpha': jnp.asarray(alpha, jnp.float32), 'log_w': (pair[0].log_w, pair[1].log_w)}
        if self.cosmo is not None:
            c = self.cosmo
            pair, aux['cosmo'] = cosmo_regulation(
                sim_cur, answers[DISCRIMINATOR], c.high, c.low, c.eps, step >= c.smoothing_start, base=pair
            )
        if self.smoothing is not None:
            pair = smoothing_regulation(sim_cur.shape[0], self.smoothing.eps, step >= self.smoothing.start, base=pair)
        return (pair if pair is not None else (Regulation(), Regulation())), aux
