"""Gradient accumulation that keeps the negatives global: GradCache's two passes.

A contrastive loss couples every pair in the batch, so summing the gradients of
micro-batch losses would train on smaller batches (fewer negatives). GradCache
(Gao et al., 2021) instead splits the *gradient*: (1) embed every micro-batch without
keeping activations; (2) take the loss over the full batch of embeddings and its
gradient w.r.t. the embeddings alone (cheap: no towers); (3) re-run each micro-batch's
forward pass under `jax.vjp` and pull that slice of the embedding gradient back into the
params, summing over micro-batches. The result equals the full-batch gradient (same loss,
same negatives, same regulators); peak activation memory is one micro-batch's.

Micro-batch m holds the rows i·M + m, so with the batch sharded over devices in
contiguous blocks every micro-batch still spans all devices (each device's rows are
split M ways), and the full-batch embeddings are put back in the batch's own order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


def split_micro_batches(x: jax.Array, micro_batches: int) -> jax.Array:
    """[B, ...] -> [M, B/M, ...] where micro-batch m holds rows i·M + m (every device keeps a share)."""
    rows = x.shape[0]
    assert rows % micro_batches == 0, 'validate() checks micro_batches against batch_size'
    stacked = jnp.swapaxes(x.reshape(rows // micro_batches, micro_batches, *x.shape[1:]), 0, 1)
    return nn.with_logical_constraint(stacked, (None, 'batch') + (None,) * (x.ndim - 1))


def join_micro_batches(x: jax.Array) -> jax.Array:
    """The inverse of split_micro_batches: [M, B/M, ...] -> [B, ...] in the batch's own order."""
    joined = jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return nn.with_logical_constraint(joined, ('batch',) + (None,) * (x.ndim - 2))


def grad_cache_value_and_grad(
    embed: Callable[[PyTree, PyTree, jax.Array], dict[str, jax.Array]],
    loss_of_embeddings: Callable[[dict[str, jax.Array]], tuple[jax.Array, Any]],
    params: PyTree,
    inputs: PyTree,
    rng: jax.Array,
    micro_batches: int,
) -> tuple[tuple[jax.Array, Any], PyTree]:
    """((loss, aux), grads) of `loss_of_embeddings(embed(params, inputs))` over the full batch.

    `embed(params, inputs, rng)` maps a micro-batch of `inputs` (leaves [b, ...]) to a dict of
    per-example arrays (leading axis b) and scalars that do not depend on the batch (a learned
    temperature): the scalars of micro-batch 0 stand for all, and their gradient goes back
    through micro-batch 0 alone. Micro-batch m gets the key fold_in(rng, m) in both passes,
    so dropout is the same in the forward pass and its recomputation.
    """
    micro_inputs = jax.tree.map(lambda x: split_micro_batches(x, micro_batches), inputs)
    keys = jax.vmap(lambda m: jax.random.fold_in(rng, m))(jnp.arange(micro_batches))

    def embed_one(_, micro):
        micro_input, key = micro
        return None, jax.lax.stop_gradient(embed(params, micro_input, key))

    _, stacked = jax.lax.scan(embed_one, None, (micro_inputs, keys))  # leaves [M, b, ...] or [M]
    embeddings = {key: join_micro_batches(v) if v.ndim > 1 else v[0] for key, v in stacked.items()}

    (loss, aux), embedding_grads = jax.value_and_grad(loss_of_embeddings, has_aux=True)(embeddings)
    first = jnp.arange(micro_batches) == 0
    cotangents = {
        key: split_micro_batches(g, micro_batches) if g.ndim > 0 else jnp.where(first, g, jnp.zeros_like(g))
        for key, g in embedding_grads.items()
    }

    def backward_one(grads, micro):
        micro_input, key, cotangent = micro
        _, pull_back = jax.vjp(lambda p: embed(p, micro_input, key), params)
        (micro_grads,) = pull_back(cotangent)
        return jax.tree.map(jnp.add, grads, micro_grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(backward_one, zeros, (micro_inputs, keys, cotangents))
    return (loss, aux), grads
