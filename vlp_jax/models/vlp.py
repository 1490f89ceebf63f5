"""The VLP model: image/text towers, projections, temperature, bias; with kind='fusion' also
ALBEF's fusion layers and its ITM and MLM heads, and optionally a task head on the fused [CLS]
(`head`: ALBEF's 2-layer `cls_head` of NLVR2 and SNLI-VE, or its linear `ta_head`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.config import default_config
from vlp_jax.models import towers
from vlp_jax.models.bi_fusion import single_image_sources
from vlp_jax.models.decoder import Decoder
from vlp_jax.models.decoder_config import DecoderConfig, decoder_config_from, warm_start_aliases
from vlp_jax.models.layers import EMBED_INIT_STD, PARAM_DTYPE, layer_norm, partitioned
from vlp_jax.models.text import BERT_LN_EPS, TextConfig
from vlp_jax.models.vit import ViTConfig

Array = jax.Array

MODEL_KINDS = ('dual', 'fusion')
ITM_CLASSES = 2  # ALBEF's ITM head: (not a match, match)
DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Added under the square root of the L2 normalisation so zero vectors stay finite.
NORM_EPS = 1e-12

MASKED_LOGIT = -1.0e9  # the MLM logit of a padding row of the word-embedding table
HEADS = {'mlp': 'cls_head', 'linear': 'ta_head'}  # model.head -> the head's param name (ALBEF's names)


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
    vision_tower: str = 'vit'  # registered tower names (models/towers.py)
    text_tower: str = 'transformer'
    decoder: DecoderConfig | None = None  # the image-grounded text decoder (models/decoder.py), fusion only
    head: str = ''  # '' | HEADS: a task head on the fused [CLS]
    head_classes: int = 2

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
        if self.decoder is not None and self.kind != 'fusion':
            raise ValueError("a decoder (model.decoder.layout) needs model.kind='fusion'")
        if self.head and (self.head not in HEADS or self.kind != 'fusion' or self.head_classes < 2):
            raise ValueError(f"model.head {self.head!r} needs model.kind 'fusion' and model.head_classes >= 2")
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
        self.vision = towers.tower(cfg.vision_tower, towers.VISION).module(cfg.vision, dtype=dtype)
        self.text = towers.tower(cfg.text_tower, towers.TEXT).module(cfg.text, dtype=dtype)

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
            if cfg.head:
                self.task_head = ClassifierHead(cfg.head_classes, hidden=cfg.head == 'mlp', name=HEADS[cfg.head])
        if cfg.decoder is not None:
            text = cfg.text
            self.decoder = Decoder(
                cfg.decoder,
                text.width,
                text.num_heads,
                text.mlp_dim,
                dtype,
                text.dropout,
                text.pre_norm,
                text.ln_eps,
                text.activation,
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
            images = (image_tokens,) * 2 if self.config.text.fusion_images == 2 else image_tokens
            fused = self.fuse(text_tokens, text_mask, images, deterministic)
            self.itm_logits(fused)
            self.mlm_logits(fused)
            if self.config.head:
                self.head_logits(fused)
            if self.config.decoder is not None:
                if self.config.decoder.context == 'fused':
                    context, context_mask = fused, text_mask
                else:
                    context, context_mask = image_tokens, None
                self.decode(text_ids, text_mask, context, context_mask, deterministic)
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

    def fuse(
        self, text_tokens: Array, text_mask: Array, image_tokens: Array | tuple[Array, ...], deterministic: bool = True
    ) -> Array:
        """[B, L, width] text tokens (from the text layers) attending to [B, N, width_v] image tokens (a pair of
        them with `model.text.fusion_images` 2)."""
        return self.text.fuse(text_tokens, text_mask, image_tokens, deterministic)

    def head_logits(self, fused_tokens: Array) -> Array:
        """[B, L, width] fused tokens -> [B, head_classes] float32: the task head on the fused [CLS]."""
        return self.task_head(fused_tokens[:, 0].astype(jnp.float32))

    def itm_logits(self, fused_tokens: Array) -> Array:
        """[B, L, width] fused tokens -> [B, 2] float32 (not a match, match) from the fused [CLS]."""
        return self.itm_head(fused_tokens[:, 0].astype(jnp.float32))

    def mlm_logits(self, fused_tokens: Array) -> Array:
        """[B, L, width] fused tokens -> [B, L, embedding_rows] float32 word logits (decoder tied to the word
        embeddings); the padding rows beyond vocab_size get MASKED_LOGIT, so they never win or take mass."""
        logits = self.text.attend(self.lm_transform(fused_tokens)).astype(jnp.float32) + self.mlm_bias
        real = jnp.arange(self.config.text.embedding_rows) < self.config.text.vocab_size
        logits = jnp.where(real, logits, MASKED_LOGIT)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

    def lm_transform(self, hidden: Array) -> Array:
        """The MLM head before its tied word table: dense -> GELU -> LayerNorm (BERT's `transform`)."""
        return self.mlm_norm(nn.gelu(self.mlm_dense(hidden), approximate=False))

    def lm_head_weights(self) -> tuple[Array, Array]:
        """(word table [vocab_size, width] in the compute dtype, bias [vocab_size] float32): the MLM head's last
        layer without the table's padding rows, so that decoding slices them once, outside its loop;
        `lm_logits(h)[..., :vocab_size]` = `lm_transform(h) @ table.T + bias`."""
        vocab = self.config.text.vocab_size
        return self.text.word_table()[:vocab], self.mlm_bias[:vocab].astype(jnp.float32)

    def _shared(self) -> Any:
        """The text tower's params, which a 'shared' decoder runs its layers with (None for 'separate')."""
        return self.variables['params']['text'] if self.config.decoder.layout == 'shared' else None

    def decode(
        self,
        text_ids: Array,
        text_mask: Array,
        context: Array,
        context_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """The decoder's hidden states [B, L, width] of ids [B, L] ([BOS] first), each position attending causally
        to those before it and to `context` [B, N, Dc] (`context_mask` [B, N], None = all); `lm_logits` reads them."""
        x = self.text.embed(text_ids, deterministic=deterministic)
        return self.decoder(x, text_mask, context, context_mask, self._shared(), deterministic)

    def lm_logits(self, hidden: Array) -> Array:
        """Decoder hidden states -> word logits: the MLM head (tied to the word embeddings), as BLIP's decoder."""
        return self.mlm_logits(hidden)

    def decoder_cache(self, context: Array, max_len: int) -> Any:
        """The key/value cache of a decoded sequence of at most `max_len` tokens over `context`."""
        return self.decoder.init_cache(context, max_len, self._shared())

    def decoder_step(
        self, token: Array, position: Array, cache: Any, context_mask: Array | None = None
    ) -> tuple[Array, Any]:
        """One decoding step: tokens [B] at `position` -> (word logits [B, embedding_rows] of the next token, cache)."""
        hidden, cache = self.decoder_step_hidden(token, position, cache, context_mask)
        return self.lm_logits(hidden[:, None])[:, 0], cache

    def decoder_step_hidden(
        self, token: Array, position: Array, cache: Any, context_mask: Array | None = None
    ) -> tuple[Array, Any]:
        """`decoder_step` without the LM head: (the decoder's hidden state [B, width] after `token`, cache)."""
        x = self.text.embed(token[:, None], jnp.reshape(position, (1,)))
        hidden, cache = self.decoder.step(x, position, cache, context_mask, self._shared())
        return hidden[:, 0], cache

    def encode_images(self, image: Array, deterministic: bool = True) -> Array:
        """[B, H, W, C] -> [B, embed_dim] unit-norm float32."""
        return self._image(image, deterministic)[0]

    def encode_texts(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> Array:
        """[B, L] ids + mask -> [B, embed_dim] unit-norm float32."""
        return self._text(text_ids, text_mask, deterministic)[0]


class ClassifierHead(nn.Module):
    """ALBEF's task heads on the fused [CLS]: `hidden` -> dense, ReLU, dense (cls_head of NLVR2 / SNLI-VE:
    "nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, classes)"), else one dense (ta_head)."""

    classes: int
    hidden: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def dense(features: int, axes: tuple, name: str) -> nn.Dense:
            return nn.Dense(
                features,
                dtype=jnp.float32,
                param_dtype=PARAM_DTYPE,
                kernel_init=partitioned(nn.initializers.normal(stddev=EMBED_INIT_STD), axes),
                bias_init=partitioned(nn.initializers.zeros_init(), axes[1:]),
                name=name,
            )

        if self.hidden:
            x = nn.relu(dense(x.shape[-1], ('embed', 'mlp'), 'hidden')(x))
            return dense(self.classes, ('mlp', None), 'out')(x)
        return dense(self.classes, ('embed', None), 'out')(x)


def checkpoint_sources(config: VLPConfig) -> Callable[[str], tuple[str, ...]]:
    """param path -> other paths of a checkpoint it may start from (warm_start.py), tried when the checkpoint
    lacks the path itself: a two-image fusion model's paired layers start from the one-image layers they double
    (models/bi_fusion.py); a decoder's layers from the encoder layers `decoder.warm_start_aliases` names (a
    'separate' decoder from the fusion layers, as ALBEF's VQA copies them into its text decoder)."""
    pairs = single_image_sources if config.text.fusion_images == 2 else (lambda key: ())
    aliases = warm_start_aliases(config.decoder)

    def sources(key: str) -> tuple[str, ...]:
        for target, source in aliases.items():
            if key.startswith(target):
                return (source + key[len(target) :],)
        return pairs(key)

    return sources


def _plain(cfg: Any) -> dict[str, Any]:
    """A ConfigDict or dict (a checkpoint's saved model config) as a plain dict."""
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)


def model_config_from_dict(cfg: Any) -> VLPConfig:
    """The VLPConfig of a `model` config group (or a config holding one, or a checkpoint's saved dict).

    Each tower's config comes from its registered builder (models/towers.py), which names the key
    when a value cannot be built; keys a saved config predates take today's defaults.
    """
    given = _plain(cfg)
    if 'embed_dim' not in given and 'model' in given:
        given = _plain(given['model'])
    model = default_config().model.to_dict()  # the schema's defaults for keys a saved config predates
    for name, value in given.items():
        model[name] = {**model.get(name, {}), **value} if isinstance(value, dict) else value
    vision_group, text_group = model['vision'], model['text']
    vision = towers.tower(vision_group['tower'], towers.VISION).config_from(vision_group, model)
    text = towers.tower(text_group['tower'], towers.TEXT).config_from(text_group, model)
    decoder = decoder_config_from(model.get('decoder', {}), text.depth, text.num_fusion_layers, bool(model['scan']))
    return VLPConfig(
        vision=vision,
        text=text,
        embed_dim=int(model['embed_dim']),
        dtype=str(model['dtype']),
        kind=str(model['kind']),
        proj_bias=bool(model['proj_bias']),
        vision_tower=str(vision_group['tower']),
        text_tower=str(text_group['tower']),
        decoder=decoder,
        head=str(model['head']),
        head_classes=int(model['head_classes']),
        **{k: float(model[k]) for k in ('temperature_init', 'temperature_min', 'temperature_max', 'sigmoid_bias_init')},
    )
