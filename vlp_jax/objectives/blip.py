"""BLIP's pretraining objective ('blip'): ITC + ITM + LM on a fusion model with an image-grounded decoder.

Li et al., "BLIP: Bootstrapping Language-Image Pre-training", ICML 2022 (models/blip_pretrain.py):

- ITC and ITM are ALBEF's (objectives/albef.py, reused): the regulated contrastive loss on the unimodal
  embeddings, so every regulator (SRCL, COSMO/MAFA, smoothing) and GRIT's feedback work unchanged, and
  ITM's pairs from the batch's ITC logits or from a regulator that decides them (MAFA's mining). BLIP adds
  1e-4 to the negative-sampling weights ("F.softmax(sim_i2t[:,:bs],dim=1)+1e-4"). The momentum model and
  its ITC distillation are optional, as in ALBEF (BLIP has them on).
- LM: the decoder (model.decoder, 'shared' in BLIP: every weight but the self-attention tied to the text
  encoder) reads each caption causally with its image's tokens and predicts the next token, with label
  smoothing 0.1 (objectives/lm.py). Its rows are the MLM rows ALBEF would mask: each caption with its
  own image, plus MAFA's converted pairs when a regulator decides the pairs. BLIP has no MLM.

Loss = w_itc * ITC + w_itm * ITM + w_lm * LM (`loss.weights.itc`, `itm`, `lm`; `loss.weights.mlm` is
ALBEF's and unused here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import LossSettings, settings_of
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.objectives.albef import (
    ENQUEUE,
    AlbefObjective,
    ItmSettings,
    MlmSettings,
    WeightSettings,
    masked_mean,
    split_rng,
)
from vlp_jax.objectives.base import ObjectiveParts
from vlp_jax.objectives.lm import LmSettings, decoder_batch, smoothed_cross_entropy
from vlp_jax.objectives.momentum import MomentumSettings
from vlp_jax.registry import OBJECTIVES

PyTree = Any
BLIP_NEGATIVE_FLOOR = 1e-4


def prompt_ids(prompt: str) -> tuple[int, ...]:
    """The prompt's WordPiece ids, without [CLS] and [SEP] (BLIP: "len(self.tokenizer(self.prompt).input_ids)-1"
    counts [CLS] as the start token's place)."""
    if not prompt:
        return ()
    tokens = shared_tokenizer(len(prompt) + 2)([prompt])  # a word piece has at least one character
    ids, count = tokens['text_ids'][0], int(tokens['text_mask'][0].sum())
    return tuple(int(i) for i in ids[1 : count - 1])


def decoder_problem(config: ml_collections.ConfigDict, objective: str, context: str) -> str | None:
    """One sentence when the model has no decoder, or one reading another context than `context`."""
    decoder = config.model.decoder
    if decoder.layout == 'none':
        return (
            f"objective {objective!r} needs the decoder: set model.decoder.layout='shared' (BLIP's) or 'separate' "
            '(docs/decoder.md).'
        )
    if decoder.context != context:
        got = decoder.context
        return f'config key model.decoder.context must be {context!r} for objective {objective!r}, got {got!r}.'
    prompt = str(config.loss.lm.prompt)
    if prompt and len(prompt_ids(prompt)) >= int(config.model.max_text_len) - 2:
        return f'config key loss.lm.prompt ({prompt!r}) leaves no room for a caption in model.max_text_len tokens.'
    return None


class LanguageModel:
    """The decoder's LM loss on rows of a batch: (loss, accuracy) over the scored target tokens."""

    def __init__(self, model: Any, settings: LmSettings):
        self.model = model
        self.smoothing = float(settings.label_smoothing)
        self.prompt = prompt_ids(settings.prompt)
        self.vocab_size = model.config.text.vocab_size

    def __call__(self, apply, params, text_ids, text_mask, context, context_mask, weights, rng):
        """`weights` [N] (0: a row not in use). `apply(params, *args, method, rng)` runs the model."""
        lm = decoder_batch(text_ids, text_mask, self.prompt)
        hidden = apply(params, lm.inputs, lm.mask, context, context_mask, method='decode', rng=rng)
        logits = apply(params, hidden, method='lm_logits')
        scored = lm.weights * weights[:, None]
        losses = smoothed_cross_entropy(logits, lm.targets, self.smoothing, self.vocab_size)
        hits = jnp.argmax(logits[..., : self.vocab_size], axis=-1) == lm.targets
        return masked_mean(losses, scored), masked_mean(hits, scored)


@OBJECTIVES.register('blip', groups={'loss.lm': LmSettings})
class BlipObjective(AlbefObjective):
    """ITC + ITM + LM (BLIP), with ALBEF's momentum model as an option."""

    negative_floor = BLIP_NEGATIVE_FLOOR

    def __init__(
        self,
        loss: LossSettings,
        weights: WeightSettings,
        itm: ItmSettings,
        mlm: MlmSettings,
        momentum: MomentumSettings,
        lm: LmSettings,
        parts: ObjectiveParts,
    ):
        super().__init__(loss, weights, itm, mlm, momentum, parts)
        self.lm = LanguageModel(parts.model, lm)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> BlipObjective:
        return cls(
            settings_of(config, LossSettings),
            settings_of(config, WeightSettings),
            settings_of(config, ItmSettings),
            settings_of(config, MlmSettings),
            settings_of(config, MomentumSettings),
            settings_of(config, LmSettings),
            parts,
        )

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        return decoder_problem(config, 'blip', 'image') or super().check(config)

    def loss(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        keys = split_rng(rng)
        ids, mask = batch['text_ids'], batch['text_mask']
        out, momentum_out, itc, metrics, outputs = self.forward_and_itc(params, extra, frozen, batch, keys, step)
        out_m = momentum_out.outputs if momentum_out is not None else None
        itm_set, lm_set = self.choose_pairs(out, outputs, keys, out_m)
        itm, itm_accuracy = self.itm_loss(params, out, mask, itm_set, keys['itm_fusion'])
        image_tokens = out['image_tokens'][lm_set.image]
        lm, lm_accuracy = self.lm(
            self._apply,
            params,
            ids[lm_set.text],
            mask[lm_set.text],
            image_tokens,
            None,
            lm_set.weight,
            keys['mlm_fusion'],
        )
        if self.momentum is not None:
            outputs[ENQUEUE] = (out_m['image_embed'], out_m['text_embed'])
        w = self.weights
        loss = w['itc'] * itc + w['itm'] * itm + w['lm'] * lm
        metrics.update(
            {
                'train/itc': itc,
                'train/itm': itm,
                'train/lm': lm,
                'train/itm_accuracy': itm_accuracy,
                'train/lm_accuracy': lm_accuracy,
                'train/lm_pairs': jnp.sum(lm_set.weight),
            }
        )
        return loss, metrics, outputs
