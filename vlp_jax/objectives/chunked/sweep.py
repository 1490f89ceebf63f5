"""The communication sweep: every column chunk of the global batch visited once, by ring or all-gather."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vlp_jax.objectives.chunked.plan import _Plan


def _varying(plan: _Plan, tree):
    return jax.tree.map(lambda x: jax.lax.pcast(x, plan.axes, to='varying'), tree)


def _sweep(plan: _Plan, own: dict[str, jax.Array], carry, visit: Callable, grad_keys: tuple[str, ...] = ()):
    """Runs `visit(carry, chunk, col) -> (carry, chunk_grads)` over every column chunk of the global batch.

    `own` is this device's [b, E] candidate block (the training embeddings and any frozen ones);
    `col` the chunk's global column indices. With `grad_keys`, visit also returns the chunk's
    gradients for those keys, and the sweep returns their sums for this device's own rows.
    """
    b = own['v'].shape[0]
    me = jax.lax.axis_index(plan.axes)

    def over_block(carry, block, start):
        width = block['v'].shape[0]
        count = width // plan.block
        xs = {key: value.reshape(count, plan.block, *value.shape[1:]) for key, value in block.items()}
        starts = start + plan.block * jnp.arange(count, dtype=jnp.int32)

        def body(carry, x):
            chunk, first = x
            return visit(carry, chunk, first + jnp.arange(plan.block, dtype=jnp.int32))

        carry, grads = jax.lax.scan(body, carry, (xs, starts))
        grads = {key: grads[key].reshape(width, *grads[key].shape[2:]) for key in grad_keys}
        return carry, grads

    if plan.comm == 'all_gather' or plan.devices == 1:
        block = own
        if plan.devices > 1:
            block = {key: jax.lax.all_gather(value, plan.axes, tiled=True) for key, value in own.items()}
        carry, grads = over_block(carry, block, jnp.int32(0))
        if plan.devices > 1:
            grads = {
                key: jax.lax.psum_scatter(g, plan.axes, scatter_dimension=0, tiled=True) for key, g in grads.items()
            }
        return carry, grads

    # Ring: D hops; after hop s + 1 this device holds the block of device me - s - 1 (its own after D
    # hops), with that block's gradient so far, which is therefore home at the end.
    perm = [(k, (k + 1) % plan.devices) for k in range(plan.devices)]
    shift = lambda tree: jax.tree.map(lambda x: jax.lax.ppermute(x, plan.axes, perm), tree)
    acc = _varying(plan, {key: jnp.zeros(own[key].shape) for key in grad_keys})

    def hop(s, state):
        carry, block, acc = state
        block, acc = shift((block, acc))
        carry, grads = over_block(carry, block, ((me - s - 1) % plan.devices) * b)
        return carry, block, {key: acc[key] + grads[key] for key in grad_keys}

    carry, _, acc = jax.lax.fori_loop(0, plan.devices, hop, (carry, own, acc))
    return carry, acc


def _row_ids(plan: _Plan, b: int) -> jax.Array:
    return jax.lax.axis_index(plan.axes) * b + jnp.arange(b, dtype=jnp.int32)
