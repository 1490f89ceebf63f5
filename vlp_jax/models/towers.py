"""Towers by name (registry TOWERS): 'vit' (vision) and 'transformer' (text, BERT/MiniLM/CLIP layouts).

A tower is a flax module class built as `module(config, dtype=...)` and called as
`tower(inputs..., deterministic=...) -> (pooled [B, width], tokens [B, N, width])`, plus a
`config_from(group, model)` that reads its keys from the config group `model.vision` or
`model.text` (a dict: the saved model config of a checkpoint works too) and the `model` group
(image_size, max_text_len, remat, scan), raising ValueError naming the key when one is wrong.
A text tower of a fusion model also provides `fuse`, `attend` and `word_table`, and with a decoder `embed`
(models/text.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from vlp_jax.models.text import TEXT_VARIANTS, TextConfig, TextEncoder
from vlp_jax.models.vit import VIT_VARIANTS, ViT, ViTConfig
from vlp_jax.registry import TOWERS

CUSTOM_VARIANT = 'custom'
VISION, TEXT = 'vision', 'text'


@dataclasses.dataclass(frozen=True)
class Tower:
    kind: str  # VISION | TEXT
    module: type
    config_from: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def _sizes(group: Mapping[str, Any], variants: Mapping[str, tuple], path: str) -> dict[str, int]:
    """width/depth/num_heads/mlp_dim: the group's own ('custom') or a named variant's."""
    variant = group['variant']
    if variant == CUSTOM_VARIANT:
        return {key: int(group[key]) for key in ('width', 'depth', 'num_heads', 'mlp_dim')}
    if variant not in variants:
        raise ValueError(f'config key {path}.variant must be one of {(CUSTOM_VARIANT, *variants)}, got {variant!r}')
    return dict(zip(('width', 'depth', 'num_heads', 'mlp_dim'), variants[variant]))


def _options(group: Mapping[str, Any], model: Mapping[str, Any], names: tuple[str, ...]) -> dict:
    """The group's values of `names`, with the model-wide remat (unless the tower names its own) and scan."""
    out = {name: group[name] for name in names}
    out['remat'] = str(group['remat'] or model['remat'])
    out['scan'] = bool(model['scan'])
    return out


def vit_config_from(group: Mapping[str, Any], model: Mapping[str, Any]) -> ViTConfig:
    options = _options(
        group,
        model,
        ('dropout', 'pool', 'ln_eps', 'activation', 'pre_layernorm', 'patch_bias', 'pooler'),
    )
    return ViTConfig(
        image_size=int(model['image_size']),
        patch_size=int(group['patch_size']),
        **_sizes(group, VIT_VARIANTS, 'model.vision'),
        **options,
    )


def text_config_from(group: Mapping[str, Any], model: Mapping[str, Any]) -> TextConfig:
    options = _options(
        group,
        model,
        (
            'vocab_size',
            'dropout',
            'pre_norm',
            'max_positions',
            'type_vocab_size',
            'pool',
            'pooler',
            'embed_norm',
            'causal',
            'activation',
            'ln_eps',
        ),
    )
    fusion = int(group['fusion_layers'])
    return TextConfig(
        max_len=int(model['max_text_len']),
        num_fusion_layers=fusion,
        fusion_images=int(group['fusion_images']),
        **_sizes(group, TEXT_VARIANTS, 'model.text'),
        **options,
    )


TOWERS.register('vit')(Tower(VISION, ViT, vit_config_from))
TOWERS.register('transformer')(Tower(TEXT, TextEncoder, text_config_from))


def tower(name: str, kind: str) -> Tower:
    """The registered tower `name`, which must be of `kind` (a vision tower cannot read text)."""
    found = TOWERS.get(name)
    if found.kind != kind:
        raise ValueError(f'config key model.{kind}.tower names {name!r}, a {found.kind} tower; name a {kind} tower')
    return found
