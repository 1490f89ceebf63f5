"""The decoder's config (`model.decoder`), resolved form, start token and warm-start sources: what the model,
the objectives, decoding and the exporters read without building the decoder (models/decoder.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vlp_jax.config import at_least, group, key

LAYOUTS = ('none', 'shared', 'separate')
CONTEXTS = ('image', 'fused')
# BLIP adds a [DEC] token to BERT's vocabulary to start a decoded sequence; vlp_jax starts it with BERT's
# [unused0] (id 1), so the vocabulary (and an exported decoder's) keeps its 30,522 rows.
DECODER_BOS_ID = 1


@group('model.decoder')
@dataclasses.dataclass(frozen=True)
class DecoderSettings:
    """The image-grounded text decoder of a fusion model (BLIP's LM, captioning, VQA answers)."""

    layout: str = key(
        'none',
        "'none' | 'shared': BLIP's, every weight shared with the text and fusion layers but the self-attention | "
        "'separate': ALBEF-VQA's, its own layers",
        choices=LAYOUTS,
    )
    depth: int = key(-1, "layers of a 'separate' decoder (-1: as many as the fusion layers)", check=at_least(-1))
    context: str = key(
        'image',
        "what the cross-attention reads: 'image' tokens | 'fused': the fusion output of a question (VQA)",
        choices=CONTEXTS,
    )


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A resolved decoder: its layout, its layers and what its cross-attention reads."""

    layout: str  # 'shared' | 'separate'
    depth: int  # 'separate': its own layers; 'shared': text depth + fusion layers (all its self-attentions)
    context: str
    text_depth: int  # 'shared': the first `text_depth` layers have no cross-attention (the text layers)

    def __post_init__(self) -> None:
        assert self.layout in LAYOUTS[1:] and self.context in CONTEXTS, self

    def cross_attention(self, layer: int) -> bool:
        return self.layout == 'separate' or layer >= self.text_depth


def decoder_config_from(
    group: Mapping[str, Any], text_depth: int, fusion_layers: int, scan: bool = False
) -> DecoderConfig | None:
    """The DecoderConfig of a `model.decoder` group (a dict), or None for layout 'none'."""
    layout = str(group.get('layout', 'none'))
    if layout == 'none':
        return None
    if layout not in LAYOUTS:
        raise ValueError(f'config key model.decoder.layout must be one of {LAYOUTS}, got {layout!r}')
    if fusion_layers <= 0:
        raise ValueError("config key model.decoder.layout needs a fusion model (model.kind='fusion')")
    if scan:
        raise ValueError('the decoder runs unscanned layers; set model.scan=False with model.decoder.layout')
    depth = int(group.get('depth', -1))
    if layout == 'shared':
        depth = text_depth + fusion_layers
    elif depth <= 0:
        depth = fusion_layers
    return DecoderConfig(layout, depth, str(group.get('context', 'image')), text_depth if layout == 'shared' else 0)


def warm_start_aliases(config: DecoderConfig | None) -> dict[str, str]:
    """{param path prefix of this decoder: the prefix a warm start may fill it from} where the checkpoint has
    no decoder of its own: a 'separate' decoder's layers from the fusion layers (ALBEF's VQA), a 'shared'
    decoder's self-attention from the self-attention of the layer it runs (BLIP starts both from BERT)."""
    if config is None:
        return {}
    aliases = {}
    for layer in range(config.depth):
        target = f'decoder/block_{layer}/'
        if config.layout == 'separate':
            aliases[target] = f'text/fusion/block_{layer}/'
        elif layer < config.text_depth:
            aliases[target] = f'text/encoder/block_{layer}/'
        else:
            aliases[target] = f'text/fusion/block_{layer - config.text_depth}/'
    if config.layout == 'separate':
        aliases['decoder/ln_final/'] = 'text/fusion/ln_final/'
    return aliases
