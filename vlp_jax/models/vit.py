"""Vision Transformer image tower: patches -> [CLS] + tokens -> Encoder.

The options beyond the defaults let imported weights compute what they computed in their
own code (models/importers.py): HF ViT (LayerNorm eps 1e-12, a pooler) and CLIP's image
tower (a LayerNorm before the blocks, no patch bias, quick_gelu).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.layers import (
    ACT_BLE,
    ACTIVATIONS,
    DEFAULT_LN_EPS,
    EMBED_INIT_STD,
    PARAM_DTYPE,
    REMAT_POLICIES,
    Encoder,
    layer_norm,
    partitioned,
    pooler_dense,
)

Array = jax.Array

POOL_TYPES = ('cls', 'gap')
# Named sizes: variant -> (width, depth, num_heads, mlp_dim), as in ViT/DeiT.
VIT_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Image-tower hyper-parameters."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    pool: str = 'cls'
    remat: str = 'none'  # layers.REMAT_POLICIES
    scan: bool = False  # nn.scan over the layers (layers.Encoder)
    ln_eps: float = DEFAULT_LN_EPS  # HF ViT: 1e-12, CLIP: 1e-5
    activation: str = 'gelu'  # layers.ACTIVATIONS
    pre_layernorm: bool = False  # a LayerNorm on the embeddings before the blocks (CLIP)
    patch_bias: bool = True  # the patch projection's bias (CLIP has none)
    pooler: bool = False  # HF ViT's pooler: tanh(dense(pooled))

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(
                f'config key model.vision.remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}'
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f'image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})')
        if self.pool not in POOL_TYPES:
            raise ValueError(f'pool must be one of {POOL_TYPES}, got {self.pool!r}')
        if self.width % self.num_heads != 0:
            raise ValueError(f'width ({self.width}) must be divisible by num_heads ({self.num_heads})')
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'model.vision.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}')
        if self.ln_eps <= 0:
            raise ValueError(f'model.vision.ln_eps must be > 0, got {self.ln_eps}')

    @property
    def num_patches(self) -> int:
        """Patches per image (the token count without [CLS])."""
        return (self.image_size // self.patch_size) ** 2


def vit_config(variant: str, image_size: int, patch_size: int, **overrides: Any) -> ViTConfig:
    """Builds a ViTConfig for a named size ('Ti', 'S', 'B', 'L')."""
    if variant not in VIT_VARIANTS:
        raise ValueError(f'unknown ViT variant {variant!r}; known: {list(VIT_VARIANTS)}')
    width, depth, heads, mlp = VIT_VARIANTS[variant]
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        **overrides,
    )


class ViT(nn.Module):
    """ViT image encoder; returns (pooled [B, width], tokens [B, 1+N, width])."""

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """image: [B, H, W, C] float (NHWC), H == W == config.image_size."""
        cfg = self.config
        if image.shape[1] != cfg.image_size or image.shape[2] != cfg.image_size:
            raise ValueError(f'expected images of {cfg.image_size}x{cfg.image_size}, got {image.shape}')
        p = cfg.patch_size
        x = nn.Conv(
            cfg.width,
            kernel_size=(p, p),
            strides=(p, p),
            padding='VALID',
            use_bias=cfg.patch_bias,
            dtype=self.dtype,
            param_dtype=PARAM_DTYPE,
            kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, None, 'embed')),
            bias_init=partitioned(nn.initializers.zeros_init(), ('embed',)),
            name='patch_embed',
        )(image.astype(self.dtype))
        batch = x.shape[0]
        x = x.reshape(batch, -1, cfg.width)

        cls = self.param('cls', partitioned(nn.initializers.zeros_init(), ('embed',)), (cfg.width,), PARAM_DTYPE)
        cls = jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, cfg.width))
        x = jnp.concatenate([cls, x], axis=1)
        pos = self.param(
            'pos_embedding',
            partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('length', 'embed')),
            (1 + cfg.num_patches, cfg.width),
            PARAM_DTYPE,
        )
        x = x + pos.astype(x.dtype)[None]
        if cfg.pre_layernorm:
            x = layer_norm('ln_pre', cfg.ln_eps)(x).astype(self.dtype)
        x = nn.with_logical_constraint(x, ACT_BLE)
        if cfg.dropout > 0.0:
            x = nn.Dropout(rate=cfg.dropout)(x, deterministic=deterministic)

        tokens = Encoder(
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            dtype=self.dtype,
            dropout_rate=cfg.dropout,
            ln_eps=cfg.ln_eps,
            remat=cfg.remat,
            scan=cfg.scan,
            activation=cfg.activation,
            name='encoder',
        )(x, deterministic=deterministic)
        if cfg.pool == 'cls':
            pooled = tokens[:, 0]
        else:
            pooled = jnp.mean(tokens[:, 1:], axis=1)
        if cfg.pooler:
            pooled = jnp.tanh(pooler_dense(cfg.width, self.dtype, name='pooler')(pooled).astype(jnp.float32))
        return pooled, tokens
