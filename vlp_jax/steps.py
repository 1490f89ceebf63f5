"""The jitted functions a run executes: the train step and the two encoders.

One `jax.jit` per function over the mesh with explicit in/out shardings; the state
is donated. Nothing here syncs with the host: metrics come back as device scalars
and are fetched by the loop every `log_every` steps.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.models.vlp import VLPModel, clamp_temperature
from vlp_jax.objectives.contrastive import contrastive_loss
from vlp_jax.optim import learning_rate_schedule

BATCH_KEYS = ('image', 'text_ids', 'text_mask', 'index', 'sem')


def batch_shardings(mesh: Mesh) -> dict[str, Any]:
    ndims = {'image': 4, 'text_ids': 2, 'text_mask': 2, 'index': 1, 'sem': 1}
    return {key: parallel.batch_sharding(mesh, ndims[key]) for key in BATCH_KEYS}


def make_train_step(config: ml_collections.ConfigDict, model: VLPModel, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules, state_shardings: Any) -> Callable:
    schedule = learning_rate_schedule(config)
    loss_form = config.loss.form

    def train_step(state: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        with nn.logical_axis_rules(rules):
            def loss_fn(params):
                out = model.apply({'params': params}, batch['image'], batch['text_ids'], batch['text_mask'])
                loss, parts = contrastive_loss(out['image_embed'], out['text_embed'], out['logit_scale'],
                                               form=loss_form, sigmoid_bias=out['sigmoid_bias'])
                return loss, (parts, out['logit_scale'])

            (loss, (parts, logit_scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
        updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
        params = clamp_temperature(optax.apply_updates(state['params'], updates), model.config)
        metrics = {
            'train/loss': loss,
            'train/temperature': 1.0 / logit_scale,
            'train/lr': schedule(state['step']),
            'train/grad_norm': optax.global_norm(grads),
            **{f'train/{key}': value for key, value in parts.items()},
        }
        new_state = {**state, 'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}
        return new_state, metrics

    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings(mesh)),
                     out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))

    def run(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

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
    return {key: float(value) for key, value in jax.device_get(metrics).items()}

