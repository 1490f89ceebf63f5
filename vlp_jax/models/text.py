"""BERT-style text tower: token + position embeddings -> Encoder -> [CLS] pooling.

Fusion layers (cross-attention to image tokens, ALBEF-style) get their slot here:
``TextConfig.num_fusion_layers``; ``layers.TransformerBlock(cross_attention=True)``
already provides the block they are built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE  # numpy-only module: the shipped vocabulary's size
from vlp_jax.models.layers import ACT_BLE, EMBED_INIT_STD, PARAM_DTYPE, Encoder, layer_norm, partitioned

Array = jax.Array

BERT_LN_EPS = 1e-12  # BERT's LayerNorm epsilon, kept so imported weights match
# Named sizes: variant -> (width, depth, num_heads, mlp_dim).
TEXT_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    'tiny': (128, 2, 2, 512),  # BERT-tiny
    'mini': (384, 6, 12, 1536),  # MiniLM-L6
    'base': (768, 12, 12, 3072),  # BERT-base
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text-tower hyper-parameters.

    ``pre_norm=False`` gives the post-LN BERT layout needed to load BERT/MiniLM
    weights; the default pre-LN layout trains more stably from scratch.
    """

    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    vocab_size: int = BERT_VOCAB_SIZE
    dropout: float = 0.0
    num_fusion_layers: int = 0
    pre_norm: bool = True

    def __post_init__(self) -> None:
        if self.width % self.num_heads != 0:
            raise ValueError(f'width ({self.width}) must be divisible by num_heads ({self.num_heads})')


def text_config(variant: str, max_len: int, **overrides: Any) -> TextConfig:
    """Builds a TextConfig for a named size ('tiny', 'mini', 'base')."""
    if variant not in TEXT_VARIANTS:
        raise ValueError(f'unknown text variant {variant!r}; known: {list(TEXT_VARIANTS)}')
    width, depth, heads, mlp = TEXT_VARIANTS[variant]
    return TextConfig(max_len=max_len, width=width, depth=depth, num_heads=heads, mlp_dim=mlp, **overrides)


class TextEncoder(nn.Module):
    """Text encoder; returns (pooled [B, width] = [CLS] token, tokens [B, L, width])."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """text_ids: [B, L] int; text_mask: [B, L] (1 = real token, 0 = padding)."""
        cfg = self.config
        if cfg.num_fusion_layers > 0:
            # Slot for the fusion issue: an Encoder(cross_attention=True) over
            # (tokens, text_mask, image_tokens) named 'fusion'.
            raise NotImplementedError('fusion layers are not implemented yet')
        seq_len = text_ids.shape[1]
        if seq_len > cfg.max_len:
            raise ValueError(f'text length {seq_len} exceeds max_len {cfg.max_len}')

        x = nn.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.width,
            dtype=self.dtype,
            param_dtype=PARAM_DTYPE,
            embedding_init=partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('vocab', 'embed')),
            name='token_embed',
        )(text_ids)
        pos = self.param(
            'pos_embedding',
            partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('length', 'embed')),
            (cfg.max_len, cfg.width),
            PARAM_DTYPE,
        )
        x = x + pos[:seq_len].astype(x.dtype)[None]
        x = layer_norm('ln_embed', BERT_LN_EPS)(x).astype(self.dtype)
        x = nn.with_logical_constraint(x, ACT_BLE)
        if cfg.dropout > 0.0:
            x = nn.Dropout(rate=cfg.dropout)(x, deterministic=deterministic)

        tokens = Encoder(
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            dtype=self.dtype,
            dropout_rate=cfg.dropout,
            pre_norm=cfg.pre_norm,
            ln_eps=BERT_LN_EPS,
            name='encoder',
        )(x, mask=text_mask, deterministic=deterministic)
        return tokens[:, 0], tokens
