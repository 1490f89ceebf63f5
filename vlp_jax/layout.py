"""Whether the mesh can split the model as the logical-axis rules ask, checked before compilation.

Every param declares logical axis names ('heads', 'mlp', 'vocab', 'embed', ...); the config's
`mesh.rules` map them to mesh axes. A dimension the mapped mesh axes do not divide (3 heads
over a 4-way 'model' axis) would otherwise surface as a JAX traceback after minutes of
compilation; here it is one sentence naming the config keys. Only shapes are built
(`jax.eval_shape`), nothing is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import linen as nn

from vlp_jax.models.param_paths import path_key

# logical axis -> the config keys that set such a dimension (for the error message)
AXIS_KEYS = {
    'heads': 'model.{tower}.num_heads',
    'mlp': 'model.{tower}.mlp_dim',
    'embed': 'model.{tower}.width',
    'vocab': 'model.text.vocab_size (padded to a multiple of 128)',
    'proj': 'model.embed_dim',
    'kv': 'model.{tower}.width / num_heads',
    'length': 'model.max_text_len',
    'patch': 'model.image_size / patch_size',
}


def _mesh_axes(rules: dict[str, Any], logical: str | None) -> tuple[str, ...]:
    target = rules.get(logical) if logical is not None else None
    if target is None:
        return ()
    return tuple(target) if isinstance(target, (tuple, list)) else (target,)


def layout_problem(boxed_params: Any, mesh_rules: Sequence[Sequence[Any]], mesh_sizes: dict[str, int]) -> str | None:
    """The first param dimension the rules split over mesh axes that do not divide it, as a sentence.

    `boxed_params`: the model's params under `jax.eval_shape` (nn.Partitioned leaves: shapes and names).
    """
    boxed = boxed_params
    rules = {name: target for name, target in mesh_rules}
    flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in flat:
        if not isinstance(leaf, nn.Partitioned):
            continue
        name = path_key(path)
        for size, logical in zip(leaf.value.shape, leaf.names):
            axes = _mesh_axes(rules, logical)
            ways = 1
            for axis in axes:
                ways *= mesh_sizes[axis]
            if ways > 1 and size % ways:
                tower = 'vision' if name.startswith('vision') else 'text'
                keys = AXIS_KEYS.get(logical, f'the {logical!r} dimension').format(tower=tower)
                sizes = ' x '.join(f'mesh.{axis}={mesh_sizes[axis]}' for axis in axes)
                return (
                    f'config keys {keys} and {sizes} do not fit: param {name} has {logical!r} size {size}, which '
                    f'mesh.rules split {ways} ways; pick sizes the axis divides, or map {logical!r} to None '
                    'in mesh.rules.'
                )
    return None
