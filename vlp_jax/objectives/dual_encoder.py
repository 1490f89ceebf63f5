"""The dual-encoder objective ('contrastive'): the general contrastive loss over the global batch, with regulators.

Both towers embed the batch; the configured regulators (objectives/regulators/) turn the
model's own cosines and the frozen models' answers into weights and targets; the loss
(objectives/contrastive.py) is the mean of its two directions, dense or in memory-bounded
chunks (objectives/chunked/), with GradCache accumulation as an option. GRIT-VLP's options ride
along: key-side stop-gradient, the consistency term and per-shard ('local') negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import LossSettings, settings_of
from vlp_jax.data import batch as batch_spec
from vlp_jax.models.vlp import clamp_temperature
from vlp_jax.objectives.base import FEEDBACK, REGULATION, Objective, ObjectiveParts
from vlp_jax.objectives.chunked import chunked_contrastive_loss
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss, local_contrastive_loss
from vlp_jax.objectives.frozen import ask, image_text_cosines, shared_roles
from vlp_jax.objectives.grad_cache import grad_cache_value_and_grad
from vlp_jax.objectives.momentum import Candidates, distilled_regulation
from vlp_jax.objectives.regulators import RegulatorChain
from vlp_jax.registry import OBJECTIVES

PyTree = Any
# The model outputs the contrastive loss reads: what GradCache caches per micro-batch.
EMBEDDING_KEYS = ('image_embed', 'text_embed', 'logit_scale', 'sigmoid_bias')


def hardest_negative_similarity(sims: jax.Array) -> jax.Array:
    """Mean over images of the cosine to their most similar non-matching caption: how hard the batch is."""
    off_diagonal = jnp.where(jnp.eye(sims.shape[0], dtype=bool), -jnp.inf, sims)
    return jnp.mean(jnp.max(off_diagonal, axis=1))


def _results(
    regulators: RegulatorChain,
    loss: jax.Array,
    parts: Mapping[str, jax.Array],
    aux: dict[str, Any],
    out: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """(loss, metrics, outputs) as the Objective returns them, for the dense and the chunked loss alike."""
    metrics = {'train/temperature': 1.0 / out['logit_scale']}
    for regulator in regulators.regulators:
        metrics.update(regulator.metrics(aux.get(regulator.name, {})))
    for key, value in parts.items():  # loss parts keep their names; momentum metrics come already prefixed
        metrics[key if key.startswith('train/') else f'train/{key}'] = value
    feedback = {
        'image_embed': jax.lax.stop_gradient(out['image_embed']),
        'text_embed': jax.lax.stop_gradient(out['text_embed']),
        'index': batch['index'],
    }
    return loss, metrics, {FEEDBACK: feedback, REGULATION: aux}


@OBJECTIVES.register('contrastive')
class DualEncoderContrastive(Objective):
    """A dual encoder trained with the regulated contrastive loss (InfoNCE / SigLIP + regulators)."""

    model_kinds = ('dual',)
    supports_chunked = True
    supports_micro_batches = True
    supports_local_negatives = True
    batch_keys = batch_spec.REQUIRED_KEYS

    def __init__(self, settings: LossSettings, parts: ObjectiveParts, micro_batches: int = 1):
        self.model = parts.model
        self.form = settings.form
        self.chunked = settings.impl == 'chunked'  # memory-bounded (objectives/chunked/)
        self.stop_grad_keys = settings.stop_grad_keys
        self.consistency_weight = float(settings.consistency_weight)
        self.local_shards = parts.local_shards if settings.negatives == 'local' else None
        self.micro_batches = int(micro_batches)  # GradCache accumulation (objectives/grad_cache.py)
        self.regulators: RegulatorChain = parts.regulators
        assert self.local_shards is None or not self.regulators.active, 'the checks refuse local + regulators'
        self.roles = self.regulators.frozen_roles()
        self.frozen_roles = tuple(role.role for role in self.roles)
        self._owner = shared_roles(self.roles)
        self._frozen_models = {role: parts.frozen_models.get(role, parts.model) for role in self.frozen_roles}

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> DualEncoderContrastive:
        return cls(settings_of(config, LossSettings), parts, int(config.micro_batches))

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        if config.loss.momentum.enabled or config.loss.momentum.queue_size:
            return (
                "config keys loss.momentum.enabled and loss.momentum.queue_size need objective='albef' (ALBEF's "
                'momentum model on a fusion model); turn them off for a dual encoder.'
            )
        return None

    def _answers(self, frozen: Mapping[str, PyTree], batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        """Each role's answer (objectives.frozen.ask); roles asking one checkpoint the same question share
        one forward pass."""
        answers: dict[str, Any] = {}
        for role in self.roles:
            owner = self._owner[role.role]
            if owner not in answers:
                answers[owner] = ask(self._frozen_models[owner], role, frozen[owner], batch)
            answers[role.role] = answers[owner]
        return answers

    def loss(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        out = self.model.apply(
            {'params': params},
            *(batch[key] for key in batch_spec.MODEL_INPUT_KEYS),
            deterministic=False,
            rngs={'dropout': rng},
        )
        return self.contrastive(out, frozen, batch, step)

    def value_and_grad(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
        lock: Callable[[PyTree], PyTree] = lambda params: params,
    ) -> tuple[tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]], PyTree]:
        """((loss, (metrics, outputs)), grads): in one pass, or with `micro_batches` > 1 by GradCache
        (embed the micro-batches, take the loss over the whole batch, back-propagate each in turn).
        `lock` stops the gradient of locked params inside both passes."""

        def with_aux(loss_metrics_outputs):
            loss, metrics, outputs = loss_metrics_outputs
            return loss, (metrics, outputs)

        if self.micro_batches == 1:
            return jax.value_and_grad(
                lambda p: with_aux(self.loss(lock(p), extra, frozen, batch, rng, step)), has_aux=True
            )(params)

        def embed(p, inputs, key):
            out = self.model.apply({'params': lock(p)}, *inputs, deterministic=False, rngs={'dropout': key})
            return {name: out[name] for name in EMBEDDING_KEYS}

        return grad_cache_value_and_grad(
            embed,
            lambda embeddings: with_aux(self.contrastive(embeddings, frozen, batch, step)),
            params,
            tuple(batch[key] for key in batch_spec.MODEL_INPUT_KEYS),
            rng,
            self.micro_batches,
        )

    def contrastive(
        self,
        out: Mapping[str, jax.Array],
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        step: jax.Array,
        momentum: tuple[Candidates, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """The regulated contrastive loss (ITC) of the model outputs `out` (VLPModel.__call__).

        `momentum` = (candidates, alpha) from ALBEF's momentum model (objectives/momentum.py):
        the keys become the candidates and the targets are distilled.
        """
        image, text = out['image_embed'], out['text_embed']
        if self.chunked:
            assert momentum is None and self.local_shards is None, 'validate() refuses these with loss.impl=chunked'
            return self._chunked(out, frozen, batch, step)
        sims = image_text_cosines(image, text)
        (i2t, t2i), aux = (Regulation(), Regulation()), {}
        if self.regulators.active:
            (i2t, t2i), aux = self.regulators.dense(sims, self._answers(frozen, batch), step)
        options = dict(
            form=self.form,
            sigmoid_bias=out['sigmoid_bias'],
            stop_grad_keys=self.stop_grad_keys,
            consistency_weight=self.consistency_weight,
        )
        momentum_metrics = {}
        if momentum is not None:
            cands, alpha = momentum
            (i2t, t2i), momentum_metrics = distilled_regulation((i2t, t2i), cands, out['logit_scale'], alpha)
            options.update(image_candidates=cands.image, text_candidates=cands.text)
        if self.local_shards is not None:  # GRIT-VLP's per-device negatives
            loss, parts = local_contrastive_loss(image, text, out['logit_scale'], self.local_shards, **options)
        else:
            loss, parts = contrastive_loss(image, text, out['logit_scale'], i2t=i2t, t2i=t2i, **options)
        parts = {**parts, 'hardest_negative_similarity': hardest_negative_similarity(sims)}
        return _results(self.regulators, loss, {**parts, **momentum_metrics}, aux, out, batch)

    def _chunked(
        self,
        out: Mapping[str, jax.Array],
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """The same loss, regulators and metrics in column blocks: no [B, B] array is formed (the
        ground-truth diagnostics that need one, such as SRCL's weights, are left out)."""
        image, text = out['image_embed'], out['text_embed']
        loss, parts, aux = chunked_contrastive_loss(
            image,
            text,
            out['logit_scale'],
            form=self.form,
            sigmoid_bias=out['sigmoid_bias'],
            regulators=self.regulators,
            step=step,
            answers=self._answers(frozen, batch) if self.regulators.active else {},
            stop_grad_keys=self.stop_grad_keys,
            consistency_weight=self.consistency_weight,
        )
        return _results(self.regulators, loss, parts, aux, out, batch)

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        return clamp_temperature(params, self.model.config), extra

    def ground_truth_metrics(self, false_negatives: jax.Array, outputs: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Each regulator's diagnostics against the batch's known false negatives (regulator.probe_metrics)."""
        aux = outputs.get(REGULATION, {})
        masks = (false_negatives, false_negatives.T)
        metrics: dict[str, jax.Array] = {}
        for regulator in self.regulators.regulators:
            metrics.update(regulator.probe_metrics(aux.get(regulator.name, {}), masks))
        return metrics
