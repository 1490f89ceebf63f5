"""Captioning fine-tuning ('captioning'): the image-grounded decoder's LM loss alone, BLIP's recipe
(models/blip.py `blip_decoder`): every caption written after a prompt ('a picture of ', `loss.lm.prompt`), the
prompt's tokens masked out of the loss ("decoder_targets[:,:self.prompt_length] = -100"), label smoothing 0.1
(med.py). The decoder reads the image's tokens (model.decoder.context='image'); ITC, ITM and the regulators
play no part. Its evaluator is 'captioning' (evaluators/captioning.py: BLEU-4 and CIDEr of beam-searched
captions); `python -m vlp_jax.generate` captions images with a trained run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import settings_of
from vlp_jax.objectives.base import Objective, ObjectiveParts
from vlp_jax.objectives.blip import LanguageModel, decoder_problem
from vlp_jax.objectives.lm import LmSettings
from vlp_jax.registry import OBJECTIVES

PyTree = Any


@OBJECTIVES.register('captioning', groups={'loss.lm': LmSettings})
class CaptioningObjective(Objective):
    """The decoder's LM loss on each (image, caption) pair of the batch."""

    model_kinds = ('fusion',)
    batch_keys = ('image', 'text_ids', 'text_mask')
    frozen_roles = ()

    def __init__(self, lm: LmSettings, parts: ObjectiveParts):
        self.model = parts.model
        self.lm = LanguageModel(parts.model, lm)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> CaptioningObjective:
        return cls(settings_of(config, LmSettings), parts)

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        problem = decoder_problem(config, 'captioning', 'image')
        if problem is None and tuple(config.loss.regulators):
            problem = "objective 'captioning' has no contrastive loss to regulate: set loss.regulators=()."
        return problem

    def _apply(self, params: PyTree, *args, method: str | None = None, rng: jax.Array | None = None) -> Any:
        rngs = {'dropout': rng} if rng is not None else {}
        kwargs = {'deterministic': False} if rng is not None else {}
        return self.model.apply({'params': params}, *args, method=method, rngs=rngs, **kwargs)

    def loss(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        towers, decoder = jax.random.split(rng)
        image_tokens = self._apply(params, batch['image'], method='image_tokens', rng=towers)
        rows = jnp.ones(batch['text_ids'].shape[0], jnp.float32)
        lm, accuracy = self.lm(
            self._apply, params, batch['text_ids'], batch['text_mask'], image_tokens, None, rows, decoder
        )
        return lm, {'train/loss': lm, 'train/lm': lm, 'train/lm_accuracy': accuracy}, {}
