"""BERT-style text tower: token + position (+ token type) embeddings -> Encoder -> pooling.

With ``TextConfig.num_fusion_layers > 0`` the tower continues into ALBEF's fusion
layers (``layers.TransformerBlock(cross_attention=True)``) after the text layers.
The options beyond the defaults exist so imported weights compute what they computed
in their own code (models/importers.py): BERT/MiniLM (post-LN, token types, mean or
[CLS] pooling, a pooler) and CLIP's text tower (no embedding LayerNorm, causal mask,
quick_gelu, pooling at the highest token id).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE  # numpy-only module: the shipped vocabulary's size
from vlp_jax.models.bi_fusion import PairedFusion
from vlp_jax.models.layers import (
    ACT_BLE,
    ACTIVATIONS,
    EMBED_INIT_STD,
    PARAM_DTYPE,
    REMAT_POLICIES,
    Encoder,
    layer_norm,
    partitioned,
    pooler_dense,
)

Array = jax.Array
VOCAB_MULTIPLE = 128  # word-embedding rows are padded to a multiple of this (large-model trainers' choice)

BERT_LN_EPS = 1e-12  # BERT's LayerNorm epsilon, kept so imported weights match
# Pooling of the text tokens into the tower's output: 'cls' (token 0, BERT), 'mean' (over real tokens,
# sentence-transformers), 'argmax' (the token with the highest id: CLIP's end-of-text, HF's rule for its
# original checkpoints), 'last' (the last real token: [SEP] with the BERT tokenizer).
TEXT_POOLS = ('cls', 'mean', 'argmax', 'last')
MEAN_POOL_MIN_COUNT = 1e-9  # sentence-transformers clamps the token count from below by this
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
    weights; the default pre-LN layout trains more stably from scratch. The defaults of
    the fields after ``scan`` give today's tower (same params, same outputs).
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
    remat: str = 'none'  # layers.REMAT_POLICIES, for the text and fusion layers
    scan: bool = False  # nn.scan over the layers (layers.Encoder)
    max_positions: int = 0  # rows of the position table; 0 = max_len (MiniLM/BERT: 512, CLIP: 77)
    type_vocab_size: int = 0  # token-type rows (BERT: 2); row 0 is added to every token (no segments)
    pool: str = 'cls'  # TEXT_POOLS
    pooler: bool = False  # BERT's pooler: tanh(dense(pooled))
    embed_norm: bool = True  # LayerNorm after the embeddings (BERT: yes, CLIP: no)
    causal: bool = False  # causal self-attention (CLIP)
    activation: str = 'gelu'  # layers.ACTIVATIONS
    ln_eps: float = BERT_LN_EPS
    fusion_images: int = 1  # images each fusion layer sees: 2 = NLVR2's paired layers (models/bi_fusion.py)
    expose_fusion_block: int = -1  # >= 0: that fusion block's cross-attention probabilities are exposed (Grad-CAM)

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f'config key model.text.remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}')
        if self.width % self.num_heads != 0:
            raise ValueError(f'width ({self.width}) must be divisible by num_heads ({self.num_heads})')
        if self.pool not in TEXT_POOLS:
            raise ValueError(f'model.text.pool must be one of {TEXT_POOLS}, got {self.pool!r}')
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'model.text.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}')
        if self.max_positions and self.max_positions < self.max_len:
            raise ValueError(
                f'model.text.max_positions ({self.max_positions}) must be 0 or >= model.max_text_len ({self.max_len})'
            )
        if self.type_vocab_size < 0 or self.ln_eps <= 0:
            raise ValueError('model.text.type_vocab_size must be >= 0 and model.text.ln_eps > 0')
        if self.fusion_images not in (1, 2):
            raise ValueError(f'model.text.fusion_images must be 1 or 2, got {self.fusion_images}')
        if self.fusion_images == 2 and (self.num_fusion_layers < 1 or self.scan or self.remat != 'none'):
            raise ValueError(
                'model.text.fusion_images=2 (paired fusion layers) needs model.text.fusion_layers > 0, '
                "model.scan=False and remat 'none'"
            )

    @property
    def position_rows(self) -> int:
        """Rows of the position-embedding table (at least max_len)."""
        return self.max_positions or self.max_len

    @property
    def embedding_rows(self) -> int:
        """The word-embedding table's rows: vocab_size padded to a multiple of VOCAB_MULTIPLE, so a
        tensor-parallel 'model' axis divides it (BERT's 30,522 is 2 x 3 x 5,087); the MLM head masks
        the padded rows out."""
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def text_config(variant: str, max_len: int, **overrides: Any) -> TextConfig:
    """Builds a TextConfig for a named size ('tiny', 'mini', 'base')."""
    if variant not in TEXT_VARIANTS:
        raise ValueError(f'unknown text variant {variant!r}; known: {list(TEXT_VARIANTS)}')
    width, depth, heads, mlp = TEXT_VARIANTS[variant]
    return TextConfig(max_len=max_len, width=width, depth=depth, num_heads=heads, mlp_dim=mlp, **overrides)


class TextEncoder(nn.Module):
    """BERT-style text tower: text layers, then (ALBEF) fusion layers that cross-attend to the image.

    `__call__` runs the text layers alone and returns (pooled [B, width] (TextConfig.pool), tokens
    [B, L, width]): the unimodal text embedding for ITC is taken there, before any fusion.
    `fuse` continues the tokens through the fusion layers (self-attention -> cross-attention
    to the image tokens -> MLP), and `attend` is the decoder tied to the word embeddings
    (MLM logits). Param names match the earlier compact tower, so its checkpoints still load.
    """

    config: TextConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.token_embed = nn.Embed(
            num_embeddings=cfg.embedding_rows,
            features=cfg.width,
            dtype=self.dtype,
            param_dtype=PARAM_DTYPE,
            embedding_init=partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('vocab', 'embed')),
        )
        self.pos_embedding = self.param(
            'pos_embedding',
            partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('length', 'embed')),
            (cfg.position_rows, cfg.width),
            PARAM_DTYPE,
        )
        if cfg.type_vocab_size:
            self.type_embedding = self.param(
                'type_embedding',
                partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), (None, 'embed')),
                (cfg.type_vocab_size, cfg.width),
                PARAM_DTYPE,
            )
        if cfg.embed_norm:
            self.ln_embed = layer_norm(None, cfg.ln_eps)
        self.embed_dropout = nn.Dropout(rate=cfg.dropout)
        layers = dict(
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            dtype=self.dtype,
            dropout_rate=cfg.dropout,
            pre_norm=cfg.pre_norm,
            ln_eps=cfg.ln_eps,
            remat=cfg.remat,
            scan=cfg.scan,
            activation=cfg.activation,
        )
        self.encoder = Encoder(depth=cfg.depth, causal=cfg.causal, **layers)
        if cfg.num_fusion_layers > 0 and cfg.fusion_images == 2:
            self.fusion = PairedFusion(
                depth=cfg.num_fusion_layers,
                **{key: layers[key] for key in ('num_heads', 'mlp_dim', 'dtype', 'pre_norm', 'ln_eps', 'activation')},
                dropout_rate=cfg.dropout,
            )
        elif cfg.num_fusion_layers > 0:
            self.fusion = Encoder(
                depth=cfg.num_fusion_layers, cross_attention=True, expose_block=cfg.expose_fusion_block, **layers
            )
        if cfg.pooler:
            self.pooler = pooler_dense(cfg.width, self.dtype)

    def __call__(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """text_ids: [B, L] int; text_mask: [B, L] (1 = real token, 0 = padding)."""
        cfg = self.config
        seq_len = text_ids.shape[1]
        if seq_len > cfg.max_len:
            raise ValueError(f'text length {seq_len} exceeds max_len {cfg.max_len}')
        x = self.token_embed(text_ids)
        x = x + self.pos_embedding[:seq_len].astype(x.dtype)[None]
        if cfg.type_vocab_size:
            x = x + self.type_embedding[0].astype(x.dtype)  # every token is segment 0
        if cfg.embed_norm:
            x = self.ln_embed(x)
        x = nn.with_logical_constraint(x.astype(self.dtype), ACT_BLE)
        if cfg.dropout > 0.0:
            x = self.embed_dropout(x, deterministic=deterministic)
        tokens = self.encoder(x, mask=text_mask, deterministic=deterministic)
        return self._pool(tokens, text_ids, text_mask), tokens

    def embed(self, text_ids: Array, positions: Array | None = None, deterministic: bool = True) -> Array:
        """[B, L] ids at `positions` ([L] ints; default 0..L-1) -> [B, L, width] embeddings computed as `__call__`
        computes them (word + position (+ type row 0), LayerNorm, dropout): what the decoder reads."""
        cfg = self.config
        x = self.token_embed(text_ids)
        table = self.pos_embedding
        rows = table[: text_ids.shape[1]] if positions is None else jnp.take(table, positions, axis=0)
        x = x + rows.astype(x.dtype)[None]
        if cfg.type_vocab_size:
            x = x + self.type_embedding[0].astype(x.dtype)
        if cfg.embed_norm:
            x = self.ln_embed(x)
        x = nn.with_logical_constraint(x.astype(self.dtype), ACT_BLE)
        if cfg.dropout > 0.0:
            x = self.embed_dropout(x, deterministic=deterministic)
        return x

    def _pool(self, tokens: Array, text_ids: Array, text_mask: Array) -> Array:
        """[B, L, width] -> [B, width] by TextConfig.pool (then BERT's pooler when configured)."""
        pool = self.config.pool
        if pool == 'mean':
            weights = jnp.asarray(text_mask, jnp.float32)[..., None]
            count = jnp.maximum(jnp.sum(weights, axis=1), MEAN_POOL_MIN_COUNT)
            pooled = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1) / count
        elif pool == 'cls':
            pooled = tokens[:, 0]
        else:
            index = jnp.argmax(text_ids, axis=-1) if pool == 'argmax' else jnp.sum(text_mask, axis=-1) - 1
            pooled = jnp.take_along_axis(tokens, jnp.maximum(index, 0)[:, None, None], axis=1)[:, 0]
        if self.config.pooler:
            pooled = jnp.tanh(self.pooler(pooled).astype(jnp.float32))
        return pooled

    def fuse(
        self, text_tokens: Array, text_mask: Array, image_tokens: Array | tuple[Array, ...], deterministic: bool = True
    ) -> Array:
        """[B, L, width] text tokens -> the same after the fusion layers, each attending to all image tokens;
        with `fusion_images` 2, `image_tokens` is a pair (image 0's, image 1's) and the layers are paired."""
        assert self.config.num_fusion_layers > 0, 'this text tower has no fusion layers'
        if self.config.fusion_images == 2:
            assert isinstance(image_tokens, (tuple, list)) and len(image_tokens) == 2, 'paired layers take two images'
            return self.fusion(
                text_tokens.astype(self.dtype), text_mask, tuple(image_tokens), deterministic=deterministic
            )
        assert not isinstance(image_tokens, (tuple, list)), 'these fusion layers attend to one image'
        return self.fusion(
            text_tokens.astype(self.dtype),
            mask=text_mask,
            context=image_tokens.astype(self.dtype),
            deterministic=deterministic,
        )

    def attend(self, hidden: Array) -> Array:
        """[..., width] -> [..., vocab] logits against the word embeddings (the tied MLM decoder)."""
        return self.token_embed.attend(hidden.astype(self.dtype))

    def word_table(self) -> Array:
        """The word embeddings [embedding_rows, width] in the compute dtype, `attend`'s `hidden @ table.T` (the
        decoder's searches take the table out of their loops)."""
        return jnp.asarray(self.token_embed.embedding, self.dtype)
