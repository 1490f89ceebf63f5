"""The jitted functions a run executes: the train step and the two encoders.

One `jax.jit` per function over the mesh with explicit in/out shardings; the state
is donated. Nothing here syncs with the host: metrics come back as device scalars
and are fetched by the loop every `log_every` steps.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.diagnostics import ground_truth_metrics
from vlp_jax.models.vlp import VLPModel, clamp_temperature
from vlp_jax.objectives.apply import apply_regulators, reference_checkpoints
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss, local_contrastive_loss
from vlp_jax.optim import learning_rate_schedule

# caption_spec [B, 2, 4] and scene [B, 3, 4]: ground truth of the synthetic data, read by
# the diagnostics only (never by the loss). A batch without them trains the same, without
# the ground-truth metrics.
GROUND_TRUTH_KEYS = ('caption_spec', 'scene')
# metrics[FEEDBACK_KEY]: the batch's embeddings and dataset indices, replicated, when a
# sampler needs them (sampling.name = 'grit'); the loop pops it before logging.
FEEDBACK_KEY = 'feedback'
BATCH_KEYS = ('image', 'text_ids', 'text_mask', 'index', 'sem', *GROUND_TRUTH_KEYS)
_BATCH_NDIMS = {'image': 4, 'text_ids': 2, 'text_mask': 2, 'index': 1, 'sem': 1, 'caption_spec': 3, 'scene': 3}


def batch_shardings(mesh: Mesh, keys: tuple[str, ...] = BATCH_KEYS) -> dict[str, Any]:
    return {key: parallel.batch_sharding(mesh, _BATCH_NDIMS[key]) for key in keys}


def _cosines(image_embed: jax.Array, text_embed: jax.Array) -> jax.Array:
    """[B, B] image-text cosines (rows images) of unit-norm embeddings, no logit scale, no gradient."""
    sims = jnp.einsum('ie,je->ij', image_embed.astype(jnp.float32), text_embed.astype(jnp.float32))
    return jax.lax.stop_gradient(sims)


def hardest_negative_similarity(sims: jax.Array) -> jax.Array:
    """Mean over images of the cosine to their most similar non-matching caption: how hard the batch is."""
    off_diagonal = jnp.where(jnp.eye(sims.shape[0], dtype=bool), -jnp.inf, sims)
    return jnp.mean(jnp.max(off_diagonal, axis=1))


def make_train_step(config: ml_collections.ConfigDict, model: VLPModel, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules, state_shardings: Any) -> Callable:
    """run(state, batch, references) -> (state, metrics).

    `references` is a tuple of frozen param trees, one per path in
    `apply.reference_checkpoints(config)` (empty without regulators that need one),
    sharded like params. They are run on the same batch inside the step and never updated.
    """
    schedule = learning_rate_schedule(config)
    loss_form = config.loss.form
    regulated = bool(tuple(config.loss.get('regulators', ())))
    feedback_embeddings = config.sampling.name == 'grit'
    stop_grad_keys = bool(config.loss.stop_grad_keys)
    consistency_weight = float(config.loss.consistency_weight)
    local_negatives = config.loss.negatives == 'local'
    num_references = len(reference_checkpoints(config))

    def reference_sims(references, batch):
        sims = []
        for params in references:
            image = model.apply({'params': params}, batch['image'], method=VLPModel.encode_images)
            text = model.apply({'params': params}, batch['text_ids'], batch['text_mask'], method=VLPModel.encode_texts)
            sims.append(_cosines(image, text))
        return tuple(sims)

    def train_step(state: dict[str, Any], batch: dict[str, jax.Array],
                   references: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        with nn.logical_axis_rules(rules):
            ref_sims = reference_sims(jax.lax.stop_gradient(references), batch)

            def loss_fn(params):
                out = model.apply({'params': params}, batch['image'], batch['text_ids'], batch['text_mask'])
                (i2t, t2i), aux = (Regulation(), Regulation()), {}
                if regulated:
                    sim_cur = _cosines(out['image_embed'], out['text_embed'])
                    (i2t, t2i), aux = apply_regulators(config, state['step'], sim_cur, ref_sims)
                options = dict(form=loss_form, sigmoid_bias=out['sigmoid_bias'], stop_grad_keys=stop_grad_keys,
                               consistency_weight=consistency_weight)
                if local_negatives:  # GRIT-VLP's per-device negatives (validate() rules out regulators)
                    loss, parts = local_contrastive_loss(out['image_embed'], out['text_embed'], out['logit_scale'],
                                                         parallel.batch_shards(mesh), **options)
                else:
                    loss, parts = contrastive_loss(out['image_embed'], out['text_embed'], out['logit_scale'],
                                                   i2t=i2t, t2i=t2i, **options)
                embeds = (out['image_embed'], out['text_embed'])
                return loss, (parts, out['logit_scale'], aux, embeds)

            (loss, (parts, logit_scale, aux, embeds)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state['params'])
        updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
        params = clamp_temperature(optax.apply_updates(state['params'], updates), model.config)
        metrics = {
            'train/loss': loss,
            'train/temperature': 1.0 / logit_scale,
            'train/lr': schedule(state['step']),
            'train/grad_norm': optax.global_norm(grads),
            **{f'train/{key}': value for key, value in parts.items()},
        }
        if all(key in batch for key in GROUND_TRUTH_KEYS):
            metrics.update(ground_truth_metrics(batch['caption_spec'], batch['scene'], aux))
        metrics['train/hardest_negative_similarity'] = hardest_negative_similarity(_cosines(*embeds))
        if feedback_embeddings:  # for the sampler (GRIT): what the forward already computed, no extra pass
            metrics[FEEDBACK_KEY] = {'image_embed': jax.lax.stop_gradient(embeds[0]),
                                     'text_embed': jax.lax.stop_gradient(embeds[1]), 'index': batch['index']}
        new_state = {**state, 'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}
        return new_state, metrics

    reference_shardings = (state_shardings['params'],) * num_references
    compiled: dict[tuple[str, ...], Callable] = {}  # one jit per set of batch keys (with/without ground truth)

    def run(state, batch, references: tuple[Any, ...] = ()):
        assert len(references) == num_references, f'the step needs {num_references} reference models'
        keys = tuple(sorted(batch))
        if keys not in compiled:
            compiled[keys] = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings(mesh, keys),
                                                               reference_shardings),
                                     out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))
        with jax.set_mesh(mesh):
            return compiled[keys](state, batch, tuple(references))

    return run


def make_encoders(model: VLPModel, mesh: Mesh, rules, params_shardings: Any) -> tuple[Callable, Callable]:
    """(encode_images(params, images), encode_texts(params, ids, mask)) returning normalised embeddings."""
    out = parallel.batch_sharding(mesh, 2)

    def images_fn(params, images):
        with nn.logical_axis_rules(rules):
            return model.apply({'params': params}, images, method=VLPModel.encode_images)

    def texts_fn(params, ids, mask):
        with nn.logical_axis_rules(rules):
            return model.apply({'params': params}, ids, mask, method=VLPModel.encode_texts)

    images_jit = jax.jit(images_fn, in_shardings=(params_shardings, parallel.batch_sharding(mesh, 4)), out_shardings=out)
    texts_jit = jax.jit(texts_fn, in_shardings=(params_shardings, parallel.batch_sharding(mesh, 2),
                                                parallel.batch_sharding(mesh, 2)), out_shardings=out)

    def with_mesh(fn):
        def call(*args):
            with jax.set_mesh(mesh):
                return fn(*args)
        return call

    return with_mesh(images_jit), with_mesh(texts_jit)


def scalar_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """The one host sync per log step."""
    return {key: float(value) for key, value in jax.device_get(metrics).items() if key != FEEDBACK_KEY}

