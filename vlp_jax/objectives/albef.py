"""ALBEF's objective on a fusion model: ITC + ITM + MLM, with ALBEF's momentum model as an option.

- ITC: the dual encoder's regulated contrastive loss on the unimodal embeddings, so every
  regulator (SRCL, COSMO, smoothing) and GRIT's feedback work unchanged.
- ITM: per image one negative text and per text one negative image, chosen from the
  global batch by the model's own ITC logits ('sample': softmax at the learned temperature,
  against the momentum keys when the momentum model runs, ALBEF; 'hardest': argmax,
  GRIT-VLP); the 3B pairs (positives, image negatives, text negatives) go through
  the fusion layers and the 2-way head.
- MLM: BERT masking (objectives/matching.py) of each MLM row (each caption with its own
  image; MAFA adds its converted pairs, each row masked by its own draw), predicted from
  the fusion output. Only the predicted positions reach the tied word
  logits (`loss.mlm.max_predictions` per caption, derived by default), not all L.
- Momentum model (`loss.momentum.enabled`, objectives/momentum.py): EMA params in
  `extra`; ITC's keys are its embeddings of the batch plus a queue, targets distilled
  from its softmax; MLM's loss mixes in its word distribution on the same masked input:
  (1 - alpha) * CE + alpha * soft CE, as ALBEF. It runs without dropout.

Loss = w_itc * ITC + w_itm * ITM + w_mlm * MLM (`loss.weights`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vlp_jax.config import LossSettings, at_least, in_range, key, non_negative, settings_of
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.tokenizer import BERT_CLS_ID, BERT_MASK_ID, BERT_PAD_ID, BERT_SEP_ID
from vlp_jax.models.vlp import clamp_temperature
from vlp_jax.objectives.base import REGULATION, Objective, ObjectiveParts
from vlp_jax.objectives.dual_encoder import DualEncoderContrastive
from vlp_jax.objectives.frozen import image_text_cosines
from vlp_jax.objectives.matching import (
    NEGATIVE_CHOICES,
    Pairs,
    SpecialTokens,
    caption_pairs,
    choose_negatives,
    itm_pairs,
    mask_tokens,
    prediction_positions,
    resolve_max_predictions,
    selection_draws,
)
from vlp_jax.objectives.momentum import (
    MOMENTUM_PARAMS,
    Momentum,
    MomentumSettings,
    candidates,
    ema,
    enqueue,
    init_momentum_extra,
)
from vlp_jax.registry import OBJECTIVES

PyTree = Any
# outputs[ENQUEUE]: the momentum embeddings (image, text) of this batch, for the queue.
ENQUEUE = 'enqueue'
# The objective's rng is split into these uses, one key each.
RNG_USES = ('towers', 'image_negatives', 'text_negatives', 'itm_fusion', 'mask', 'mlm_text', 'mlm_fusion')


def split_rng(rng: jax.Array) -> dict[str, jax.Array]:
    """One key per use (RNG_USES), so a test can reproduce any one of them."""
    return dict(zip(RNG_USES, jax.random.split(rng, len(RNG_USES))))


def masked_mean(values: jax.Array, where: jax.Array) -> jax.Array:
    """sum(values * where) / sum(where): a mean over the selected (bool) or weighted (float) entries."""
    where = where.astype(jnp.float32)
    return jnp.sum(values * where) / jnp.maximum(jnp.sum(where), 1.0)


@dataclasses.dataclass(frozen=True)
class WeightSettings:
    """ALBEF's loss = itc * ITC + itm * ITM + mlm * MLM."""

    itc: float = key(1.0, 'weight of image-text contrastive', check=non_negative)
    itm: float = key(1.0, 'weight of image-text matching', check=non_negative)
    mlm: float = key(1.0, 'weight of masked language modelling', check=non_negative)
    lm: float = key(1.0, "weight of the decoder's language modelling (objective 'blip')", check=non_negative)


@dataclasses.dataclass(frozen=True)
class ItmSettings:
    """Image-text matching: one negative per anchor from the batch's ITC logits."""

    negatives: str = key(
        'sample',
        "'sample': drawn from softmax(sim / temp) (ALBEF) | 'hardest': the argmax (GRIT-VLP) | 'uniform': any "
        'other pair with equal probability (an ablation: easy negatives)',
        choices=NEGATIVE_CHOICES,
    )


@dataclasses.dataclass(frozen=True)
class MlmSettings:
    """Masked language modelling on the fusion output (BERT's 80/10/10 corruption)."""

    mask_ratio: float = key(
        0.15,
        'share of tokens predicted (ALBEF/SRCL 0.15, GRIT-VLP/MAFA 0.5)',
        check=in_range(0, 1, low_open=True, high_open=True),
    )
    max_predictions: int = key(
        -1,
        'predicted tokens per caption that reach the word logits (-1: derived, a caption exceeds it with '
        'p < 1e-4; 0: every position)',
        check=at_least(-1),
    )


class MomentumForward(NamedTuple):
    """The momentum model's params, its outputs on the batch and the distillation weight alpha at this step."""

    params: PyTree
    outputs: dict[str, jax.Array]
    alpha: jax.Array


@OBJECTIVES.register(
    'albef',
    groups={
        'loss.weights': WeightSettings,
        'loss.itm': ItmSettings,
        'loss.mlm': MlmSettings,
        'loss.momentum': MomentumSettings,
    },
)
class AlbefObjective(Objective):
    """A fusion model's ITC + ITM + MLM (ALBEF), with the momentum model as an option."""

    model_kinds = ('fusion',)
    batch_keys = batch_spec.REQUIRED_KEYS
    # Added to ITM's negative-sampling weights: 0 in ALBEF, 1e-4 in BLIP ("F.softmax(sim_i2t[:,:bs],dim=1)+1e-4").
    negative_floor: float = 0.0

    def __init__(
        self,
        loss: LossSettings,
        weights: WeightSettings,
        itm: ItmSettings,
        mlm: MlmSettings,
        momentum: MomentumSettings,
        parts: ObjectiveParts,
    ):
        model = parts.model
        assert model.config.kind == 'fusion', 'ALBEF needs a fusion model'
        self.model = model
        self.itc = DualEncoderContrastive(loss, parts)
        self.frozen_roles = self.itc.frozen_roles
        self.negative_choice = itm.negatives
        self.mask_ratio = float(mlm.mask_ratio)
        self.max_predictions = resolve_max_predictions(mlm.max_predictions, model.config.text.max_len, self.mask_ratio)
        self.weights = {term: float(getattr(weights, term)) for term in ('itc', 'itm', 'mlm', 'lm')}
        self.special = SpecialTokens(BERT_CLS_ID, BERT_SEP_ID, BERT_PAD_ID, BERT_MASK_ID, model.config.text.vocab_size)
        self.momentum = Momentum.of(momentum, parts.steps_per_epoch)
        # A regulator that decides the ITM and MLM pairs itself (MAFA's mining): at most one, checked.
        deciders = [r for r in parts.regulators.regulators if r.decides_pairs]
        self.pair_decider = deciders[0] if deciders else None

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> AlbefObjective:
        return cls(
            settings_of(config, LossSettings),
            settings_of(config, WeightSettings),
            settings_of(config, ItmSettings),
            settings_of(config, MlmSettings),
            settings_of(config, MomentumSettings),
            parts,
        )

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        from vlp_jax.registry import REGULATORS

        loss, momentum = config.loss, config.loss.momentum
        deciders = [name for name in loss.regulators if REGULATORS.get(name).decides_pairs]
        if len(deciders) > 1:
            return f'config key loss.regulators has {deciders}, which all decide the ITM pairs; keep one.'
        if deciders and loss.itm.negatives != 'hardest':
            return (
                f"config key loss.itm.negatives must be 'hardest' with loss.regulators {deciders[0]!r} on a fusion "
                "model: MAFA's ITM negatives are the mined j1 or j2 (docs/methods.md)."
            )
        queue = int(momentum.queue_size)
        if queue and not momentum.enabled:
            return (
                f'config key loss.momentum.queue_size ({queue}) needs loss.momentum.enabled=True (the queue holds '
                'momentum features); set it to 0 or enable the momentum model.'
            )
        if queue % int(config.batch_size):
            return (
                f'config key loss.momentum.queue_size ({queue}) must be a multiple of batch_size ({config.batch_size}).'
            )
        if momentum.enabled and loss.form != 'softmax':
            return "config key loss.form must be 'softmax' with loss.momentum.enabled (distillation targets are soft)."
        if momentum.enabled and (loss.stop_grad_keys or loss.consistency_weight):
            return (
                'config keys loss.stop_grad_keys and loss.consistency_weight are GRIT-VLP options that do not apply '
                'with loss.momentum.enabled (the momentum keys carry no gradient; candidates are not square); turn '
                'them off.'
            )
        return None

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        if self.momentum is None:
            return {}
        return init_momentum_extra(params, self.momentum.queue_size, self.model.config.embed_dim)

    def _apply(self, params: PyTree, *args, method: str | None = None, rng: jax.Array | None = None) -> Any:
        rngs = {'dropout': rng} if rng is not None else {}
        kwargs = {'deterministic': False} if rng is not None else {}
        return self.model.apply({'params': params}, *args, method=method, rngs=rngs, **kwargs)

    def choose_pairs(
        self,
        out: Mapping[str, jax.Array],
        outputs: Mapping[str, Any],
        keys: Mapping[str, jax.Array],
        out_m: Mapping[str, jax.Array] | None = None,
    ) -> tuple[Pairs, Pairs]:
        """(ITM pairs, MLM pairs): ALBEF's / GRIT-VLP's negatives from the model's ITC logits, or those a
        regulator decided (MAFA's mining: Regulator.matching_pairs).

        The logits are ITC's: ALBEF samples from "F.softmax(sim_i2t[:,:bs],dim=1)" with "sim_i2t =
        image_feat @ text_feat_all / self.temp" and "text_feat_all = torch.cat([text_feat_m.t(), ...])",
        so the online anchors against the batch's momentum keys when the momentum model runs (`out_m`),
        at the learned temperature; without it, the online embeddings on both sides. 'hardest' (GRIT-VLP,
        which has no momentum model) keeps the online cosines on both sides either way.
        """
        if self.pair_decider is not None:
            return self.pair_decider.matching_pairs(outputs[REGULATION][self.pair_decider.name])
        sims = image_text_cosines(out['image_embed'], out['text_embed'])  # rows images, no gradient
        sims_t2i = sims.T
        if out_m is not None and self.negative_choice == 'sample':  # columns: the momentum keys (ITC's first B)
            sims = image_text_cosines(out['image_embed'], out_m['text_embed'])
            sims_t2i = image_text_cosines(out['text_embed'], out_m['image_embed'])  # a plain dot product
        scale = out['logit_scale']
        floor = self.negative_floor
        negative_text = choose_negatives(keys['text_negatives'], sims, self.negative_choice, scale, floor)  # per image
        negative_image = choose_negatives(keys['image_negatives'], sims_t2i, self.negative_choice, scale, floor)
        return itm_pairs(negative_image, negative_text), caption_pairs(sims.shape[0])

    def forward_and_itc(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        keys: Mapping[str, jax.Array],
        step: jax.Array,
    ) -> tuple[dict[str, jax.Array], MomentumForward | None, jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """The towers' forward, the momentum model's (when configured) and the ITC term: (outputs, momentum
        forward or None, itc, metrics, objective outputs). ALBEF's and BLIP's losses both start here."""
        inputs = tuple(batch[key] for key in batch_spec.MODEL_INPUT_KEYS)
        out = self._apply(params, *inputs, rng=keys['towers'])
        momentum = momentum_out = None
        if self.momentum is not None:
            momentum_params = jax.lax.stop_gradient(extra[MOMENTUM_PARAMS])
            out_m = jax.lax.stop_gradient(self._apply(momentum_params, *inputs))
            momentum_out = MomentumForward(momentum_params, out_m, self.momentum.alpha(step))
            momentum = (candidates(extra, out_m['image_embed'], out_m['text_embed']), momentum_out.alpha)
        itc, metrics, outputs = self.itc.contrastive(out, frozen, batch, step, momentum)
        return out, momentum_out, itc, metrics, outputs

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

        itm_set, mlm_set = self.choose_pairs(out, outputs, keys, out_m)
        itm, itm_accuracy = self.itm_loss(params, out, mask, itm_set, keys['itm_fusion'])
        images = out['image_tokens']

        # Every MLM row is masked by its own draw, as MAFA's "self.mask(add_pos_input_ids, ...)" masks the
        # concatenated input ids of all its rows: an extra (converted) pair does not reuse its caption's mask.
        # With ALBEF's B caption rows (in order) this is the draw over the captions themselves.
        rows, in_use = mlm_set.text, mlm_set.weight[:, None] > 0
        mlm_ids, mlm_mask = ids[rows], mask[rows]
        masked_ids, selected = mask_tokens(
            keys['mask'], mlm_ids, mlm_mask, self.mask_ratio, self.special, self.max_predictions
        )
        masked_tokens = self._apply(params, masked_ids, mlm_mask, method='text_tokens', rng=keys['mlm_text'])
        fused_masked = self._apply(
            params, masked_tokens, mlm_mask, images[mlm_set.image], method='fuse', rng=keys['mlm_fusion']
        )
        targets, predicted = mlm_ids, selected & in_use
        scored = lambda tokens: tokens  # [P, L, ...]: every position
        if self.max_predictions:  # only the (at most K) predicted positions of each caption reach the word logits
            positions, predicted = prediction_positions(predicted, self.max_predictions)
            scored = lambda x: jnp.take_along_axis(x, positions.reshape(positions.shape + (1,) * (x.ndim - 2)), axis=1)
            targets = scored(targets)
        mlm_logits = self._apply(params, scored(fused_masked), method='mlm_logits')
        mlm = masked_mean(optax.softmax_cross_entropy_with_integer_labels(mlm_logits, targets), predicted)
        if momentum_out is not None:
            momentum_fused = self._momentum_fused(momentum_out.params, masked_ids, mlm_mask, out_m, mlm_set)
            momentum_logits = jax.lax.stop_gradient(
                self._apply(momentum_out.params, scored(momentum_fused), method='mlm_logits')
            )
            soft = jax.nn.softmax(momentum_logits, -1)
            distill = masked_mean(optax.softmax_cross_entropy(mlm_logits, soft), predicted)
            metrics['train/mlm_distill'] = distill
            mlm = (1.0 - momentum_out.alpha) * mlm + momentum_out.alpha * distill
            outputs[ENQUEUE] = (out_m['image_embed'], out_m['text_embed'])
        if self.max_predictions:  # of the rows in use, the share of drawn positions the cap left out
            drawn, _ = selection_draws(keys['mask'], mlm_ids, mlm_mask, self.mask_ratio, self.special)
            kept, drawn = jnp.sum(selected & in_use), jnp.sum(drawn & in_use)
            metrics['train/mlm_capped'] = 1.0 - kept / jnp.maximum(drawn, 1)

        w = self.weights
        loss = w['itc'] * itc + w['itm'] * itm + w['mlm'] * mlm
        metrics.update(
            {
                'train/itc': itc,
                'train/itm': itm,
                'train/mlm': mlm,
                'train/itm_accuracy': itm_accuracy,
                'train/mlm_accuracy': masked_mean(jnp.argmax(mlm_logits, axis=-1) == targets, predicted),
                'train/mlm_pairs': jnp.sum(mlm_set.weight),
            }
        )
        return loss, metrics, outputs

    def itm_loss(
        self, params: PyTree, out: Mapping[str, jax.Array], mask: jax.Array, pairs: Pairs, rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(ITM loss, accuracy) of `pairs` (weighted means): the text tokens fused with the images' tokens, the
        fused [CLS] through the 2-way head."""
        texts, images = out['text_tokens'], out['image_tokens']
        fused = self._apply(params, texts[pairs.text], mask[pairs.text], images[pairs.image], method='fuse', rng=rng)
        logits = self._apply(params, fused, method='itm_logits')
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, pairs.label)
        return masked_mean(losses, pairs.weight), masked_mean(jnp.argmax(logits, axis=-1) == pairs.label, pairs.weight)

    def _momentum_fused(
        self,
        momentum_params: PyTree,
        masked_ids: jax.Array,
        mask: jax.Array,
        out_m: Mapping[str, jax.Array],
        pairs: Pairs,
    ) -> jax.Array:
        """The momentum model's fusion output for the online model's masked MLM rows [P, L] (the same
        masked ids, row by row) with the same images."""
        tokens = self._apply(momentum_params, masked_ids, mask, method='text_tokens')
        fused = self._apply(momentum_params, tokens, mask, out_m['image_tokens'][pairs.image], method='fuse')
        return jax.lax.stop_gradient(fused)

    def ground_truth_metrics(self, false_negatives: jax.Array, outputs: Mapping[str, Any]) -> dict[str, jax.Array]:
        return self.itc.ground_truth_metrics(false_negatives, outputs)

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        params = clamp_temperature(params, self.model.config)
        if self.momentum is None:
            return params, extra
        extra = enqueue(extra, *outputs[ENQUEUE])
        return params, {**extra, MOMENTUM_PARAMS: ema(extra[MOMENTUM_PARAMS], params, self.momentum.decay)}
