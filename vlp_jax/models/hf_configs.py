"""Hugging Face config.json <-> vlp_jax model options, for what the weights alone cannot say.

Head counts, the activation and LayerNorm's epsilon leave no trace in tensor shapes, so an import
checks them against the config.json beside the safetensors file (when there is one), and an export
writes one. transformers saves only the fields that differ from its defaults, so absent fields take
the defaults below (BertConfig, ViTConfig, CLIPTextConfig, CLIPVisionConfig).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from vlp_jax.data.tokenizer import BERT_SEP_ID
from vlp_jax.models.decoder_config import DECODER_BOS_ID
from vlp_jax.models.vlp import VLPConfig

HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}
EXPORT_ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'quick_gelu': 'quick_gelu'}
HF_DEFAULTS = {
    ('bert', 'text'): {'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'num_attention_heads': 12},
    ('vit', 'vision'): {'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'num_attention_heads': 12},
    ('clip', 'text'): {'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5, 'num_attention_heads': 8},
    ('clip', 'vision'): {'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5, 'num_attention_heads': 12},
}
HF_DEFAULTS[('dual', 'text')], HF_DEFAULTS[('dual', 'vision')] = (
    HF_DEFAULTS[('bert', 'text')],
    HF_DEFAULTS[('vit', 'vision')],
)
EPS_RTOL = 1e-6
CLIP_EOS_ARGMAX = 2  # eos_token_id 2 makes HF's CLIP pool at the highest token id (its original checkpoints)
CLIP_LOGIT_SCALE_INIT = 2.6592  # CLIPConfig's default: log(1 / 0.07)
POOLING_CONFIG = os.path.join('1_Pooling', 'config.json')  # sentence-transformers' pooling, beside the weights


def tower_fields(model: VLPConfig, layout: str, tower: str) -> dict[str, tuple[Any, str]]:
    """HF config field -> (the value this model implies, the vlp_jax config key that sets it)."""
    cfg = model.text if tower == 'text' else model.vision
    key = f'model.{tower}'
    fields = {
        'hidden_size': (cfg.width, f'{key}.width'),
        'num_hidden_layers': (cfg.depth, f'{key}.depth'),
        'num_attention_heads': (cfg.num_heads, f'{key}.num_heads'),
        'intermediate_size': (cfg.mlp_dim, f'{key}.mlp_dim'),
        'hidden_act': (EXPORT_ACTIVATIONS[cfg.activation], f'{key}.activation'),
        'layer_norm_eps': (cfg.ln_eps, f'{key}.ln_eps'),
    }
    if tower == 'text':
        fields['max_position_embeddings'] = (model.text.position_rows, 'model.text.max_positions')
        fields['vocab_size'] = (model.text.vocab_size, 'model.text.vocab_size')
        if layout in ('bert', 'dual'):
            fields['type_vocab_size'] = (model.text.type_vocab_size, 'model.text.type_vocab_size')
    else:
        fields['image_size'] = (model.vision.image_size, 'model.image_size')
        fields['patch_size'] = (model.vision.patch_size, 'model.vision.patch_size')
    return fields


def _value_for(field: str, hf_value: Any) -> Any:
    """An HF field's value in vlp_jax's terms (activations are named differently)."""
    return HF_ACTIVATIONS.get(hf_value, hf_value) if field == 'hidden_act' else hf_value


def config_problem(hf: dict, model: VLPConfig, layout: str, tower: str, source: str) -> str | None:
    """The first option of `model` that disagrees with the HF config `hf`, as 'FIELD ... set KEY=VALUE'."""
    section = hf.get(f'{tower}_config', {}) if layout in ('clip', 'dual') else hf
    section = {**HF_DEFAULTS[(layout, tower)], **section}
    pooler_act = section.get('pooler_act', 'tanh') if (layout, tower) == ('dual', 'vision') else 'tanh'
    if pooler_act == 'linear' and model.vision.pooler:  # the identity pooler of an export without a pooler
        return f"{source} has vision_config.pooler_act='linear' (no pooler); set model.vision.pooler=False"
    if pooler_act not in ('tanh', 'linear'):
        return f'{source} has vision_config.pooler_act={pooler_act!r}, which vlp_jax cannot express'
    if (
        layout in ('bert', 'dual')
        and tower == 'text'
        and section.get('position_embedding_type', 'absolute') != 'absolute'
    ):
        return (
            f'{source} has position_embedding_type={section["position_embedding_type"]!r}, which vlp_jax cannot express'
        )
    if section['hidden_act'] not in HF_ACTIVATIONS:
        return (
            f'{source} has hidden_act={section["hidden_act"]!r}, which vlp_jax cannot express (it has {HF_ACTIVATIONS})'
        )
    fusion = model.text.num_fusion_layers if (layout, tower) == ('bert', 'text') else 0
    if fusion and 'fusion_layer' in section and section.get('num_hidden_layers') == model.text.depth + fusion:
        if section['fusion_layer'] != model.text.depth:  # ALBEF xbert's first layer with cross-attention
            first = section['fusion_layer']
            return (
                f'{source} has fusion_layer={first}; set model.text.depth={first} and '
                f'model.text.fusion_layers={section["num_hidden_layers"] - first}'
            )
    for field, (ours, key) in tower_fields(model, layout, tower).items():
        if field not in section or (field == 'num_hidden_layers' and fusion):  # fusion: the tensors' count decides
            continue
        if field == 'image_size':  # the position table's grid decides; another one is interpolated (importers.py)
            continue
        theirs = _value_for(field, section[field])
        ours = _value_for(field, ours)
        same = math.isclose(theirs, ours, rel_tol=EPS_RTOL) if field == 'layer_norm_eps' else theirs == ours
        if not same:
            return f'{source} has {field}={section[field]!r}; set {key}={theirs!r} (now {ours!r})'
    return None


def pooling_problem(directory: str, pool: str) -> str | None:
    """sentence-transformers' 1_Pooling/config.json beside the weights says how sentences are pooled."""
    path = os.path.join(directory, POOLING_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        pooling = json.load(handle)
    modes = {'mean': pooling.get('pooling_mode_mean_tokens'), 'cls': pooling.get('pooling_mode_cls_token')}
    wanted = [mode for mode, on in modes.items() if on]
    if len(wanted) == 1 and wanted[0] != pool:
        return f'{path} pools by {wanted[0]}; set model.text.pool={wanted[0]!r} (now {pool!r})'
    return None


def hf_config(model: VLPConfig, layout: str) -> dict:
    """The config.json of an exported model (transformers' BertModel / ViTModel / CLIPModel /
    VisionTextDualEncoderModel / BertLMHeadModel)."""

    def section(tower: str) -> dict:
        return {field: value for field, (value, _) in tower_fields(model, layout, tower).items()}

    if layout == 'dual':  # the towers' sections as BertModel and ViTModel read them, nested
        text, vision = hf_config(model, 'bert'), hf_config(model, 'vit')
        for tower in (text, vision):
            tower.pop('architectures')
        for key in ('fusion_layer', 'encoder_width'):  # the contrastive part: the text layers alone
            text.pop(key, None)
        text['num_hidden_layers'] = model.text.depth
        return {
            'architectures': ['VisionTextDualEncoderModel'],
            'model_type': 'vision-text-dual-encoder',
            'projection_dim': model.embed_dim,
            'logit_scale_init_value': CLIP_LOGIT_SCALE_INIT,  # an init only: the file's logit_scale is the model's
            'text_config': text,
            # a tower without HF's pooler gets an identity one (exporters.py): pooler_output = the CLS token
            'vision_config': {**vision, 'pooler_act': 'tanh' if model.vision.pooler else 'linear'},
        }
    if layout == 'bert':
        config = {
            'architectures': ['BertModel'],
            'model_type': 'bert',
            'position_embedding_type': 'absolute',
            'pad_token_id': 0,
            **section('text'),
            'type_vocab_size': max(model.text.type_vocab_size, 1),
        }
        if model.text.num_fusion_layers:  # ALBEF xbert's keys: layers from fusion_layer on cross-attend
            config['num_hidden_layers'] = model.text.depth + model.text.num_fusion_layers
            config['fusion_layer'] = model.text.depth
            config['encoder_width'] = model.vision.width
        return config
    if layout == 'bert_lm':  # BertLMHeadModel: the decoder's layers, each with cross-attention
        config = hf_config(model, 'bert')
        for key in ('fusion_layer', 'encoder_width'):
            config.pop(key, None)
        ends = {'eos_token_id': BERT_SEP_ID, 'sep_token_id': BERT_SEP_ID} if model.text.vocab_size > BERT_SEP_ID else {}
        return {
            **config,
            'architectures': ['BertLMHeadModel'],
            'num_hidden_layers': model.decoder.depth,
            'is_decoder': True,
            'add_cross_attention': True,
            'bos_token_id': DECODER_BOS_ID,
            **ends,  # [SEP] ends a decoded sequence (a small synthetic vocabulary has no such id)
        }
    if layout == 'vit':
        return {
            'architectures': ['ViTModel'],
            'model_type': 'vit',
            'num_channels': 3,
            'qkv_bias': True,
            **section('vision'),
        }
    return {
        'architectures': ['CLIPModel'],
        'model_type': 'clip',
        'projection_dim': model.embed_dim,
        'logit_scale_init_value': CLIP_LOGIT_SCALE_INIT,
        'text_config': {'model_type': 'clip_text_model', 'eos_token_id': CLIP_EOS_ARGMAX, **section('text')},
        'vision_config': {'model_type': 'clip_vision_model', 'num_channels': 3, **section('vision')},
    }
