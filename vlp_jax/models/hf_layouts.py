"""Hugging Face tensor layouts (BERT, ViT, CLIP; for export also VisionTextDualEncoderModel) <-> vlp_jax param
paths, as tables of pure numpy maps.

Each layout lists (HF key, vlp_jax param path, transform). Keys are those of the safetensors files on
the Hub (`BertModel`, `ViTModel`, `CLIPModel` state dicts; transformers >= 5 renames some ViT modules on
load, the files keep these names). Paths are relative to the params root and written for unscanned
towers (`encoder/block_{i}`); importers.py stacks them for `model.scan`. Every transform is a transpose
or reshape (or a sign flip), so a tensor survives import and export bit for bit. A fusion text tower's
blocks continue BERT's layer numbering, with the cross-attention under `encoder.layer.{i}.crossattention.*`
(transformers' BertLayer with add_cross_attention, and ALBEF's xbert).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

LAYOUTS = ('bert', 'vit', 'clip')  # what a file can be (import and export)
DUAL = 'dual'  # transformers' VisionTextDualEncoderModel (see dual()): what vlp_jax exports, read back too
BERT_LM = 'bert_lm'  # transformers' BertLMHeadModel (see bert_lm()): a 'separate' decoder, export only
EXPORT_LAYOUTS = (*LAYOUTS, DUAL, BERT_LM)
TOWER_OF = {
    'bert': ('text',),
    'vit': ('vision',),
    'clip': ('text', 'vision'),
    DUAL: ('text', 'vision'),
    BERT_LM: ('decoder',),
}
FUSION_BLOCK = '{tower}/fusion/block_{j}'  # fusion block j of a text tower (unscanned path)
# The cross-attention params of a fusion block (unscanned paths): what a plain BERT file leaves fresh.
CROSS_PARAM = re.compile(r'/fusion/block_\d+/(xattn|ln_xattn)/')


@dataclasses.dataclass(frozen=True)
class Transform:
    """to_vlp(hf array, vlp shape) and to_hf(vlp array) of one kind of tensor."""

    to_vlp: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # the HF shape that fits a vlp shape


def _t(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape))


TRANSFORMS: dict[str, Transform] = {
    'copy': Transform(lambda a, s: a.reshape(s), lambda a: a, lambda s: s),
    # torch Linear weight [out, in] <-> flax kernel [in, out]
    'linear': Transform(lambda a, s: a.T.reshape(s), lambda a: a.T, _t),
    # q/k/v weight [heads * head_dim, in] <-> HeadDense kernel [in, heads, head_dim]; bias likewise
    'heads_in': Transform(
        lambda a, s: a.T.reshape(s), lambda a: a.reshape(a.shape[0], -1).T, lambda s: (s[1] * s[2], s[0])
    ),
    'heads_bias': Transform(lambda a, s: a.reshape(s), lambda a: a.reshape(-1), lambda s: (s[0] * s[1],)),
    # attention output weight [out, heads * head_dim] <-> kernel [heads, head_dim, out]
    'heads_out': Transform(
        lambda a, s: a.T.reshape(s), lambda a: a.reshape(-1, a.shape[-1]).T, lambda s: (s[2], s[0] * s[1])
    ),
    # Conv2d weight [out, in, kh, kw] (NCHW) <-> flax Conv kernel [kh, kw, in, out] (NHWC)
    'conv': Transform(
        lambda a, s: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1), lambda s: (s[3], s[2], s[0], s[1])
    ),
    # HF ViT's cls token [1, 1, w] and position table [1, n, w] <-> [w] and [n, w]
    'lead1': Transform(
        lambda a, s: a.reshape(s), lambda a: a.reshape((1,) * (3 - a.ndim) + a.shape), lambda s: (1,) * (3 - len(s)) + s
    ),
    # CLIP's logit_scale = log(1 / temperature) <-> vlp_jax's log_temperature
    'neg': Transform(lambda a, s: (-a).reshape(s), lambda a: -a, lambda s: s),
    # word embeddings [vocab, w] (and the MLM bias [vocab]) <-> the table padded to a multiple of 128 rows
    # (text.VOCAB_MULTIPLE): imports fill the first rows (importers.py keeps the padding rows), exports drop them
    'vocab': Transform(lambda a, s: a, lambda a: a, lambda s: s),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    hf: str  # key; '{i}' = layer index
    vlp: str  # param path from the root; '{i}' = layer index
    kind: str  # TRANSFORMS key
    # '': both sides must hold it; 'model': a model without the param skips it (a pooler the config leaves
    # out); 'file': a file without the tensor leaves the param fresh (CLIP's projections, logit_scale);
    # 'head': either (BERT's MLM head: a dual model has none, a BertModel file has none); all of it or none
    optional: str = ''


def _linear(hf: str, vlp: str, kind: str = 'linear', bias: str = 'copy', optional: str = '') -> list[Entry]:
    return [Entry(f'{hf}.weight', f'{vlp}/kernel', kind, optional), Entry(f'{hf}.bias', f'{vlp}/bias', bias, optional)]


def _norm(hf: str, vlp: str, scale: str = 'weight', optional: str = '') -> list[Entry]:
    return [
        Entry(f'{hf}.{scale}', f'{vlp}/scale', 'copy', optional),
        Entry(f'{hf}.bias', f'{vlp}/bias', 'copy', optional),
    ]


def _attention(hf: dict[str, str], vlp: str, module: str = 'attn', optional: str = '') -> list[Entry]:
    """q/k/v/out of one block's `module` ('attn' or the cross-attention 'xattn'): hf maps
    'query'|'key'|'value'|'out' to module names."""
    entries = []
    for part in ('query', 'key', 'value'):
        entries += _linear(hf[part], f'{vlp}/{module}/{part}', 'heads_in', 'heads_bias', optional)
    return entries + _linear(hf['out'], f'{vlp}/{module}/out', 'heads_out', optional=optional)


def bert(tower: str = 'text') -> tuple[list[Entry], list[Entry]]:
    """(embeddings and heads, one block) of BertModel (post-LN; MiniLM has the same layout)."""
    block_hf, block = 'encoder.layer.{i}', f'{tower}/encoder/block_{{i}}'
    top = [
        Entry('embeddings.word_embeddings.weight', f'{tower}/token_embed/embedding', 'vocab'),
        Entry('embeddings.position_embeddings.weight', f'{tower}/pos_embedding', 'copy'),
        Entry('embeddings.token_type_embeddings.weight', f'{tower}/type_embedding', 'copy'),
        *_norm('embeddings.LayerNorm', f'{tower}/ln_embed'),
        *_linear('pooler.dense', f'{tower}/pooler', optional='model'),
        *mlm_head(),
    ]
    return top, _bert_layer(block_hf, block)


# BertForMaskedLM's head (BertLMPredictionHead: dense -> GELU -> LayerNorm -> decoder + bias) -> a fusion model's
# MLM head (vlp.py: mlm_dense, mlm_norm, mlm_bias), as ALBEF loads it from bert-base-uncased. Task models keep
# its keys outside their 'bert.' prefix. The decoder is tied to the word embeddings (and its bias to
# cls.predictions.bias) in both, so vlp_jax has no param for it: a file's copies are checked, not imported.
MLM_HEAD = 'cls.predictions.'
UNPREFIXED = ('cls.',)  # keys a task model's file holds outside its 'bert.' prefix
MLM_TIED = {  # a file's tied copy -> the key whose tensor the model uses instead (before any 'bert.' prefix)
    f'{MLM_HEAD}decoder.weight': 'embeddings.word_embeddings.weight',
    f'{MLM_HEAD}decoder.bias': f'{MLM_HEAD}bias',
}


def mlm_head() -> list[Entry]:
    """BERT's MLM head: transform.dense, transform.LayerNorm and the output bias (padded like the word table)."""
    return [
        *_linear(f'{MLM_HEAD}transform.dense', 'mlm_dense', optional='head'),
        *_norm(f'{MLM_HEAD}transform.LayerNorm', 'mlm_norm', optional='head'),
        Entry(f'{MLM_HEAD}bias', 'mlm_bias', 'vocab', 'head'),
    ]


def _bert_layer(block_hf: str, block: str) -> list[Entry]:
    """One BertLayer without cross-attention: self-attention, its LayerNorm, MLP, its LayerNorm."""
    names = {p: f'{block_hf}.attention.self.{p}' for p in ('query', 'key', 'value')}
    return [
        *_attention({**names, 'out': f'{block_hf}.attention.output.dense'}, block),
        *_norm(f'{block_hf}.attention.output.LayerNorm', f'{block}/ln_attn'),
        *_linear(f'{block_hf}.intermediate.dense', f'{block}/mlp/fc1'),
        *_linear(f'{block_hf}.output.dense', f'{block}/mlp/fc2'),
        *_norm(f'{block_hf}.output.LayerNorm', f'{block}/ln_mlp'),
    ]


def _bert_cross(block_hf: str, block: str) -> list[Entry]:
    """The cross-attention of a BertLayer built with add_cross_attention (and of ALBEF's xbert fusion layers),
    under transformers' names; optional='file': a plain BERT file leaves it fresh."""
    names = {p: f'{block_hf}.crossattention.self.{p}' for p in ('query', 'key', 'value')}
    out = f'{block_hf}.crossattention.output'
    return [
        *_attention({**names, 'out': f'{out}.dense'}, block, 'xattn', 'file'),
        *_norm(f'{out}.LayerNorm', f'{block}/ln_xattn', optional='file'),
    ]


def vit(tower: str = 'vision') -> tuple[list[Entry], list[Entry]]:
    """(embeddings, final norm and pooler, one block) of ViTModel (pre-LN)."""
    block_hf, block = 'encoder.layer.{i}', f'{tower}/encoder/block_{{i}}'
    top = [
        Entry('embeddings.cls_token', f'{tower}/cls', 'lead1'),
        Entry('embeddings.position_embeddings', f'{tower}/pos_embedding', 'lead1'),
        *_linear('embeddings.patch_embeddings.projection', f'{tower}/patch_embed', 'conv'),
        *_norm('layernorm', f'{tower}/encoder/ln_final'),
        *_linear('pooler.dense', f'{tower}/pooler', optional='model'),
    ]
    names = {p: f'{block_hf}.attention.attention.{p}' for p in ('query', 'key', 'value')}
    layer = [
        *_norm(f'{block_hf}.layernorm_before', f'{block}/ln_attn'),
        *_attention({**names, 'out': f'{block_hf}.attention.output.dense'}, block),
        *_norm(f'{block_hf}.layernorm_after', f'{block}/ln_mlp'),
        *_linear(f'{block_hf}.intermediate.dense', f'{block}/mlp/fc1'),
        *_linear(f'{block_hf}.output.dense', f'{block}/mlp/fc2'),
    ]
    return top, layer


def _clip_layer(prefix: str, block: str) -> list[Entry]:
    hf = f'{prefix}.encoder.layers.{{i}}'
    names = {'query': 'q_proj', 'key': 'k_proj', 'value': 'v_proj', 'out': 'out_proj'}
    return [
        *_norm(f'{hf}.layer_norm1', f'{block}/ln_attn'),
        *_attention({part: f'{hf}.self_attn.{name}' for part, name in names.items()}, block),
        *_norm(f'{hf}.layer_norm2', f'{block}/ln_mlp'),
        *_linear(f'{hf}.mlp.fc1', f'{block}/mlp/fc1'),
        *_linear(f'{hf}.mlp.fc2', f'{block}/mlp/fc2'),
    ]


def clip(tower: str) -> tuple[list[Entry], list[Entry]]:
    """(embeddings, norms, projection and logit_scale, one block) of one tower of CLIPModel."""
    block = f'{tower}/encoder/block_{{i}}'
    scale = Entry('logit_scale', 'log_temperature', 'neg', optional='file')
    if tower == 'text':
        top = [
            Entry('text_model.embeddings.token_embedding.weight', 'text/token_embed/embedding', 'vocab'),
            Entry('text_model.embeddings.position_embedding.weight', 'text/pos_embedding', 'copy'),
            *_norm('text_model.final_layer_norm', 'text/encoder/ln_final'),
            Entry('text_projection.weight', 'text_proj/kernel', 'linear', optional='file'),
            scale,
        ]
        return top, _clip_layer('text_model', block)
    top = [
        Entry('vision_model.embeddings.class_embedding', 'vision/cls', 'copy'),
        Entry('vision_model.embeddings.patch_embedding.weight', 'vision/patch_embed/kernel', 'conv'),
        Entry('vision_model.embeddings.position_embedding.weight', 'vision/pos_embedding', 'copy'),
        *_norm('vision_model.pre_layrnorm', 'vision/ln_pre'),  # sic: HF's name
        *_norm('vision_model.post_layernorm', 'vision/encoder/ln_final'),
        Entry('visual_projection.weight', 'image_proj/kernel', 'linear', optional='file'),
        scale,
    ]
    return top, _clip_layer('vision_model', block)


# transformers' VisionTextDualEncoderModel: a ViTModel under 'vision_model.' and a BertModel under 'text_model.'
# (their files' keys, as save_pretrained writes them), each pooled by its pooler (the model reads pooler_output),
# then bias-free projections and logit_scale, as CLIPModel's. A fusion model exports its contrastive part: the text
# layers, not the fusion layers or heads.
DUAL_TOWERS = {
    'text': ('bert', 'text_model.', 'text_projection.weight', 'text_proj/kernel'),
    'vision': ('vit', 'vision_model.', 'visual_projection.weight', 'image_proj/kernel'),
}


def dual(tower: str) -> tuple[list[Entry], list[Entry]]:
    """(embeddings, pooler, projection and logit_scale, one block) of one tower of VisionTextDualEncoderModel."""
    layout, prefix, projection, kernel = DUAL_TOWERS[tower]
    top, layer = {'bert': bert, 'vit': vit}[layout](tower)

    def moved(entry: Entry) -> Entry:
        return Entry(prefix + entry.hf, entry.vlp, entry.kind, entry.optional)

    top = [moved(entry) for entry in top if entry.optional != 'head']  # BertModel has no MLM head
    top += [Entry(projection, kernel, 'linear'), Entry('logit_scale', 'log_temperature', 'neg')]
    return top, [moved(entry) for entry in layer]


def bert_lm(tower: str = 'decoder') -> tuple[list[Entry], list[Entry]]:
    """(embeddings and MLM head, one block) of BertLMHeadModel built with is_decoder and add_cross_attention: a
    BertModel under 'bert.' without its pooler, every layer with cross-attention, and BertForMaskedLM's head.
    The embeddings and the head are the text tower's and the fusion model's, which the decoder reads
    (models/decoder.py); the blocks are the decoder's own ('separate' layout)."""
    top, _ = bert('text')
    top = [Entry('bert.' + e.hf, e.vlp, e.kind) for e in top if not e.hf.startswith(('pooler.', MLM_HEAD))]
    top += [Entry(e.hf, e.vlp, e.kind) for e in mlm_head()]  # the LM head: required here
    block_hf, block = 'bert.encoder.layer.{i}', f'{tower}/block_{{i}}'
    cross = [Entry(e.hf, e.vlp, e.kind) for e in _bert_cross(block_hf, block)]  # required here
    return top, _bert_layer(block_hf, block) + cross


def entries(layout: str, tower: str, depth: int, fusion: int = 0) -> list[Entry]:
    """Every entry of `tower` in `layout`, the block entries expanded over `depth` layers.

    `fusion` > 0 (BERT only) continues the file's layers into the fusion blocks, as ALBEF initialises its
    fusion layers from BERT's upper layers: file layer depth + j is fusion block j (self-attention, MLP, their
    LayerNorms and, when the file has it, the cross-attention)."""
    top, layer = {'bert': bert, 'vit': vit, 'clip': clip, DUAL: dual, BERT_LM: bert_lm}[layout](tower)
    blocks = [Entry(e.hf.format(i=i), e.vlp.format(i=i), e.kind, e.optional) for i in range(depth) for e in layer]
    if fusion:
        assert layout == 'bert', f'fusion layers have no {layout} layout'
        for j in range(fusion):
            block_hf, block = f'encoder.layer.{depth + j}', FUSION_BLOCK.format(tower=tower, j=j)
            blocks += [*_bert_layer(block_hf, block), *_bert_cross(block_hf, block)]
    return top + blocks


# Older BERT checkpoints name their LayerNorms' params as TF did, gamma and beta: bert-base-uncased's
# model.safetensors on the Hub among them (huggingface/candle#1887). transformers renames them on load,
# and so does the importer; exports write today's names.
LEGACY_SUFFIXES = {'.LayerNorm.weight': '.LayerNorm.gamma', '.LayerNorm.bias': '.LayerNorm.beta'}


def legacy_names(layout: str, keys: set[str]) -> dict[str, str]:
    """{today's key: the file's key} for the keys a file holds under an older name (BERT's gamma/beta)."""
    if layout != 'bert':
        return {}
    out = {}
    for key in keys:
        for name, old in LEGACY_SUFFIXES.items():
            if key.endswith(old) and key[: -len(old)] + name not in keys:
                out[key[: -len(old)] + name] = key
    return out


# Keys that identify a layout (after a prefix such as 'bert.' or 'vit.' that task models add), and the
# prefixes accepted; CLIP's keys start with 'text_model.' / 'vision_model.'.
ANCHORS = {'bert': 'embeddings.word_embeddings.weight', 'vit': 'embeddings.patch_embeddings.projection.weight'}
PREFIXES = {'bert': ('', 'bert.'), 'vit': ('', 'vit.')}


def detect(keys: list[str]) -> tuple[str, str] | None:
    """(layout, key prefix) from a file's keys, or None when no layout matches."""
    names = set(keys)
    if any(f'{DUAL_TOWERS[t][1]}{ANCHORS[DUAL_TOWERS[t][0]]}' in names for t in DUAL_TOWERS):  # BERT/ViT nested
        return DUAL, ''
    if any(key.startswith(('text_model.', 'vision_model.')) for key in names):
        return 'clip', ''
    for layout in ('bert', 'vit'):
        for prefix in PREFIXES[layout]:
            if prefix + ANCHORS[layout] in names:
                return layout, prefix
    return None


# Model options that decide which params a tower has: param path fragment -> (config key, value that
# creates the param, value that removes it). '<rows>' stands for the file's row count.
PARAM_OPTIONS = (
    ('/type_embedding', 'model.text.type_vocab_size', '<rows>', 0),
    ('text/ln_embed/', 'model.text.embed_norm', True, False),
    ('text/encoder/ln_final/', 'model.text.pre_norm', True, False),
    ('/pooler/', 'model.{tower}.pooler', True, False),
    ('vision/ln_pre/', 'model.vision.pre_layernorm', True, False),
    ('vision/patch_embed/bias', 'model.vision.patch_bias', True, False),
    ('_proj/bias', 'model.proj_bias', True, False),
)

# Options a layout needs beyond its params (what the weights compute, not which weights exist).
REQUIRED = {
    ('bert', 'text'): {'pre_norm': False, 'causal': False},
    ('clip', 'text'): {'pre_norm': True, 'causal': True, 'pool': 'argmax'},
    ('clip', 'vision'): {'pool': 'cls'},
    ('vit', 'vision'): {},
    # VisionTextDualEncoderModel embeds BertModel's and ViTModel's pooler_output; BertPooler is tanh(dense(CLS)),
    # ViT's pooler becomes the identity (pooler_act 'linear') for a tower without one (exporters.py)
    (DUAL, 'text'): {'pre_norm': False, 'causal': False, 'pool': 'cls', 'pooler': True},
    (DUAL, 'vision'): {'pool': 'cls'},
    # the decoder's layers follow the text tower's options (models/vlp.py); BERT's are post-LN
    (BERT_LM, 'decoder'): {'pre_norm': False},
}


def option_hint(path: str, present: bool, rows: int | None = None) -> str:
    """'set KEY=VALUE' that makes the model hold (present) or drop the param at `path`."""
    tower = path.split('/')[0]
    for fragment, key, with_it, without in PARAM_OPTIONS:
        if fragment in path:
            value = (rows if with_it == '<rows>' else with_it) if present else without
            return f'set {key.format(tower=tower)}={value!r}'
    return 'check the model.{tower}.* sizes against the file'.format(tower=tower)
