"""Warm start: initialise a model from another run's params wherever the path and shape match.

`model.init_checkpoint` names any vlp_jax checkpoint (a workdir, its checkpoints/ or a step
dir). Every param of the new model whose path (e.g. 'vision/encoder/...') and shape are
in that checkpoint is copied from it; the rest keep their fresh initialisation. So a dual
encoder's towers, projections and temperature initialise a fusion model whose fusion
layers and ITM/MLM heads start fresh, and a smaller run can seed a longer one. It applies
to a new run only: a resumed run restores its own state.
"""

from __future__ import annotations

from typing import Any

import jax

from vlp_jax.checkpointing import CheckpointError, restore_params_from, stored_param_shapes
from vlp_jax.models.param_paths import path_key

PyTree = Any


class WarmStartError(Exception):
    """model.init_checkpoint cannot be used; the message names the key and what to do."""


def load_warm_start(path: str, abstract_params: PyTree) -> tuple[dict[str, jax.Array], int, int]:
    """({'a/b/c': array in its target sharding} for every matching param, matched count, total count)."""
    try:
        stored = stored_param_shapes(path)
    except CheckpointError as error:
        raise WarmStartError(f'config key model.init_checkpoint = {path!r}: {error}') from error
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    wanted = {path_key(p): leaf for p, leaf in flat}
    matched = {key: leaf for key, leaf in wanted.items() if tuple(stored.get(key, ())) == tuple(leaf.shape)}
    if not any(len(leaf.shape) > 0 for leaf in matched.values()):  # a shared temperature alone is no warm start
        raise WarmStartError(
            f'config key model.init_checkpoint = {path!r} shares no param (same path and shape) with this model; '
            'name a checkpoint of the same towers.'
        )
    subtree: dict = {}
    for key, leaf in matched.items():
        node = subtree
        *parents, last = key.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    try:
        restored = restore_params_from(path, subtree, subset=True)
    except CheckpointError as error:
        raise WarmStartError(f'config key model.init_checkpoint = {path!r}: {error}') from error
    arrays = {path_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}
    return arrays, len(matched), len(wanted)


def warm_start(params: PyTree, arrays: dict[str, jax.Array]) -> PyTree:
    """`params` with every leaf named in `arrays` replaced (same sharding: they were restored into it)."""
    return jax.tree_util.tree_map_with_path(lambda p, leaf: arrays.get(path_key(p), leaf), params)
