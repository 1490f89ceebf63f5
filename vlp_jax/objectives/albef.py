"""ALBEF's objective on a fusion model: ITC + ITM + MLM (the momentum model arrives next).

- ITC: the dual encoder's regulated contrastive loss on the unimodal embeddings, so every
  regulator (SRCL, COSMO, smoothing) and GRIT's feedback work unchanged.
- ITM: per image one negative text and per text one negative image, chosen from the
  global batch by the model's own similarities ('sample': softmax, ALBEF; 'hardest':
  argmax, GRIT-VLP); the 3B pairs (positives, image negatives, text negatives) go through
  the fusion layers and the 2-way head.
- MLM: BERT masking (objectives/matching.py) of each caption, predicted from the fusion
  output with the caption's own image.

Loss = w_itc * ITC + w_itm * ITM + w_mlm * MLM (`loss.weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vlp_jax.data import batch as batch_spec
from vlp_jax.data.tokenizer import BERT_CLS_ID, BERT_MASK_ID, BERT_PAD_ID, BERT_SEP_ID
from vlp_jax.models.vlp import VLPModel, clamp_temperature
from vlp_jax.objectives.dual_encoder import DualEncoderContrastive
from vlp_jax.objectives.frozen import image_text_cosines
from vlp_jax.objectives.matching import SpecialTokens, choose_negatives, mask_tokens

PyTree = Any
# The objective's rng is split into these uses, one key each.
RNG_USES = ('towers', 'image_negatives', 'text_negatives', 'itm_fusion', 'mask', 'mlm_text', 'mlm_fusion')


def split_rng(rng: jax.Array) -> dict[str, jax.Array]:
    """One key per use (RNG_USES), so a test can reproduce any one of them."""
    return dict(zip(RNG_USES, jax.random.split(rng, len(RNG_USES))))


def masked_mean(values: jax.Array, where: jax.Array) -> jax.Array:
    where = where.astype(jnp.float32)
    return jnp.sum(values * where) / jnp.maximum(jnp.sum(where), 1.0)


class AlbefObjective:
    """Objective (objectives/base.py) of a fusion model: ITC + ITM + MLM."""

    batch_keys = batch_spec.REQUIRED_KEYS

    def __init__(self, config: ml_collections.ConfigDict, model: VLPModel, local_shards: int):
        assert model.config.kind == 'fusion', 'ALBEF needs a fusion model'
        self.model = model
        self.itc = DualEncoderContrastive(config, model, local_shards)
        self.frozen_roles = self.itc.frozen_roles
        self.negative_choice = str(config.loss.itm.negatives)
        self.mask_ratio = float(config.loss.mlm.mask_ratio)
        self.weights = {term: float(config.loss.weights[term]) for term in ('itc', 'itm', 'mlm')}
        self.special = SpecialTokens(BERT_CLS_ID, BERT_SEP_ID, BERT_PAD_ID, BERT_MASK_ID, model.config.text.vocab_size)

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        return {}

    def _apply(self, params: PyTree, *args, method: str | None = None, rng: jax.Array | None = None) -> Any:
        rngs = {'dropout': rng} if rng is not None else {}
        kwargs = {'deterministic': False} if rng is not None else {}
        return self.model.apply({'params': params}, *args, method=method, rngs=rngs, **kwargs)

    def itm_pairs(
        self, out: Mapping[str, jax.Array], text_mask: jax.Array, keys: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(image tokens, text tokens, text mask, labels) of the 3B ITM pairs: positives, then each text with
        a negative image, then each image with a negative text."""
        sims = image_text_cosines(out['image_embed'], out['text_embed'])  # rows images, no gradient
        negative_text = choose_negatives(keys['text_negatives'], sims, self.negative_choice)  # per image
        negative_image = choose_negatives(keys['image_negatives'], sims.T, self.negative_choice)  # per text
        images, texts = out['image_tokens'], out['text_tokens']
        pair_images = jnp.concatenate([images, images[negative_image], images])
        pair_texts = jnp.concatenate([texts, texts, texts[negative_text]])
        pair_masks = jnp.concatenate([text_mask, text_mask, text_mask[negative_text]])
        n = images.shape[0]
        labels = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)])
        return pair_images, pair_texts, pair_masks, labels

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
        out = self._apply(params, *(batch[key] for key in batch_spec.MODEL_INPUT_KEYS), rng=keys['towers'])
        itc, metrics, outputs = self.itc.contrastive(out, frozen, batch, step)

        pair_images, pair_texts, pair_masks, labels = self.itm_pairs(out, mask, keys)
        fused = self._apply(params, pair_texts, pair_masks, pair_images, method='fuse', rng=keys['itm_fusion'])
        itm_logits = self._apply(params, fused, method='itm_logits')
        itm = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(itm_logits, labels))

        masked_ids, predicted = mask_tokens(keys['mask'], ids, mask, self.mask_ratio, self.special)
        masked_tokens = self._apply(params, masked_ids, mask, method='text_tokens', rng=keys['mlm_text'])
        fused_masked = self._apply(
            params, masked_tokens, mask, out['image_tokens'], method='fuse', rng=keys['mlm_fusion']
        )
        mlm_logits = self._apply(params, fused_masked, method='mlm_logits')
        mlm = masked_mean(optax.softmax_cross_entropy_with_integer_labels(mlm_logits, ids), predicted)

        w = self.weights
        loss = w['itc'] * itc + w['itm'] * itm + w['mlm'] * mlm
        metrics.update(
            {
                'train/itc': itc,
                'train/itm': itm,
                'train/mlm': mlm,
                'train/itm_accuracy': jnp.mean(jnp.argmax(itm_logits, axis=-1) == labels),
                'train/mlm_accuracy': masked_mean(jnp.argmax(mlm_logits, axis=-1) == ids, predicted),
            }
        )
        return loss, metrics, outputs

    def after_update(self, params: PyTree, extra: PyTree, step: jax.Array) -> tuple[PyTree, PyTree]:
        return clamp_temperature(params, self.model.config), extra
