"""Param paths of a flax tree as '/'-joined strings, and the scanned <-> per-layer naming of stacked blocks.

`model.scan=True` stacks a tower's blocks into '.../layers/block/x' with a leading depth axis;
importers and exporters speak per-layer names ('.../block_{i}/x'), as the files do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any
SCANNED = re.compile(r'^(.*)/layers/block/(.*)$')
UNSCANNED = re.compile(r'^(.*)/block_(\d+)/(.*)$')


def key_str(entry: Any) -> str:
    """One entry of a jax key path: a dict key, an attribute name or a sequence index."""
    for attr in ('key', 'name', 'idx'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_key(path: Sequence[Any]) -> str:
    """'vision/encoder/block_0/attn/query/kernel' for a jax key path: the one param naming of the project
    (optim.frozen patterns, checkpoints, warm start, imports and exports all use it)."""
    return '/'.join(key_str(entry) for entry in path)


def flat(tree: PyTree) -> dict[str, Any]:
    """'a/b/c' -> leaf."""
    return {path_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unscanned_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Scanned params ('.../layers/block/x', leading depth axis) listed as their per-layer '.../block_{i}/x'."""
    out = {}
    for path, shape in shapes.items():
        match = SCANNED.match(path)
        if match:
            out.update({f'{match[1]}/block_{i}/{match[2]}': tuple(shape[1:]) for i in range(shape[0])})
        else:
            out[path] = tuple(shape)
    return out


def rescan(arrays: dict[str, np.ndarray], target: set[str]) -> dict[str, np.ndarray]:
    """Per-layer arrays stacked into the scanned params of `target` (unchanged where it is unscanned)."""
    out, stacks = {}, {}
    for path, array in arrays.items():
        match = UNSCANNED.match(path)
        scanned = match and f'{match[1]}/layers/block/{match[3]}'
        if scanned in target:
            stacks.setdefault(scanned, {})[int(match[2])] = array
        else:
            out[path] = array
    for path, layers in stacks.items():
        out[path] = np.stack([layers[i] for i in range(len(layers))])
    return out
