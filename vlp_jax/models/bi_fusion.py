"""NLVR2's fusion layers for two images (ALBEF models/model_nlvr.py), and how they start from one-image layers.

ALBEF's NLVR2 model has 18 BERT layers where the pretrained model has 12: the 6 text layers, then each of
the 6 fusion layers twice. xbert's layer `l` cross-attends to "encoder_hidden_states[(self.layer_num -
self.config.fusion_layer) % len(encoder_hidden_states)]", so of each pair the first block attends to image
0 and the second to image 1, and the text flows through both in turn. The pair shares the key and value
projections of its cross-attention ("share_cross_attention": "if 'key' in name or 'value' in name:
module_0.weight = module_1.weight"); everything else (self-attention, the cross-attention's query and
output, the MLP, the LayerNorms) is its own. Both blocks start as copies of the pretrained layer
(Pretrain_nlvr.py: "new_layer_num = (layer_num-6)*2+6", the same state_dict entry for new_layer_num and
new_layer_num+1).

Here: `PairedFusion` holds `pair_{i}` = blocks `image0` and `image1` (layers.TransformerBlock) and the
shared projections `xattn_key` and `xattn_value`; the final LayerNorm (pre-norm) is the one-image
encoder's. `single_image_sources` maps each param to the one-image fusion layer's param it starts from
(warm_start.py), so a pretrained one-image checkpoint initialises the two-image model; with both images
equal the pair computes the pretrained layer twice.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.layers import ACT_BLE, DEFAULT_LN_EPS, HeadDense, TransformerBlock, layer_norm

Array = jax.Array
PAIR = re.compile(r'^text/fusion/pair_(\d+)/image[01]/(.*)$')
SHARED = re.compile(r'^text/fusion/pair_(\d+)/xattn_(key|value)/(.*)$')


class PairedFusion(nn.Module):
    """`depth` fusion layers for two images: each a pair of blocks (image 0, then image 1) sharing their
    cross-attention key/value projections."""

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    pre_norm: bool = True
    ln_eps: float = DEFAULT_LN_EPS
    activation: str = 'gelu'

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, contexts: tuple[Array, ...], deterministic: bool = True) -> Array:
        """x: [B, L, D] text tokens; contexts: the two images' tokens [B, N, Dc] -> [B, L, D]."""
        assert len(contexts) == 2, 'a paired fusion layer attends to two images'
        width = x.shape[-1]
        head_dim = width // self.num_heads
        x = nn.with_logical_constraint(x, ACT_BLE)
        for i in range(self.depth):
            x = FusionPair(
                self.num_heads,
                self.mlp_dim,
                head_dim,
                self.dtype,
                self.dropout_rate,
                self.pre_norm,
                self.ln_eps,
                self.activation,
                name=f'pair_{i}',
            )(x, mask, contexts, deterministic)
        if self.pre_norm:
            x = layer_norm('ln_final', self.ln_eps)(x)
        else:
            x = x.astype(jnp.float32)
        return nn.with_logical_constraint(x, ACT_BLE)


class FusionPair(nn.Module):
    """Two fusion blocks in turn, block n cross-attending to image n, with one key and one value projection."""

    num_heads: int
    mlp_dim: int
    head_dim: int
    dtype: Any
    dropout_rate: float
    pre_norm: bool
    ln_eps: float
    activation: str

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, contexts: tuple[Array, ...], deterministic: bool) -> Array:
        def proj(name: str) -> HeadDense:
            return HeadDense((self.num_heads, self.head_dim), ('embed', 'heads', 'kv'), self.dtype, name=name)

        shared = (proj('xattn_key'), proj('xattn_value'))
        for n, context in enumerate(contexts):
            block = TransformerBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dtype=self.dtype,
                dropout_rate=self.dropout_rate,
                cross_attention=True,
                pre_norm=self.pre_norm,
                ln_eps=self.ln_eps,
                activation=self.activation,
                xattn_kv=shared,
                name=f'image{n}',
            )
            x = block(x, mask, context.astype(self.dtype), None, deterministic)
        return x


def single_image_sources(key: str) -> tuple[str, ...]:
    """The one-image fusion param a two-image param starts from: 'text/fusion/pair_i/image{0,1}/X' <-
    'text/fusion/block_i/X', 'text/fusion/pair_i/xattn_key/X' <- 'text/fusion/block_i/xattn/key/X'."""
    match = PAIR.match(key)
    if match:
        return (f'text/fusion/block_{match.group(1)}/{match.group(2)}',)
    match = SHARED.match(key)
    if match:
        return (f'text/fusion/block_{match.group(1)}/xattn/{match.group(2)}/{match.group(3)}',)
    return ()
