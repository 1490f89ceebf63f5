"""The dual-encoder objective: the general contrastive loss over the global batch, with regulators.

Both towers embed the batch; the regulators (SRCL, COSMO/MAFA, smoothing) turn the
model's own cosines and the frozen models' answers into weights and targets; the loss
(objectives/contrastive.py) is the mean of its two directions. GRIT-VLP's options ride
along: key-side stop-gradient, the consistency term and per-shard ('local') negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.data import batch as batch_spec
from vlp_jax.models.vlp import VLPModel, clamp_temperature
from vlp_jax.objectives.base import FEEDBACK, REGULATION
from vlp_jax.objectives.chunked import ask_embeddings, chunked_contrastive_loss
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss, local_contrastive_loss
from vlp_jax.objectives.frozen import ask, frozen_roles, image_text_cosines, shared_roles
from vlp_jax.objectives.grad_cache import grad_cache_value_and_grad
from vlp_jax.objectives.momentum import Candidates, distilled_regulation
from vlp_jax.objectives.regulate import RegulatorChain

PyTree = Any
# The model outputs the contrastive loss reads: what GradCache caches per micro-batch.
EMBEDDING_KEYS = ('image_embed', 'text_embed', 'logit_scale', 'sigmoid_bias')


def hardest_negative_similarity(sims: jax.Array) -> jax.Array:
    """Mean over images of the cosine to their most similar non-matching caption: how hard the batch is."""
    off_diagonal = jnp.where(jnp.eye(sims.shape[0], dtype=bool), -jnp.inf, sims)
    return jnp.mean(jnp.max(off_diagonal, axis=1))


def _results(
    loss: jax.Array,
    parts: Mapping[str, jax.Array],
    aux: dict[str, Any],
    out: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """(loss, metrics, outputs) as the Objective returns them, for the dense and the chunked loss alike."""
    metrics = {'train/temperature': 1.0 / out['logit_scale']}
    for key, value in parts.items():  # loss parts keep their names; momentum metrics come already prefixed
        metrics[key if key.startswith('train/') else f'train/{key}'] = value
    feedback = {
        'image_embed': jax.lax.stop_gradient(out['image_embed']),
        'text_embed': jax.lax.stop_gradient(out['text_embed']),
        'index': batch['index'],
    }
    return loss, metrics, {FEEDBACK: feedback, REGULATION: aux}


class DualEncoderContrastive:
    """Objective (objectives/base.py) of a dual encoder trained with the regulated contrastive loss."""

    batch_keys = batch_spec.REQUIRED_KEYS

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: VLPModel,
        local_shards: int,
        frozen_models: Mapping[str, VLPModel] | None = None,
    ):
        self.model = model
        self.form = str(config.loss.form)
        self.chunked = config.loss.get('impl', 'dense') == 'chunked'  # memory-bounded (objectives/chunked/)
        self.stop_grad_keys = bool(config.loss.stop_grad_keys)
        self.consistency_weight = float(config.loss.consistency_weight)
        self.local_shards = local_shards if config.loss.negatives == 'local' else None
        self.micro_batches = int(config.get('micro_batches', 1))  # GradCache accumulation (objectives/grad_cache.py)
        self.regulators = RegulatorChain.from_config(config)
        assert self.local_shards is None or not self.regulators.active, 'validate() refuses local + regulators'
        self.roles = frozen_roles(config)
        self.frozen_roles = tuple(role.role for role in self.roles)
        self._owner = shared_roles(self.roles)
        self._frozen_models = {role: (frozen_models or {}).get(role, model) for role in self.frozen_roles}

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        return {}

    def _answers(self, frozen: Mapping[str, PyTree], batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        """Each role's answer; roles asking one checkpoint the same question share one forward pass.
        The chunked loss takes a cosine role's embeddings instead of its [B, B] cosines."""
        answer = ask_embeddings if self.chunked else ask
        answers: dict[str, Any] = {}
        for role in self.roles:
            owner = self._owner[role.role]
            if owner not in answers:
                answers[owner] = answer(self._frozen_models[owner], role, frozen[owner], batch)
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
            (i2t, t2i), aux = self.regulators(step, sims, self._answers(frozen, batch))
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
        return _results(loss, {**parts, **momentum_metrics}, aux, out, batch)

    def _chunked(
        self,
        out: Mapping[str, jax.Array],
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """The same loss, regulators and metrics in column blocks: no [B, B] array is formed (the
        ground-truth probe's SRCL weight diagnostics, which need one, are left out)."""
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
        return _results(loss, parts, aux, out, batch)

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        return clamp_temperature(params, self.model.config), extra
