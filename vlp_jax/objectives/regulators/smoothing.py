"""Uniform label smoothing alone (COSMO's eps and start, no conversion): the ablation that separates them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlp_jax.config import key
from vlp_jax.objectives.regulators.base import SMOOTHING, Regulator
from vlp_jax.registry import REGULATORS


@dataclasses.dataclass(frozen=True)
class SmoothingSettings:
    """Uniform smoothing of the targets: y <- (1 - eps) y + eps / (candidates in the loss)."""

    eps: float = key(0.5, 'the smoothing weight', check=lambda v: None if 0 <= v <= 1 else 'must be in [0, 1]')
    start_step: int = key(
        -1, '-1: the first step of epoch 1', check=lambda v: None if v >= -1 else 'must be >= 0 (or -1 = epoch 1)'
    )


@REGULATORS.register('smoothing')
class Smoothing(Regulator):
    """Smooths the targets from `start_step` on; leaves weights and positives alone."""

    Settings = SmoothingSettings
    stage = SMOOTHING
    smooths = True

    def __init__(self, settings: SmoothingSettings, context):
        super().__init__(settings, context)
        self.start = context.steps_per_epoch if settings.start_step == -1 else settings.start_step

    def check(self) -> str | None:
        if self.context.loss_form == 'sigmoid':
            return (
                "config key loss.regulators has 'smoothing', which the sigmoid loss cannot take "
                "(it treats every target > 0 as a positive); use loss.form='softmax'."
            )
        return None

    def prepare(self, step: jax.Array) -> dict[str, jax.Array]:
        return {'eps': jnp.where(step >= self.start, jnp.asarray(self.settings.eps, jnp.float32), 0.0)}

    def uniform_mix(self, scalars: Mapping[str, jax.Array]) -> jax.Array:
        return scalars['eps']
