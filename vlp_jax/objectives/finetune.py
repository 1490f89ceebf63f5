"""Fine-tuning objectives of the downstream tasks (ALBEF's Retrieval.py, VE.py, NLVR.py), on a fusion model that
starts from a pretrained run (`model.init_checkpoint`, warm_start.py).

- 'retrieval_ft' (ALBEF `models/model_retrieval.py`): ITC whose positives are matched by image id -- every
  caption of the same image in the batch is a positive ("sim_targets = torch.eq(idx, idx_all).float();
  sim_targets = sim_targets / sim_targets.sum(1, keepdim=True)") -- plus ITM with one hard negative per
  anchor sampled from the in-batch ITC logits at the learned temperature, never a caption or image of the
  same image id ("mask = torch.eq(idx, idx.T); weights_i2t.masked_fill_(mask, 0)"). Loss = ITC + ITM, no
  MLM. With `loss.momentum.enabled` (ALBEF's `distill: True`), ITC is objectives/retrieval_momentum.py's:
  against the momentum keys and an image-id-tagged queue, with distilled targets, and the ITM negatives are
  drawn from the online anchors' similarities to the batch's momentum keys (ALBEF's sim_i2t[:, :bs]).
- 'snli_ve' (ALBEF `models/model_ve.py`): the fused [CLS] of (premise image, hypothesis) through the task
  head (model.head 'mlp', 3 classes), cross-entropy on the batch's 'label'.
- 'nlvr2' (ALBEF `models/model_nlvr.py`): the same on two images (model.text.fusion_images=2: paired fusion
  layers, models/bi_fusion.py), 2 classes.
- 'nlvr2_ta' (ALBEF `models/model_pretrain_nlvr.py`, the text-assignment pre-stage before 'nlvr2'): captioned
  images; each caption with two images of the batch through the paired fusion layers, 3 classes (its image is
  image 0 / image 1 / neither), the other images drawn by image-image similarity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vlp_jax.config import LossSettings, settings_of
from vlp_jax.data import batch as batch_spec
from vlp_jax.models.vlp import clamp_temperature
from vlp_jax.objectives.albef import ItmSettings, masked_mean
from vlp_jax.objectives.base import Objective, ObjectiveParts
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss
from vlp_jax.objectives.frozen import image_text_cosines
from vlp_jax.objectives.matching import NEGATIVE_CHOICES, itm_pairs, negative_sampling_logits
from vlp_jax.objectives.momentum import MOMENTUM_PARAMS, Momentum, MomentumSettings, ema, init_momentum_extra
from vlp_jax.objectives.retrieval_momentum import ID_QUEUE, enqueue_with_ids, init_id_queue, momentum_itc
from vlp_jax.registry import OBJECTIVES

PyTree = Any
ENQUEUE_WITH_IDS = 'enqueue_with_ids'  # outputs: the batch's momentum embeddings and image ids, for the queue


def image_id_targets(image_id: jax.Array) -> jax.Array:
    """[B, B] row-stochastic ITC targets: every pair of the same image id is a positive, equally weighted."""
    same = (image_id[:, None] == image_id[None, :]).astype(jnp.float32)
    return same / jnp.sum(same, axis=1, keepdims=True)


def negatives_by_image_id(
    rng: jax.Array, similarity: jax.Array, same: jax.Array, choice: str, logit_scale: jax.Array
) -> jax.Array:
    """[B] int32: per row of `similarity` [B, B] a column of another image id (`same` [B, B] bool marks the
    row's own id): drawn from softmax(sim / temp) with the same-id columns weighted 0 ('sample', ALBEF), or
    the most similar such column ('hardest'), or any such column with equal probability ('uniform', the
    easy-negative ablation). A row whose every column has its id (a batch of one image) falls back to any
    column but its own."""
    assert choice in NEGATIVE_CHOICES, choice
    if choice == 'hardest':
        logits = jax.lax.stop_gradient(similarity).astype(jnp.float32)
    elif choice == 'uniform':
        logits = jnp.zeros(similarity.shape, jnp.float32)
    else:
        logits = negative_sampling_logits(similarity, logit_scale)
    diagonal = jnp.eye(similarity.shape[0], dtype=bool)
    masked = jnp.where(same, -jnp.inf, logits)
    masked = jnp.where(jnp.all(same, axis=1, keepdims=True), jnp.where(diagonal, -jnp.inf, logits), masked)
    if choice == 'hardest':
        return jnp.argmax(masked, axis=1).astype(jnp.int32)
    return jax.random.categorical(rng, masked, axis=1).astype(jnp.int32)


class _FusionObjective(Objective):
    model_kinds = ('fusion',)
    frozen_roles = ()

    def __init__(self, parts: ObjectiveParts):
        assert parts.model.config.kind == 'fusion', 'a fine-tuning task needs a fusion model'
        self.model = parts.model

    def _apply(self, params: PyTree, *args, method: str | None = None, rng: jax.Array | None = None) -> Any:
        rngs = {'dropout': rng} if rng is not None else {}
        kwargs = {'deterministic': False} if rng is not None else {}
        return self.model.apply({'params': params}, *args, method=method, rngs=rngs, **kwargs)

    @classmethod
    def _no_momentum(cls, config: ml_collections.ConfigDict) -> str | None:
        if config.loss.momentum.enabled or config.loss.regulators:
            return (
                f'config keys loss.momentum.enabled and loss.regulators do not apply to objective='
                f'{cls.registered_name!r} (docs/finetune.md); turn them off.'
            )
        return None

    def after_update(self, params, extra, outputs, step):
        return clamp_temperature(params, self.model.config), extra


@OBJECTIVES.register('retrieval_ft')
class RetrievalFinetune(_FusionObjective):
    """ALBEF's retrieval fine-tuning: ITC with image-id positives + ITM with same-id-free hard negatives."""

    batch_keys = (*batch_spec.REQUIRED_KEYS, 'image_id')

    def __init__(self, loss: LossSettings, itm: ItmSettings, momentum: MomentumSettings, parts: ObjectiveParts):
        super().__init__(parts)
        self.form = loss.form
        self.negative_choice = itm.negatives
        self.momentum = Momentum.of(momentum, parts.steps_per_epoch)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> RetrievalFinetune:
        settings = (settings_of(config, s) for s in (LossSettings, ItmSettings, MomentumSettings))
        return cls(*settings, parts)

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        if config.loss.form != 'softmax':
            return "config key loss.form must be 'softmax' with objective='retrieval_ft' (ALBEF's ITC)."
        if config.loss.regulators:
            return "config key loss.regulators does not apply to objective='retrieval_ft'; set it to ()."
        queue = int(config.loss.momentum.queue_size)
        if queue and not config.loss.momentum.enabled:
            return f'config key loss.momentum.queue_size ({queue}) needs loss.momentum.enabled=True.'
        if queue % int(config.batch_size):
            return (
                f'config key loss.momentum.queue_size ({queue}) must be a multiple of batch_size ({config.batch_size}).'
            )
        return None

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        if self.momentum is None:
            return {}
        extra = init_momentum_extra(params, self.momentum.queue_size, self.model.config.embed_dim)
        return {**extra, ID_QUEUE: init_id_queue(self.momentum.queue_size)}

    def loss(self, params, extra, frozen, batch, rng, step):
        towers, negative_images, negative_texts, fusion = jax.random.split(rng, 4)
        inputs = tuple(batch[key] for key in batch_spec.MODEL_INPUT_KEYS)
        out = self._apply(params, *inputs, rng=towers)
        targets = image_id_targets(batch['image_id'])
        outputs, metrics = {}, {}
        if self.momentum is None:
            regulation = Regulation(y=targets)  # symmetric: the same targets in both directions
            itc, _ = contrastive_loss(
                out['image_embed'], out['text_embed'], out['logit_scale'], i2t=regulation, t2i=regulation
            )
            sims = image_text_cosines(out['image_embed'], out['text_embed'])  # rows images
        else:
            out_m = jax.lax.stop_gradient(self._apply(jax.lax.stop_gradient(extra[MOMENTUM_PARAMS]), *inputs))
            alpha = self.momentum.alpha(step)
            image_m, text_m = out_m['image_embed'], out_m['text_embed']
            itc = momentum_itc(
                out['image_embed'],
                out['text_embed'],
                image_m,
                text_m,
                batch['image_id'],
                extra,
                out['logit_scale'],
                alpha,
            )
            sims = image_text_cosines(out['image_embed'], text_m)  # ALBEF: image_feat @ text_feat_m_all[:, :bs]
            sims_t2i = image_text_cosines(out['text_embed'], image_m)
            outputs[ENQUEUE_WITH_IDS] = (image_m, text_m, batch['image_id'])
            metrics['train/momentum/alpha'] = jnp.asarray(alpha, jnp.float32)
        same = targets > 0
        scale = out['logit_scale']
        negative_text = negatives_by_image_id(negative_texts, sims, same, self.negative_choice, scale)
        t2i_sims = sims.T if self.momentum is None else sims_t2i
        negative_image = negatives_by_image_id(negative_images, t2i_sims, same, self.negative_choice, scale)
        pairs = itm_pairs(negative_image, negative_text)
        mask = batch['text_mask']
        fused = self._apply(
            params,
            out['text_tokens'][pairs.text],
            mask[pairs.text],
            out['image_tokens'][pairs.image],
            method='fuse',
            rng=fusion,
        )
        logits = self._apply(params, fused, method='itm_logits')
        itm = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, pairs.label))
        metrics |= {
            'train/itc': itc,
            'train/temperature': 1.0 / out['logit_scale'],
            'train/itm': itm,
            'train/itm_accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == pairs.label),
            'train/positives_per_row': jnp.mean(jnp.sum(same, axis=1).astype(jnp.float32)),
        }
        return itc + itm, metrics, outputs

    def after_update(self, params, extra, outputs, step):
        params = clamp_temperature(params, self.model.config)
        if self.momentum is None:
            return params, extra
        extra = enqueue_with_ids(extra, *outputs[ENQUEUE_WITH_IDS])
        return params, {**extra, MOMENTUM_PARAMS: ema(extra[MOMENTUM_PARAMS], params, self.momentum.decay)}


class TaskClassification(_FusionObjective):
    """The task head on the fused [CLS] of (image[s], text), cross-entropy on 'label'."""

    classes: ClassVar[int] = 2
    images: ClassVar[int] = 1

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> TaskClassification:
        return cls(parts)

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        name, model = cls.registered_name, config.model
        if model.head == '' or int(model.head_classes) != cls.classes:
            return (
                f"objective={name!r} needs a task head of {cls.classes} classes: set model.head='mlp' and "
                f'model.head_classes={cls.classes}.'
            )
        if int(model.text.fusion_images) != cls.images:
            return f'objective={name!r} needs model.text.fusion_images={cls.images}.'
        return cls._no_momentum(config)

    def logits(self, params: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array | None = None) -> jax.Array:
        """[B, classes] float32 task logits of the batch (training mode with `rng`: dropout)."""
        keys = list(jax.random.split(rng, 3)) if rng is not None else [None] * 3
        text = self._apply(params, batch['text_ids'], batch['text_mask'], method='text_tokens', rng=keys[0])
        images = [batch['image']] + ([batch['image1']] if self.images == 2 else [])
        tokens = self._apply(params, jnp.concatenate(images), method='image_tokens', rng=keys[1])
        contexts = tuple(jnp.split(tokens, self.images)) if self.images == 2 else tokens
        fused = self._apply(params, text, batch['text_mask'], contexts, method='fuse', rng=keys[2])
        return self._apply(params, fused, method='head_logits')

    def loss(self, params, extra, frozen, batch, rng, step):
        logits = self.logits(params, batch, rng)
        labels = batch['label']
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = masked_mean(jnp.argmax(logits, axis=-1) == labels, jnp.ones_like(labels, bool))
        return loss, {'train/task_loss': loss, 'train/accuracy': accuracy}, {}


@OBJECTIVES.register('snli_ve')
class SnliVe(TaskClassification):
    """SNLI-VE: premise image, hypothesis text; entailment / neutral / contradiction."""

    batch_keys = (*batch_spec.REQUIRED_KEYS, 'label')
    classes = 3
    images = 1


@OBJECTIVES.register('nlvr2')
class Nlvr2(TaskClassification):
    """NLVR2: a statement about two images, true or false; paired fusion layers see both."""

    batch_keys = (*batch_spec.REQUIRED_KEYS, 'label', 'image1')
    classes = 2
    images = 2


NEITHER = 2  # text-assignment class: the text belongs to neither image (0: image 0, 1: image 1)


def assignment_label(anchor: jax.Array, first: jax.Array, second: jax.Array) -> jax.Array:
    """[B] int32 text-assignment class of text `anchor` (its own image's row) shown images (`first`,
    `second`): 0 when image 0 is its image, 1 when image 1 is, else NEITHER."""
    return jnp.where(first == anchor, 0, jnp.where(second == anchor, 1, NEITHER)).astype(jnp.int32)


def text_assignment_pairs(rng: jax.Array, image_embed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ALBEF Pretrain_nlvr.py's pairs for the batch's texts (text b is image b's caption): ([B] image 0 rows,
    [B] image 1 rows, [B] labels). Weights softmax(image_feat @ image_feat.T / 0.07) with the diagonal 0; with
    probability 2/3 one image drawn from them goes with image b, b first or second at even odds (label 0 / 1);
    else two distinct images drawn from them (label 2). Sampling without replacement is the Gumbel top-2."""
    batch = image_embed.shape[0]
    feat = jax.lax.stop_gradient(image_embed).astype(jnp.float32)
    logits = jnp.where(jnp.eye(batch, dtype=bool), -jnp.inf, feat @ feat.T / 0.07)
    kind, side, gumbel = jax.random.split(rng, 3)
    top2 = jax.lax.top_k(logits + jax.random.gumbel(gumbel, logits.shape), 2)[1]
    anchor = jnp.arange(batch)
    neither = jax.random.uniform(kind, (batch,)) < 1 / 3
    anchor_first = jax.random.uniform(side, (batch,)) < 0.5
    first = jnp.where(neither, top2[:, 0], jnp.where(anchor_first, anchor, top2[:, 0]))
    second = jnp.where(neither, top2[:, 1], jnp.where(anchor_first, top2[:, 0], anchor))
    return first, second, assignment_label(anchor, first, second)


@OBJECTIVES.register('nlvr2_ta')
class Nlvr2TextAssignment(TaskClassification):
    """NLVR2's text-assignment pre-stage (ALBEF models/model_pretrain_nlvr.py): captioned images; each text
    goes to the paired fusion layers with two images of the batch (text_assignment_pairs), the linear ta_head
    on [CLS] says which image is its own (0 / 1) or neither (2); cross-entropy."""

    batch_keys = batch_spec.REQUIRED_KEYS
    classes = 3
    images = 2

    def loss(self, params, extra, frozen, batch, rng, step):
        towers, pairing, fusion = jax.random.split(rng, 3)
        inputs = tuple(batch[key] for key in batch_spec.MODEL_INPUT_KEYS)
        out = self._apply(params, *inputs, rng=towers)
        first, second, labels = text_assignment_pairs(pairing, out['image_embed'])
        tokens = out['image_tokens']
        contexts = (tokens[first], tokens[second])
        fused = self._apply(params, out['text_tokens'], batch['text_mask'], contexts, method='fuse', rng=fusion)
        logits = self._apply(params, fused, method='head_logits')
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, {'train/task_loss': loss, 'train/accuracy': accuracy}, {}
