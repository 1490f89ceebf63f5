"""VQA fine-tuning ('vqa'): ALBEF's answer decoder (models/model_vqa.py; BLIP's blip_vqa.py has the same shape).

The fusion encoder reads the question with the image (the text layers, then the fusion layers cross-attending
to the image tokens); the decoder (model.decoder.context='fused') cross-attends to those fused question states
and is trained to write each of the question's distinct answers ([BOS] answer [SEP], objectives/lm.py). Each
answer's loss is its summed token NLL ("loss = loss.view(prediction_scores.size(0),-1).sum(1)", reduction
'none' in ALBEF's xbert.py), weighted by the answer's share of the human answers (vqa_dataset's
answer_weight), summed over the batch's answers and divided by the number of questions ("loss = weights *
answer_output.loss; loss = loss.sum()/image.size(0)"). ALBEF's decoder has no label smoothing (its VQA config:
`loss.lm.label_smoothing=0`); BLIP's med.py smooths by 0.1.

Momentum distillation (ALBEF's `distill: True`, `loss.momentum.enabled`): an EMA copy of every param reads the
same question and image and teacher-forces the same answers; each answer's loss becomes (1 - alpha) * its NLL +
alpha * its summed token cross-entropy against the momentum decoder's softmax (xbert.py's `soft_labels`:
"loss_distill = -torch.sum(F.log_softmax(shifted_prediction_scores, dim=-1)*soft_labels,dim=-1)"), alpha
ramped from 0 over the first epoch (VQA.py's warm_up). The EMA runs after every update, as for ALBEF
pretraining (objectives/momentum.py); evaluation uses the online model, as ALBEF's.

Batch fields (data/tasks/vqa_fields.py): 'answers' [B, A, L] and 'answer_weight' [B, A]; the answers are cut to
`loss.vqa.answer_len` tokens (static shapes; ALBEF pads them to the batch's longest). Its evaluator is 'vqa'
(evaluators/vqa.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import at_least, key, settings_of
from vlp_jax.data.tasks.vqa_fields import ANSWER_WEIGHT, ANSWERS
from vlp_jax.data.tokenizer import BERT_PAD_ID
from vlp_jax.objectives.base import Objective, ObjectiveParts
from vlp_jax.objectives.blip import decoder_problem
from vlp_jax.objectives.lm import LmSettings, decoder_batch, smoothed_cross_entropy
from vlp_jax.objectives.momentum import MOMENTUM_PARAMS, Momentum, MomentumSettings, ema
from vlp_jax.registry import OBJECTIVES

PyTree = Any
Apply = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class VqaSettings:
    """How the answers are read (objective 'vqa', evaluator 'vqa')."""

    answer_len: int = key(
        8,
        'tokens of an answer the decoder reads, [CLS] and [SEP] included (longer answers lose their end)',
        check=at_least(3),
    )


def fused_questions(
    apply: Apply, params: PyTree, image: jax.Array, ids: jax.Array, mask: jax.Array, rng: jax.Array | None = None
) -> jax.Array:
    """[B, L, width] fusion-encoder states of each question ([B, L] ids, mask) read with its image: the
    decoder's context. `apply(params, *args, method, rng)` runs the model (rng: training mode)."""
    keys = list(jax.random.split(rng, 3)) if rng is not None else [None] * 3
    image_tokens = apply(params, image, method='image_tokens', rng=keys[0])
    text_tokens = apply(params, ids, mask, method='text_tokens', rng=keys[1])
    return apply(params, text_tokens, mask, image_tokens, method='fuse', rng=keys[2])


def answer_logits(
    apply: Apply,
    params: PyTree,
    context: jax.Array,
    context_mask: jax.Array,
    answer_ids: jax.Array,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """(teacher-forced word logits [B * A, L, V'], the decoder batch): answers [B, A, L] (tokenised as captions,
    [PAD] after [SEP]) decoded against context [B, N, D] repeated per answer (ALBEF: "question_states +=
    [question_output.last_hidden_state[b]]*n")."""
    b, a, length = answer_ids.shape
    ids = answer_ids.reshape(b * a, length)
    lm = decoder_batch(ids, (ids != BERT_PAD_ID).astype(jnp.int32))
    context = jnp.repeat(context, a, axis=0)
    context_mask = jnp.repeat(context_mask, a, axis=0)
    hidden = apply(params, lm.inputs, lm.mask, context, context_mask, method='decode', rng=rng)
    return apply(params, hidden, method='lm_logits'), lm


def answer_losses(
    apply: Apply,
    params: PyTree,
    context: jax.Array,
    context_mask: jax.Array,
    answer_ids: jax.Array,
    smoothing: float,
    vocab_size: int,
    rng: jax.Array | None = None,
    soft: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed token loss [B, A] of each answer, whether teacher-forced argmax gets every token right [B, A],
    the word logits). `soft` = (momentum logits, alpha): the loss is (1 - alpha) * NLL + alpha * the summed
    cross-entropy against softmax(momentum logits) over the real vocabulary (ALBEF's distillation)."""
    b, a = answer_ids.shape[:2]
    logits, lm = answer_logits(apply, params, context, context_mask, answer_ids, rng)
    per_token = smoothed_cross_entropy(logits, lm.targets, smoothing, vocab_size)
    if soft is not None:
        momentum_logits, alpha = soft
        targets = jax.nn.softmax(momentum_logits[..., :vocab_size].astype(jnp.float32), axis=-1)
        log_p = jax.nn.log_softmax(logits[..., :vocab_size].astype(jnp.float32), axis=-1)
        distill = -jnp.sum(jax.lax.stop_gradient(targets) * log_p, axis=-1)
        per_token = (1.0 - alpha) * per_token + alpha * distill
    right = (jnp.argmax(logits[..., :vocab_size], axis=-1) == lm.targets) | (lm.weights == 0)
    losses = jnp.sum(per_token * lm.weights, axis=-1).reshape(b, a)
    return losses, jnp.all(right, axis=-1).reshape(b, a), logits


def weighted_answer_loss(losses: jax.Array, weights: jax.Array) -> jax.Array:
    """ALBEF's VQA loss: sum over questions and answers of weight * loss, divided by the number of questions."""
    return jnp.sum(weights * losses) / losses.shape[0]


@OBJECTIVES.register('vqa', groups={'loss.lm': LmSettings, 'loss.vqa': VqaSettings})
class VqaObjective(Objective):
    """The answer decoder's weighted NLL over each question's answers, the question fused with the image."""

    model_kinds = ('fusion',)
    batch_keys = ('image', 'text_ids', 'text_mask', ANSWERS, ANSWER_WEIGHT)
    frozen_roles = ()

    def __init__(self, lm: LmSettings, vqa: VqaSettings, momentum: MomentumSettings, parts: ObjectiveParts):
        self.model = parts.model
        self.smoothing = float(lm.label_smoothing)
        self.answer_len = int(vqa.answer_len)
        self.vocab_size = parts.model.config.text.vocab_size
        self.momentum = Momentum.of(momentum, parts.steps_per_epoch)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> VqaObjective:
        settings = (settings_of(config, s) for s in (LmSettings, VqaSettings, MomentumSettings))
        return cls(*settings, parts)

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        problem = decoder_problem(config, 'vqa', 'fused')
        if problem is None and tuple(config.loss.regulators):
            problem = "objective 'vqa' has no contrastive loss to regulate: set loss.regulators=()."
        if problem is None and str(config.loss.lm.prompt):
            problem = "objective 'vqa' writes answers without a prompt: set loss.lm.prompt=''."
        model = config.model
        if problem is None and model.decoder.layout == 'shared' and int(model.vision.width) != int(model.text.width):
            problem = (
                "a 'shared' decoder reads the fused question with the fusion layers' cross-attention, which reads "
                "image tokens: model.vision.width must equal model.text.width, or set model.decoder.layout='separate'."
            )
        if problem is None and int(config.loss.vqa.answer_len) > int(config.model.max_text_len):
            problem = 'config key loss.vqa.answer_len must be at most model.max_text_len.'
        if problem is None and config.loss.momentum.enabled and int(config.loss.momentum.queue_size):
            problem = (
                "objective 'vqa' distils the answers from the momentum model but keeps no feature queue: set "
                'loss.momentum.queue_size=0.'
            )
        return problem

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        return {} if self.momentum is None else {MOMENTUM_PARAMS: jax.tree.map(lambda x: x, params)}

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
        encoder, decoder = jax.random.split(rng)
        mask = batch['text_mask']
        fused = fused_questions(self._apply, params, batch['image'], batch['text_ids'], mask, encoder)
        answers = batch[ANSWERS][..., : self.answer_len]
        weights = batch[ANSWER_WEIGHT]
        soft, metrics = None, {}
        if self.momentum is not None:
            momentum_params = jax.lax.stop_gradient(extra[MOMENTUM_PARAMS])
            fused_m = fused_questions(self._apply, momentum_params, batch['image'], batch['text_ids'], mask)
            logits_m, _ = answer_logits(self._apply, momentum_params, fused_m, mask, answers)
            alpha = self.momentum.alpha(step)
            soft = (jax.lax.stop_gradient(logits_m), alpha)
            metrics['train/momentum/alpha'] = jnp.asarray(alpha, jnp.float32)
        losses, right, _ = answer_losses(
            self._apply, params, fused, mask, answers, self.smoothing, self.vocab_size, decoder, soft
        )
        loss = weighted_answer_loss(losses, weights)
        accuracy = jnp.sum(weights * right) / jnp.maximum(jnp.sum(weights), 1e-9)
        metrics.update({'train/loss': loss, 'train/vqa': loss, 'train/answer_accuracy': accuracy})
        return loss, metrics, {}

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        if self.momentum is None:
            return params, extra
        return params, {**extra, MOMENTUM_PARAMS: ema(extra[MOMENTUM_PARAMS], params, self.momentum.decay)}
