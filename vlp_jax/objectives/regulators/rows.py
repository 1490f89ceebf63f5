"""Per-row statistics that merge across column tiles: the top two of a row, with payloads."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top2(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row, the two largest entries and their columns (first index on ties) of a tile with -inf excluded."""
    columns = jnp.arange(x.shape[1])
    i1 = jnp.argmax(x, axis=1)
    v1 = jnp.take_along_axis(x, i1[:, None], axis=1)[:, 0]
    rest = jnp.where(columns[None, :] == i1[:, None], -jnp.inf, x)
    i2 = jnp.argmax(rest, axis=1)
    v2 = jnp.take_along_axis(rest, i2[:, None], axis=1)[:, 0]
    return jnp.stack([v1, v2], axis=1), jnp.stack([i1, i2], axis=1)


def init_top2(rows: int, payload: tuple[str, ...] = ()) -> dict[str, jax.Array]:
    state = {'value': jnp.full((rows, 2), -jnp.inf), 'index': jnp.zeros((rows, 2), jnp.int32)}
    state.update({key: jnp.zeros((rows, 2)) for key in payload})
    return state


def merge_top2(run: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The best two of four candidates per row: larger value first, then lower global index (= lax.top_k)."""
    keys = sorted(run)
    operands = [-jnp.concatenate([run['value'], new['value']], axis=1)]
    operands.append(jnp.concatenate([run['index'], new['index']], axis=1))
    payload = [k for k in keys if k not in ('value', 'index')]
    operands += [jnp.concatenate([run[k], new[k]], axis=1) for k in payload]
    out = jax.lax.sort(operands, dimension=1, num_keys=2)
    merged = {'value': -out[0][:, :2], 'index': out[1][:, :2]}
    merged.update({k: o[:, :2] for k, o in zip(payload, out[2:])})
    return merged
