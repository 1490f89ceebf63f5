"""Transformer building blocks shared by the image, text and fusion towers.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) and
the main activations are constrained with ``nn.with_logical_constraint``, so the
parallelism layout (data parallel / FSDP / tensor parallel) is a config choice.
Params are always float32; ``dtype`` is the compute dtype. LayerNorm and softmax
run in float32 for numerical stability.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Masked attention logits get this value: finite (no NaN for fully masked rows,
# which then attend uniformly) yet small enough that exp() underflows to 0.
MASK_VALUE = -1e9
# Std of the normal initialiser for embeddings, cls token and heads (BERT/ViT).
EMBED_INIT_STD = 0.02
# Default LayerNorm epsilon (ViT uses 1e-6; BERT uses 1e-12, passed explicitly).
DEFAULT_LN_EPS = 1e-6
PARAM_DTYPE = jnp.float32

# Logical activation axis layouts.
ACT_BLE = ('batch', 'length', 'embed')
ACT_BLHK = ('batch', 'length', 'heads', 'kv')
ACT_BLM = ('batch', 'length', 'mlp')
LAYERS_AXIS = 'layers'  # logical name of the stacked-layer axis that `scan=True` adds to every block param

# Activation rematerialisation per tower (`model.remat`): what the backward pass keeps from the forward
# pass of each block; the rest is recomputed. 'none' keeps everything (fastest, most memory); 'full'
# keeps only each block's input; 'dots' keeps the matmul outputs without batch dims (weights-side
# products) and recomputes the cheap elementwise work.
# The MLP's nonlinearity (`activation` of a tower): 'gelu' is the exact erf form (BERT, ViT), 'gelu_tanh'
# the tanh approximation (HF's gelu_new / gelu_pytorch_tanh), 'quick_gelu' x * sigmoid(1.702 x) (OpenAI CLIP).
QUICK_GELU_SCALE = 1.702
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(QUICK_GELU_SCALE * x),
}

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def partitioned(init_fn: Callable, names: tuple) -> Callable:
    """Shorthand: attach logical axis names to an initialiser."""
    return nn.with_logical_partitioning(init_fn, names)


def layer_norm(name: str | None, eps: float = DEFAULT_LN_EPS) -> nn.LayerNorm:
    """A float32 LayerNorm over 'embed' with logically named scale/bias (name None inside `setup`)."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32,
        param_dtype=PARAM_DTYPE,
        scale_init=partitioned(nn.initializers.ones_init(), ('embed',)),
        bias_init=partitioned(nn.initializers.zeros_init(), ('embed',)),
        name=name,
    )


def pooler_dense(width: int, dtype: Dtype, name: str | None = None) -> nn.Dense:
    """The dense layer of BERT's and ViT's pooler (tanh(dense(pooled)), applied by the towers)."""
    return nn.Dense(
        width,
        dtype=dtype,
        param_dtype=PARAM_DTYPE,
        kernel_init=partitioned(nn.initializers.xavier_uniform(), ('embed', 'mlp')),
        bias_init=partitioned(nn.initializers.zeros_init(), ('mlp',)),
        name=name,
    )


def key_mask_to_bias_mask(mask: Array | None) -> Array | None:
    """[B, Lk] valid-key mask (bool/int) -> boolean [B, 1, 1, Lk] for [B,H,Lq,Lk]."""
    if mask is None:
        return None
    return jnp.asarray(mask).astype(bool)[:, None, None, :]


class HeadDense(nn.Module):
    """Dense map contracting the trailing input dims into ``features`` dims.

    Used instead of nn.DenseGeneral, whose init reshapes a 2-D kernel through the
    logical-axis box and so breaks under a mesh + rules for >2-D kernels.
    ``kernel_axes`` names the contracted input dims followed by the output dims.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Contracts the last ``len(kernel_axes) - len(features)`` dims of ``x``."""
        n_out = len(self.features)
        n_in = len(self.kernel_axes) - n_out
        shape = tuple(x.shape[-n_in:]) + tuple(self.features)
        init = nn.initializers.xavier_uniform(in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
        kernel = self.param('kernel', partitioned(init, self.kernel_axes), shape, PARAM_DTYPE)
        bias = self.param(
            'bias',
            partitioned(nn.initializers.zeros_init(), self.kernel_axes[n_in:]),
            tuple(self.features),
            PARAM_DTYPE,
        )
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=n_in)
        return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention; cross-attention when ``context`` is given.

    Attributes:
        num_heads: number of heads; the head dim is ``width // num_heads``.
        dtype: compute dtype of projections (logits/softmax are float32).
        dropout_rate: dropout on the attention probabilities.
        causal: each query attends only to keys at or before its position (CLIP's text tower).
        kv: key and value projections owned elsewhere (shared by NLVR2's paired fusion blocks,
            models/bi_fusion.py); None: its own 'key' and 'value'.
        expose: the attention probabilities are sown ('intermediates', 'probs') and perturbable
            ('perturbations', 'probs'), so Grad-CAM reads them and their gradient (evaluators/grounding.py).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    causal: bool = False
    kv: tuple[nn.Module, nn.Module] | None = None
    expose: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """x: [B, Lq, D]; context: [B, Lk, Dc] (default x); mask: [B, Lk] valid keys."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f'width {width} not divisible by num_heads {self.num_heads}')
        head_dim = width // self.num_heads
        context = x if context is None else context

        def proj(name: str) -> HeadDense:
            return HeadDense((self.num_heads, head_dim), ('embed', 'heads', 'kv'), self.dtype, name=name)

        q = nn.with_logical_constraint(proj('query')(x), ACT_BLHK)
        key_proj, value_proj = self.kv if self.kv is not None else (proj('key'), proj('value'))
        k = nn.with_logical_constraint(key_proj(context), ACT_BLHK)
        v = nn.with_logical_constraint(value_proj(context), ACT_BLHK)

        q = q / jnp.sqrt(head_dim).astype(q.dtype)
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
        bool_mask = key_mask_to_bias_mask(mask)
        if self.causal:
            lq, lk = logits.shape[-2:]
            tri = jnp.tril(jnp.ones((lq, lk), bool))[None, None]
            bool_mask = tri if bool_mask is None else bool_mask & tri
        if bool_mask is not None:
            logits = jnp.where(bool_mask, logits, jnp.float32(MASK_VALUE))
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if self.expose:
            probs = self.perturb('probs', probs)
            self.sow('intermediates', 'probs', probs)
        if self.dropout_rate > 0.0:
            probs = nn.Dropout(rate=self.dropout_rate)(probs, deterministic=deterministic)
        out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(self.dtype), v.astype(self.dtype))
        out = nn.with_logical_constraint(out, ACT_BLHK)
        out = HeadDense((width,), ('heads', 'kv', 'embed'), self.dtype, name='out')(out)
        return nn.with_logical_constraint(out, ACT_BLE)


class MlpBlock(nn.Module):
    """Dense -> activation (ACTIVATIONS; exact GELU by default) -> Dense feed-forward block."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    activation: str = 'gelu'

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """x: [B, L, D] -> [B, L, D]."""
        width = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=PARAM_DTYPE,
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ('embed', 'mlp')),
            bias_init=partitioned(nn.initializers.zeros_init(), ('mlp',)),
            name='fc1',
        )(x)
        h = ACTIVATIONS[self.activation](h)
        h = nn.with_logical_constraint(h, ACT_BLM)
        if self.dropout_rate > 0.0:
            h = nn.Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
        out = nn.Dense(
            width,
            dtype=self.dtype,
            param_dtype=PARAM_DTYPE,
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ('mlp', 'embed')),
            bias_init=partitioned(nn.initializers.zeros_init(), ('embed',)),
            name='fc2',
        )(h)
        return nn.with_logical_constraint(out, ACT_BLE)


class TransformerBlock(nn.Module):
    """Self-attention [+ cross-attention] + MLP, each as a residual sub-block.

    ``pre_norm=True`` (default, ViT/CLIP): x + f(LN(x)).
    ``pre_norm=False`` (BERT/MiniLM layout, for imported weights): LN(x + f(x)).
    ``causal`` masks the self-attention causally (CLIP's text tower); ``activation`` names the MLP's.
    ``xattn_kv`` and ``expose_cross_attention`` are the cross-attention's ``kv`` and ``expose``.
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    cross_attention: bool = False
    pre_norm: bool = True
    ln_eps: float = DEFAULT_LN_EPS
    causal: bool = False
    activation: str = 'gelu'
    xattn_kv: tuple[nn.Module, nn.Module] | None = None
    expose_cross_attention: bool = False

    def _residual(self, x: Array, fn: Callable[[Array], Array], ln_name: str, deterministic: bool) -> Array:
        """Applies one residual sub-block in the configured norm placement."""
        ln = layer_norm(ln_name, self.ln_eps)
        h = fn(ln(x) if self.pre_norm else x)
        if self.dropout_rate > 0.0:
            h = nn.Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
        y = x + h.astype(x.dtype)
        if not self.pre_norm:
            y = ln(y).astype(x.dtype)
        return nn.with_logical_constraint(y, ACT_BLE)

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        context: Array | None = None,
        context_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """x: [B, L, D]; mask: [B, L] valid tokens; context: [B, Lc, Dc] for cross-attn."""
        attn = MultiHeadAttention(self.num_heads, self.dtype, self.dropout_rate, self.causal, name='attn')
        x = self._residual(x, lambda h: attn(h, mask=mask, deterministic=deterministic), 'ln_attn', deterministic)
        if self.cross_attention:
            if context is None:
                raise ValueError('cross_attention block needs `context`')
            xattn = MultiHeadAttention(
                self.num_heads,
                self.dtype,
                self.dropout_rate,
                kv=self.xattn_kv,
                expose=self.expose_cross_attention,
                name='xattn',
            )
            x = self._residual(
                x,
                lambda h: xattn(h, context=context, mask=context_mask, deterministic=deterministic),
                'ln_xattn',
                deterministic,
            )
        mlp = MlpBlock(self.mlp_dim, self.dtype, self.dropout_rate, self.activation, name='mlp')
        return self._residual(x, lambda h: mlp(h, deterministic=deterministic), 'ln_mlp', deterministic)


class ScannedBlock(nn.Module):
    """One TransformerBlock as an `nn.scan` body: (x, side inputs) -> (x, None)."""

    block: dict[str, Any]
    deterministic: bool = True
    remat: str = 'none'

    @nn.compact
    def __call__(self, x: Array, side: tuple[Array | None, Array | None, Array | None]) -> tuple[Array, None]:
        mask, context, context_mask = side
        block = remat_block(self.remat)(**self.block, name='block')
        return block(x, mask, context, context_mask, self.deterministic), None


def remat_block(policy: str) -> type[TransformerBlock]:
    """TransformerBlock, wrapped in `nn.remat` with the named policy unless it is 'none'."""
    assert policy in REMAT_POLICIES, f'validate() checks model.remat, got {policy!r}'
    if policy == 'none':
        return TransformerBlock
    # static_argnums counts self: (self, x, mask, context, context_mask, deterministic)
    return nn.remat(TransformerBlock, policy=REMAT_POLICIES[policy], static_argnums=(5,))


class Encoder(nn.Module):
    """A stack of ``depth`` TransformerBlocks (final LayerNorm when pre-norm).

    ``scan=True`` runs the blocks as one `nn.scan` over stacked params (leading 'layers' axis):
    one block is compiled instead of ``depth``, so compile time stays flat with depth; the
    params then live under ``layers/block`` instead of ``block_{i}`` (checkpoints of one layout
    do not load into the other). ``remat`` names a REMAT_POLICIES entry applied per block.
    ``expose_block`` >= 0 exposes that block's cross-attention probabilities (MultiHeadAttention.expose).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    cross_attention: bool = False
    pre_norm: bool = True
    ln_eps: float = DEFAULT_LN_EPS
    remat: str = 'none'
    scan: bool = False
    causal: bool = False
    activation: str = 'gelu'
    expose_block: int = -1

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        context: Array | None = None,
        context_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """x: [B, L, D] -> [B, L, D] (float32 after the final LayerNorm)."""
        x = nn.with_logical_constraint(x, ACT_BLE)
        block = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dtype=self.dtype,
            dropout_rate=self.dropout_rate,
            cross_attention=self.cross_attention,
            pre_norm=self.pre_norm,
            ln_eps=self.ln_eps,
            causal=self.causal,
            activation=self.activation,
        )
        if self.scan:
            assert self.expose_block < 0, 'exposing attention needs the per-layer blocks (model.scan=False)'
            stack = nn.scan(
                ScannedBlock,
                variable_axes={'params': 0},
                split_rngs={'params': True, 'dropout': True},
                in_axes=nn.broadcast,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
            )
            x, _ = stack(block=block, deterministic=deterministic, remat=self.remat, name='layers')(
                x, (mask, context, context_mask)
            )
        else:
            for i in range(self.depth):
                exposed = {'expose_cross_attention': True} if i == self.expose_block else {}
                x = remat_block(self.remat)(**block, **exposed, name=f'block_{i}')(
                    x, mask, context, context_mask, deterministic
                )
        if self.pre_norm:
            x = layer_norm('ln_final', self.ln_eps)(x)
        else:
            x = x.astype(jnp.float32)
        return nn.with_logical_constraint(x, ACT_BLE)
