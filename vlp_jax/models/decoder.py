"""The image-grounded text decoder: causal self-attention, cross-attention to a context, MLP; an LM head
tied to the word embeddings. Config group `model.decoder`.

Two weight layouts (`model.decoder.layout`):

- 'shared' (BLIP): the decoder runs the text tower's layers and then its fusion layers, sharing every
  weight with them (embeddings, cross-attention, MLPs, LayerNorms, the final norms) except the
  self-attention, which is its own and causal ("tie_encoder_decoder_weights(..., '/attention')" in BLIP's
  blip_pretrain.py ties everything but the self-attention modules). Its params are only
  `decoder/block_{i}/{attn, ln_attn}`, one per text layer then per fusion layer.
- 'separate' (ALBEF's VQA): `model.decoder.depth` layers of its own (self-attention, cross-attention, MLP,
  `decoder/block_{i}/...`), which a warm start fills from the fusion layers of a pretrained run
  (`warm_start_aliases`), as ALBEF's VQA copies layers 6-11 of its text encoder into the decoder.

In both, the word and position embeddings are the text tower's and the LM head is the fusion model's MLM
head (dense -> GELU -> LayerNorm -> the word embeddings + bias), as BLIP's decoder's `cls.predictions`
shares the encoder's word embeddings. The context (`model.decoder.context`) is the image tokens ('image':
BLIP's captioner) or the fusion encoder's output for a question ('fused': ALBEF's and BLIP's VQA answer
decoders).

Decoding reuses the training layers with a key/value cache (`init_cache`, `step`): each new token costs one
position of self-attention against the cache, and the context's keys and values are projected once.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.decoder_config import DecoderConfig
from vlp_jax.models.layers import ACT_BLE, ACT_BLHK, MASK_VALUE, HeadDense, MlpBlock, layer_norm

Array = jax.Array
PyTree = Any


class CachedAttention(nn.Module):
    """Multi-head attention with the param names of layers.MultiHeadAttention (query, key, value, out), run as
    `kv` (keys and values of a context, once) and `attend` (queries against given keys and values), so a
    decoder step attends one new position to a cache."""

    width: int
    num_heads: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    def setup(self) -> None:
        head_dim = self.width // self.num_heads
        proj = lambda: HeadDense((self.num_heads, head_dim), ('embed', 'heads', 'kv'), self.dtype)
        self.query, self.key, self.value = proj(), proj(), proj()
        self.out = HeadDense((self.width,), ('heads', 'kv', 'embed'), self.dtype)
        self.dropout = nn.Dropout(rate=self.dropout_rate)

    def kv(self, context: Array) -> tuple[Array, Array]:
        """[B, N, Dc] -> keys, values [B, N, heads, head_dim]."""
        return (
            nn.with_logical_constraint(self.key(context), ACT_BLHK),
            nn.with_logical_constraint(self.value(context), ACT_BLHK),
        )

    def attend(self, x: Array, keys: Array, values: Array, mask: Array | None, deterministic: bool = True) -> Array:
        """x [B, Lq, D] against keys/values [B, Lk, H, Dh]; `mask` broadcastable to [B, H, Lq, Lk] (True: attend).
        The arithmetic of layers.MultiHeadAttention: scaled queries, float32 logits and softmax, MASK_VALUE."""
        head_dim = self.width // self.num_heads
        q = nn.with_logical_constraint(self.query(x), ACT_BLHK)
        q = q / jnp.sqrt(head_dim).astype(q.dtype)
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, keys, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.float32(MASK_VALUE))
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if self.dropout_rate > 0.0:
            probs = self.dropout(probs, deterministic=deterministic)
        out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(self.dtype), values.astype(self.dtype))
        out = self.out(nn.with_logical_constraint(out, ACT_BLHK))
        return nn.with_logical_constraint(out, ACT_BLE)

    def attend_cached(self, x: Array, keys: Array, values: Array, mask: Array | None) -> Array:
        """`attend` (deterministic) against keys [B, H, Dh, Lk] and values [B, H, Lk, Dh] in the cache's layout
        (`cache_layout`), the one XLA's batched matmuls read without transposing: a decoding step attends to
        the cache and the context as they are, copying neither."""
        head_dim = self.width // self.num_heads
        q = self.query(x)
        q = q / jnp.sqrt(head_dim).astype(q.dtype)
        logits = jnp.einsum('bqhd,bhdk->bhqk', q, keys, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.float32(MASK_VALUE))
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        out = jnp.einsum('bhqk,bhkd->bqhd', probs.astype(self.dtype), values.astype(self.dtype))
        return self.out(out)


def cache_layout(keys: Array, values: Array) -> tuple[Array, Array]:
    """Keys and values [B, L, H, Dh] (CachedAttention.kv) -> keys [B, H, Dh, L], values [B, H, L, Dh]."""
    return keys.transpose(0, 2, 3, 1), values.transpose(0, 2, 1, 3)


def key_mask(mask: Array | None) -> Array | None:
    """[B, Lk] valid keys -> bool [B, 1, 1, Lk]."""
    return None if mask is None else jnp.asarray(mask).astype(bool)[:, None, None, :]


def causal_mask(length: int) -> Array:
    """bool [1, 1, L, L]: query t attends to keys <= t."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


class DecoderBlock(nn.Module):
    """One decoder layer with layers.TransformerBlock's param names (attn, ln_attn, xattn, ln_xattn, mlp, ln_mlp)
    and its residual arithmetic (pre- or post-LN, dropout after each sub-block), the self-attention causal.

    `parts` says which params this block owns: 'all' ('separate' layout), 'self' (the 'shared' layout's own
    causal self-attention) or 'rest' (the cross-attention and MLP, applied with the text tower's params).
    """

    width: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    pre_norm: bool = True
    ln_eps: float = 1e-6
    activation: str = 'gelu'
    cross_attention: bool = True
    parts: str = 'all'

    def setup(self) -> None:
        attention = lambda: CachedAttention(self.width, self.num_heads, self.dtype, self.dropout_rate)
        if self.parts in ('all', 'self'):
            self.attn, self.ln_attn = attention(), layer_norm(None, self.ln_eps)
        if self.parts in ('all', 'rest'):
            if self.cross_attention:
                self.xattn, self.ln_xattn = attention(), layer_norm(None, self.ln_eps)
            self.mlp = MlpBlock(self.mlp_dim, self.dtype, self.dropout_rate, self.activation)
            self.ln_mlp = layer_norm(None, self.ln_eps)
        self.dropout = nn.Dropout(rate=self.dropout_rate)

    def _residual(self, x: Array, fn, ln: nn.Module, deterministic: bool) -> Array:
        h = fn(ln(x) if self.pre_norm else x)
        if self.dropout_rate > 0.0:
            h = self.dropout(h, deterministic=deterministic)
        y = x + h.astype(x.dtype)
        if not self.pre_norm:
            y = ln(y).astype(x.dtype)
        return nn.with_logical_constraint(y, ACT_BLE)

    def self_attention(
        self, x: Array, mask: Array | None, deterministic: bool = True, cache: tuple | None = None, position=None
    ) -> tuple[Array, tuple[Array, Array]]:
        """Causal self-attention. Without `cache`: x [B, L, D] with key mask [B, L] -> (y, (keys, values)).
        With `cache` (keys [B, H, Dh, T], values [B, H, T, Dh]: `cache_layout`) and `position` p: x [B, 1, D]
        is position p; its keys and values are written at p in place and it attends to positions <= p -> (y,
        the updated cache)."""

        def attend(h):
            keys, values = self.attn.kv(h)
            if cache is None:
                mask_ = causal_mask(h.shape[1])
                if mask is not None:
                    mask_ = mask_ & key_mask(mask)
                out[0] = (keys, values)
                return self.attn.attend(h, keys, values, mask_, deterministic)
            new_keys, new_values = cache_layout(keys, values)
            cached = (
                jax.lax.dynamic_update_slice(cache[0], new_keys.astype(cache[0].dtype), (0, 0, 0, position)),
                jax.lax.dynamic_update_slice(cache[1], new_values.astype(cache[1].dtype), (0, 0, position, 0)),
            )
            out[0] = cached
            visible = (jnp.arange(cached[0].shape[-1]) <= position)[None, None, None, :]
            return self.attn.attend_cached(h, *cached, visible)

        out: list = [None]
        y = self._residual(x, attend, self.ln_attn, deterministic)
        return y, out[0]

    def context_kv(self, context: Array) -> tuple[Array, Array]:
        """The cross-attention's keys and values of a context (computed once per decoded sequence)."""
        return self.xattn.kv(context)

    def rest(
        self,
        x: Array,
        context_kv: tuple[Array, Array] | None,
        context_mask: Array | None,
        deterministic: bool = True,
        cached: bool = False,
    ) -> Array:
        """Cross-attention to the context's keys/values (when this layer has it; `cached`: in `cache_layout`),
        then the MLP."""
        if self.cross_attention:
            if cached:
                attend = lambda h: self.xattn.attend_cached(h, *context_kv, key_mask(context_mask))
            else:
                attend = lambda h: self.xattn.attend(h, *context_kv, key_mask(context_mask), deterministic)
            x = self._residual(x, attend, self.ln_xattn, deterministic)
        return self._residual(x, lambda h: self.mlp(h, deterministic=deterministic), self.ln_mlp, deterministic)

    def __call__(self, x, mask=None, context=None, context_mask=None, deterministic=True):
        """The whole layer (init and the 'separate' layout's training forward)."""
        x, _ = self.self_attention(x, mask, deterministic)
        kv = self.context_kv(context) if self.cross_attention else None
        return self.rest(x, kv, context_mask, deterministic)


def _block_params(shared: PyTree, config: DecoderConfig, layer: int) -> PyTree:
    """The text tower's params of the layer the 'shared' decoder's layer `layer` runs (text layers first)."""
    if layer < config.text_depth:
        return shared['encoder'][f'block_{layer}']
    return shared['fusion'][f'block_{layer - config.text_depth}']


class Decoder(nn.Module):
    """The decoder's layers (its own params per `DecoderConfig.layout`); the caller embeds the tokens, passes
    the text tower's params (`shared`, read by the 'shared' layout) and applies the LM head."""

    config: DecoderConfig
    width: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    pre_norm: bool = True
    ln_eps: float = 1e-6
    activation: str = 'gelu'

    def _block_module(self, layer: int, parts: str, bound: bool = False) -> DecoderBlock:
        unbound = {} if bound else {'parent': None}
        return DecoderBlock(
            self.width,
            self.num_heads,
            self.mlp_dim,
            self.dtype,
            self.dropout_rate,
            self.pre_norm,
            self.ln_eps,
            self.activation,
            self.config.cross_attention(layer),
            parts,
            **unbound,
        )

    def block(self, layer: int) -> DecoderBlock:
        return getattr(self, f'block_{layer}')

    def setup(self) -> None:
        separate = self.config.layout == 'separate'
        for i in range(self.config.depth):  # named block_{i}, as layers.Encoder names its blocks
            setattr(self, f'block_{i}', self._block_module(i, 'all' if separate else 'self', bound=True))
        if separate and self.pre_norm:
            self.ln_final = layer_norm(None, self.ln_eps)

    def _shared_call(self, layer: int, shared: PyTree, method, *args, deterministic: bool = True):
        params = dict(_block_params(shared, self.config, layer))
        names = ('xattn', 'ln_xattn', 'mlp', 'ln_mlp') if self.config.cross_attention(layer) else ('mlp', 'ln_mlp')
        rngs = {} if deterministic else {'dropout': self.make_rng('dropout')}
        block = self._block_module(layer, 'rest')
        return block.apply({'params': {name: params[name] for name in names}}, *args, method=method, rngs=rngs)

    def _context_kv(self, layer: int, shared: PyTree, context: Array) -> tuple[Array, Array] | None:
        if not self.config.cross_attention(layer):
            return None
        if self.config.layout == 'separate':
            return self.block(layer).context_kv(context)
        return self._shared_call(layer, shared, DecoderBlock.context_kv, context)

    def _rest(self, layer, shared, x, kv, context_mask, deterministic, cached=False):
        if self.config.layout == 'separate':
            return self.block(layer).rest(x, kv, context_mask, deterministic, cached)
        return self._shared_call(
            layer, shared, DecoderBlock.rest, x, kv, context_mask, deterministic, cached, deterministic=deterministic
        )

    def _segment_end(self, layer: int, shared: PyTree, x: Array) -> Array:
        """The final norm where the encoder's stack of this layer ends (layers.Encoder: LN when pre-norm, else
        a float32 cast); the fusion layers then read the text layers' output in the compute dtype."""
        cfg = self.config
        if cfg.layout == 'separate':
            if layer < cfg.depth - 1:
                return x
            return self.ln_final(x) if self.pre_norm else x.astype(jnp.float32)
        if layer == cfg.text_depth - 1:
            stack = 'encoder'
        elif layer == cfg.depth - 1:
            stack = 'fusion'
        else:
            return x
        if self.pre_norm:
            norm = nn.LayerNorm(epsilon=self.ln_eps, dtype=jnp.float32, parent=None)
            x = norm.apply({'params': shared[stack]['ln_final']}, x)
        x = x.astype(jnp.float32)
        return x.astype(self.dtype) if stack == 'encoder' else x

    def __call__(
        self,
        x: Array,
        mask: Array | None,
        context: Array,
        context_mask: Array | None,
        shared: PyTree = None,
        deterministic: bool = True,
    ) -> Array:
        """Embedded tokens [B, L, D] (causal, key mask [B, L]) attending to `context` [B, N, Dc] -> [B, L, D]."""
        for layer in range(self.config.depth):
            x, _ = self.block(layer).self_attention(x, mask, deterministic)
            kv = self._context_kv(layer, shared, context)
            x = self._rest(layer, shared, x, kv, context_mask, deterministic)
            x = self._segment_end(layer, shared, x)
        return nn.with_logical_constraint(x, ACT_BLE)

    def init_cache(self, context: Array, max_len: int, shared: PyTree = None) -> PyTree:
        """{'self': per layer (keys, values) zeros, 'cross': per layer the context's (keys, values), projected
        here once, or None}, keys [B, H, Dh, L] and values [B, H, L, Dh] (`cache_layout`): the state `step`
        carries."""
        batch, head_dim = context.shape[0], self.width // self.num_heads
        zeros = jnp.zeros((batch, max_len, self.num_heads, head_dim), self.dtype)
        cross = [self._context_kv(layer, shared, context) for layer in range(self.config.depth)]
        return {
            'self': [cache_layout(zeros, zeros) for _ in range(self.config.depth)],
            'cross': [None if kv is None else cache_layout(*kv) for kv in cross],
        }

    def step(
        self, x: Array, position: Array, cache: PyTree, context_mask: Array | None, shared: PyTree = None
    ) -> tuple[Array, PyTree]:
        """One embedded position x [B, 1, D] at `position` (a scalar) -> ([B, 1, D], the updated cache)."""
        updated = []
        for layer in range(self.config.depth):
            x, kv = self.block(layer).self_attention(x, None, True, cache['self'][layer], position)
            updated.append(kv)
            x = self._rest(layer, shared, x, cache['cross'][layer], context_mask, True, cached=True)
            x = self._segment_end(layer, shared, x)
        return x, {'self': updated, 'cross': cache['cross']}
