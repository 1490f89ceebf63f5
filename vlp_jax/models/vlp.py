"""The VLP model: image/text towers, projections, temperature, bias; with kind='fusion' also
ALBEF's fusion layers and its ITM and MLM heads."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.layers import EMBED_INIT_STD, PARAM_DTYPE, layer_norm, partitioned
from vlp_jax.models.text import BERT_LN_EPS, BERT_VOCAB_SIZE, TEXT_VARIANTS, TextConfig, TextEncoder, text_config
from vlp_jax.models.vit import VIT_VARIANTS, ViT, ViTConfig, vit_config

Array = jax.Array

CUSTOM_VARIANT = 'custom'
MODEL_KINDS = ('dual', 'fusion')
ITM_CLASSES = 2  # ALBEF's ITM head: (not a match, match)
DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Added under the square root of the L2 normalisation so zero vectors stay finite.
NORM_EPS = 1e-12

MASKED_LOGIT = -1.0e9  # the MLM logit of a padding row of the word-embedding table


@dataclasses.dataclass(frozen=True)
class VLPConfig:
    """Whole-model hyper-parameters."""

    vision: ViTConfig
    text: TextConfig
    embed_dim: int
    temperature_init: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    sigmoid_bias_init: float = -10.0
    dtype: str = 'float32'
    kind: str = 'dual'  # 'dual': two towers; 'fusion': + fusion layers, ITM and MLM heads (ALBEF)
    proj_bias: bool = True  # biases on image_proj/text_proj (CLIP's projections have none)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {list(DTYPES)}, got {self.dtype!r}')
        if self.kind not in MODEL_KINDS:
            raise ValueError(f'kind must be one of {MODEL_KINDS}, got {self.kind!r}')
        if (self.kind == 'fusion') != (self.text.num_fusion_layers > 0):
            raise ValueError(
                f"kind {self.kind!r} with {self.text.num_fusion_layers} fusion layers: 'fusion' needs "
                "text fusion layers > 0 and 'dual' none"
            )
        if not 0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError('need 0 < temperature_min <= temperature_init <= temperature_max')

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype for activations."""
        return DTYPES[self.dtype]


def l2_normalize(x: Array, axis: int = -1) -> Array:
    """Float32 unit-norm vectors along ``axis``."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + NORM_EPS)


def clamp_temperature(params: Mapping[str, Any], config: VLPConfig) -> dict:
    """Clips 'log_temperature' to [log(min), log(max)] (ALBEF clamps each step).

    Accepts the param dict itself or a ``{'params': ...}`` variables dict; returns
    a new dict of the same structure (the input is not mutated).
    """
    if 'params' in params and 'log_temperature' not in params:
        return {**params, 'params': clamp_temperature(params['params'], config)}
    lo, hi = math.log(config.temperature_min), math.log(config.temperature_max)
    out = dict(params)
    out['log_temperature'] = jnp.clip(params['log_temperature'], lo, hi)
    return out


class VLPModel(nn.Module):
    """Image and text towers projected into a shared, L2-normalised space."""

    config: VLPConfig

    def setup(self) -> None:
        cfg = self.config
        dtype = cfg.compute_dtype
        self.vision = ViT(cfg.vision, dtype=dtype)
        self.text = TextEncoder(cfg.text, dtype=dtype)

        def proj(name: str) -> nn.Dense:
            return nn.Dense(
                cfg.embed_dim,
                dtype=dtype,
                param_dtype=PARAM_DTYPE,
                use_bias=cfg.proj_bias,
                kernel_init=partitioned(nn.initializers.lecun_normal(), ('embed', 'proj')),
                bias_init=partitioned(nn.initializers.zeros_init(), ('proj',)),
                name=name,
            )

        self.image_proj = proj('image_proj')
        self.text_proj = proj('text_proj')
        self.log_temperature = self.param(
            'log_temperature',
            partitioned(nn.initializers.constant(math.log(cfg.temperature_init)), ()),
            (),
            PARAM_DTYPE,
        )
        self.sigmoid_bias = self.param(
            'sigmoid_bias', partitioned(nn.initializers.constant(cfg.sigmoid_bias_init), ()), (), PARAM_DTYPE
        )
        if cfg.kind == 'fusion':
            width = cfg.text.width
            self.itm_head = nn.Dense(
                ITM_CLASSES,
                dtype=jnp.float32,
                param_dtype=PARAM_DTYPE,
                kernel_init=partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('embed', None)),
                bias_init=partitioned(nn.initializers.zeros_init(), (None,)),
            )
            # BERT's MLM head: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings (+ bias).
            self.mlm_dense = nn.Dense(
                width,
                dtype=dtype,
                param_dtype=PARAM_DTYPE,
                kernel_init=partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), ('embed', 'mlp')),
                bias_init=partitioned(nn.initializers.zeros_init(), ('mlp',)),
            )
            self.mlm_norm = layer_norm(None, BERT_LN_EPS)
            self.mlm_bias = self.param(
                'mlm_bias',
                partitioned(nn.initializers.zeros_init(), ('vocab',)),
                (cfg.text.embedding_rows,),
                PARAM_DTYPE,
            )

    def _image(self, image: Array, deterministic: bool) -> tuple[Array, Array]:
        pooled, tokens = self.vision(image, deterministic=deterministic)
        return l2_normalize(self.image_proj(pooled)), tokens

    def _text(self, text_ids: Array, text_mask: Array, deterministic: bool) -> tuple[Array, Array]:
        pooled, tokens = self.text(text_ids, text_mask, deterministic=deterministic)
        return l2_normalize(self.text_proj(pooled)), tokens

    def logit_scale(self) -> Array:
        """1 / clip(exp(log_temperature), min, max), float32 scalar."""
        cfg = self.config
        temperature = jnp.clip(
            jnp.exp(self.log_temperature.astype(jnp.float32)), cfg.temperature_min, cfg.temperature_max
        )
        return 1.0 / temperature

    def __call__(self, image: Array, text_ids: Array, text_mask: Array, deterministic: bool = True) -> dict[str, Array]:
        """Embeds a batch of (image, text) pairs; creates every param at init.

        A fusion model's heads run here only at init (to create their params); training
        calls `fuse`, `itm_logits` and `mlm_logits` on the pairs it chooses.
        """
        image_embed, image_tokens = self._image(image, deterministic)
        text_embed, text_tokens = self._text(text_ids, text_mask, deterministic)
        if self.config.kind == 'fusion' and self.is_initializing():
            fused = self.fuse(text_tokens, text_mask, image_tokens, deterministic)
            self.itm_logits(fused)
            self.mlm_logits(fused)
        return {
            'image_embed': image_embed,
            'text_embed': text_embed,
            'image_tokens': image_tokens,
            'text_tokens': text_tokens,
            'logit_scale': self.logit_scale(),
            'sigmoid_bias': self.sigmoid_bias.astype(jnp.float32),
        }

    def text_tokens(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> Array:
        """[B, L] ids -> [B, L, width] tokens of the text layers (what `fuse` continues; MLM's masked input)."""
        return self.text(text_ids, text_mask, deterministic=deterministic)[1]

    def image_tokens(self, image: Array, deterministic: bool = True) -> Array:
        """[B, H, W, C] -> [B, N, width_v] tokens of the image tower (what `fuse` attends to)."""
        return self.vision(image, deterministic=deterministic)[1]

    def fuse(self, text_tokens: Array, text_mask: Array, image_tokens: Array, deterministic: bool = True) -> Array:
        """[B, L, width] text tokens (from the text layers) attending to [B, N, width_v] image tokens."""
        return self.text.fuse(text_tokens, text_mask, image_tokens, deterministic)

    def itm_logits(self, fused_tokens: Array) -> Array:
        """[B, L, width] fused tokens -> [B, 2] float32 (not a match, match) from the fused [CLS]."""
        return self.itm_head(fused_tokens[:, 0].astype(jnp.float32))

    def mlm_logits(self, fused_tokens: Array) -> Array:
        """[B, L, width] fused tokens -> [B, L, embedding_rows] float32 word logits (decoder tied to the word
        embeddings); the padding rows beyond vocab_size get MASKED_LOGIT, so they never win or take mass."""
        hidden = self.mlm_norm(nn.gelu(self.mlm_dense(fused_tokens), approximate=False))
        logits = self.text.attend(hidden).astype(jnp.float32) + self.mlm_bias
        real = jnp.arange(self.config.text.embedding_rows) < self.config.text.vocab_size
        logits = jnp.where(real, logits, MASKED_LOGIT)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

    def encode_images(self, image: Array, deterministic: bool = True) -> Array:
        """[B, H, W, C] -> [B, embed_dim] unit-norm float32."""
        return self._image(image, deterministic)[0]

    def encode_texts(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> Array:
        """[B, L] ids + mask -> [B, embed_dim] unit-norm float32."""
        return self._text(text_ids, text_mask, deterministic)[0]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Reads ``key`` from a dict-like or attribute-style config (ConfigDict, dict)."""
    try:
        return cfg[key]
    except (KeyError, TypeError, AttributeError, IndexError):
        pass
    try:
        return getattr(cfg, key)
    except (AttributeError, KeyError):
        return default


def _has(cfg: Any, key: str) -> bool:
    return _get(cfg, key, _MISSING) is not _MISSING


_MISSING = object()


def _custom_sizes(tower: Any) -> dict[str, int]:
    """The sizes a 'custom' tower reads from its config (a named variant fixes them)."""
    return {key: int(_get(tower, key)) for key in ('width', 'depth', 'num_heads', 'mlp_dim')}


def model_config_from_dict(cfg: Any) -> VLPConfig:
    """Builds a VLPConfig from the ``model`` config section (or a config holding it).

    Named variants (ViT 'Ti'/'S'/'B'/'L', text 'tiny'/'mini'/'base') ignore the
    custom width/depth/num_heads/mlp_dim keys; 'custom' reads them.
    """
    if not _has(cfg, 'embed_dim') and _has(cfg, 'model'):
        cfg = _get(cfg, 'model')
    image_size = int(_get(cfg, 'image_size'))
    max_len = int(_get(cfg, 'max_text_len'))

    v = _get(cfg, 'vision')
    v_variant = _get(v, 'variant', CUSTOM_VARIANT)
    remat = str(_get(cfg, 'remat', 'none'))  # both towers, unless a tower names its own
    scan = bool(_get(cfg, 'scan', False))
    v_defaults = ViTConfig.__dataclass_fields__
    v_extra = dict(
        dropout=float(_get(v, 'dropout', 0.0)),
        pool=str(_get(v, 'pool', 'cls')),
        remat=str(_get(v, 'remat', '') or remat),
        scan=scan,
        ln_eps=float(_get(v, 'ln_eps', v_defaults['ln_eps'].default)),
        activation=str(_get(v, 'activation', 'gelu')),
        pre_layernorm=bool(_get(v, 'pre_layernorm', False)),
        patch_bias=bool(_get(v, 'patch_bias', True)),
        pooler=bool(_get(v, 'pooler', False)),
    )
    patch = int(_get(v, 'patch_size'))
    if v_variant == CUSTOM_VARIANT:
        vision = ViTConfig(image_size=image_size, patch_size=patch, **_custom_sizes(v), **v_extra)
    elif v_variant in VIT_VARIANTS:
        vision = vit_config(v_variant, image_size, patch, **v_extra)
    else:
        raise ValueError(f'unknown vision variant {v_variant!r}')

    t = _get(cfg, 'text')
    t_variant = _get(t, 'variant', CUSTOM_VARIANT)
    t_extra = dict(
        vocab_size=int(_get(t, 'vocab_size', BERT_VOCAB_SIZE)),
        dropout=float(_get(t, 'dropout', 0.0)),
        num_fusion_layers=int(_get(t, 'fusion_layers', _get(t, 'num_fusion_layers', 0))),
        pre_norm=bool(_get(t, 'pre_norm', True)),
        remat=str(_get(t, 'remat', '') or remat),
        scan=scan,
        max_positions=int(_get(t, 'max_positions', 0)),
        type_vocab_size=int(_get(t, 'type_vocab_size', 0)),
        pool=str(_get(t, 'pool', 'cls')),
        pooler=bool(_get(t, 'pooler', False)),
        embed_norm=bool(_get(t, 'embed_norm', True)),
        causal=bool(_get(t, 'causal', False)),
        activation=str(_get(t, 'activation', 'gelu')),
        ln_eps=float(_get(t, 'ln_eps', BERT_LN_EPS)),
    )
    if t_variant == CUSTOM_VARIANT:
        text = TextConfig(max_len=max_len, **_custom_sizes(t), **t_extra)
    elif t_variant in TEXT_VARIANTS:
        text = text_config(t_variant, max_len, **t_extra)
    else:
        raise ValueError(f'unknown text variant {t_variant!r}')

    defaults = VLPConfig.__dataclass_fields__
    optional = {
        k: _get(cfg, k, defaults[k].default)
        for k in ('temperature_init', 'temperature_min', 'temperature_max', 'sigmoid_bias_init')
    }
    return VLPConfig(
        vision=vision,
        text=text,
        embed_dim=int(_get(cfg, 'embed_dim')),
        dtype=str(_get(cfg, 'dtype', 'float32')),
        kind=str(_get(cfg, 'kind', 'dual')),
        proj_bias=bool(_get(cfg, 'proj_bias', True)),
        **{k: float(val) for k, val in optional.items()},
    )
