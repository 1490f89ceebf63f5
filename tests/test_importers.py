"""Hugging Face layouts in and out (models/importers.py, exporters.py) on generated safetensors files.

Each layout's file is written with random tensors under the real key names (tests/hf_numpy.py), with
a config.json beside it as transformers writes one; the imported tower must reproduce the plain-numpy
forward of the same file, and import -> export must give the file's tensors back bit for bit.
"""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIG
from hf_numpy import (
    bert_forward,
    bert_tensors,
    clip_logits,
    clip_tensors,
    clip_text_forward,
    clip_vision_forward,
    mean_pool,
    vit_forward,
    vit_tensors,
)
from safetensors.numpy import save_file

from vlp_jax.config_files import load_config_file
from vlp_jax.models import importers
from vlp_jax.models.exporters import export_tensors
from vlp_jax.models.importers import ImportWeightsError, import_into
from vlp_jax.models.vlp import VLPModel, model_config_from_dict

WIDTH, DEPTH, HEADS, MLP, VOCAB, POSITIONS, LENGTH = 32, 2, 4, 64, 100, 16, 8
IMAGE, PATCH, EMBED = 16, 8, 16
TOL = 2e-5
BERT = dict(pre_norm=False, type_vocab_size=2, max_positions=POSITIONS, pool='cls', pooler=True)
CLIP_TEXT = dict(pre_norm=True, embed_norm=False, causal=True, pool='argmax', activation='quick_gelu', ln_eps=1e-5)
CLIP_VISION = dict(pre_layernorm=True, patch_bias=False, activation='quick_gelu', ln_eps=1e-5)


def tiny_config(text=None, vision=None, **model):
    """configs/shapes_tiny.py at test size, with model.text / model.vision / model.* overrides."""
    config = load_config_file(TINY_CONFIG)
    config.model.update(dict(image_size=IMAGE, max_text_len=LENGTH, embed_dim=EMBED, **model))
    size = dict(variant='custom', width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP)
    config.model.text.update({**size, 'vocab_size': VOCAB, 'max_positions': POSITIONS, **(text or {})})
    config.model.vision.update(dict(size, patch_size=PATCH, **(vision or {})))
    return config


def init_params(config, seed=0):
    """The model and random params of its shapes (built under eval_shape: nothing to compile)."""
    model = VLPModel(model_config_from_dict(config.model))
    size, length = config.model.image_size, config.model.max_text_len
    inputs = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.int32))
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs)['params'])
    rng = np.random.default_rng(seed)
    return model, jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)


def write(directory, tensors, hf_config=None):
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / 'model.safetensors'), metadata={'format': 'pt'})
    if hf_config is not None:
        (directory / 'config.json').write_text(json.dumps(hf_config))
    return str(directory / 'model.safetensors')


def text_inputs(rng, lengths=(LENGTH, 5, 2)):
    ids = rng.integers(1, VOCAB - 1, (len(lengths), LENGTH)).astype(np.int32)
    mask = (np.arange(LENGTH)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[np.arange(len(lengths)), np.asarray(lengths) - 1] = VOCAB - 1  # CLIP's end of text: the highest id
    return np.where(mask > 0, ids, 0), mask


def run_text(model, params, ids, mask):
    return jax.jit(lambda p, i, m: model.apply({'params': p}, i, m, method=lambda mod, a, b: mod.text(a, b)))(
        params, ids, mask
    )


def run_vision(model, params, images):
    return jax.jit(lambda p, x: model.apply({'params': p}, x, method=lambda mod, a: mod.vision(a)))(params, images)


def assert_round_trip(tensors, params, model_config, layout, skip=()):
    """import -> export: every tensor of the file comes back with the same bytes."""
    exported = export_tensors(importers.flat(params), model_config, layout)
    expected = {k: v for k, v in tensors.items() if k not in skip}
    assert set(exported) == set(expected), set(exported) ^ set(expected)
    for key, value in expected.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        assert exported[key].tobytes() == value.tobytes(), key


def assert_same_params(got, want, where):
    flat_got, flat_want = importers.flat(got), importers.flat(want)
    for path, value in flat_want.items():
        if path.startswith(where):
            np.testing.assert_array_equal(np.asarray(flat_got[path]), value, err_msg=path)


@pytest.mark.parametrize(
    'hidden_act, pool, prefix',
    [('gelu', 'cls', 'bert.'), ('gelu_new', 'mean', '')],
    ids=['exact-gelu-cls-pooler-prefixed', 'tanh-gelu-mean'],
)
def test_bert_layout_matches_numpy_and_round_trips(tmp_path, hidden_act, pool, prefix):
    rng = np.random.default_rng(1)
    tensors = bert_tensors(rng, VOCAB, POSITIONS, WIDTH, DEPTH, MLP, prefix=prefix)
    act = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh'}[hidden_act]
    hf = {'model_type': 'bert', 'hidden_act': hidden_act, 'num_attention_heads': HEADS, 'layer_norm_eps': 1e-12}
    path = write(tmp_path / 'bert', tensors, hf)
    config = tiny_config(text=dict(BERT, pool=pool, pooler=pool == 'cls', activation=act))
    model, fresh = init_params(config)
    params, plan = import_into(fresh, path, 'text', model.config)
    ids, mask = text_inputs(rng)
    pooled, tokens = run_text(model, params, ids, mask)
    hidden, pooler_output = bert_forward(tensors, ids, mask, HEADS, act=hidden_act, prefix=prefix)
    real = mask[..., None] > 0
    np.testing.assert_allclose(np.where(real, tokens, 0), np.where(real, hidden, 0), atol=TOL)
    want = pooler_output if pool == 'cls' else mean_pool(hidden, mask)
    np.testing.assert_allclose(pooled, want, atol=TOL)
    # the padding rows of the word table (100 -> 128) keep their init; the vision tower is untouched
    table, fresh_table = params['text']['token_embed']['embedding'], fresh['text']['token_embed']['embedding']
    np.testing.assert_array_equal(table[VOCAB:], fresh_table[VOCAB:])
    assert_same_params(params, fresh, 'vision/')
    unprefixed = {k[len(prefix) :]: v for k, v in tensors.items()}
    skip = () if pool == 'cls' else ('pooler.dense.weight', 'pooler.dense.bias')
    assert set(plan.unused) == {prefix + k for k in skip}
    assert_round_trip(unprefixed, params, model.config, 'bert', skip)


def test_vit_layout_matches_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    tensors = vit_tensors(rng, IMAGE, PATCH, WIDTH, DEPTH, MLP)
    hf = {'model_type': 'vit', 'image_size': IMAGE, 'patch_size': PATCH, 'num_attention_heads': HEADS}
    path = write(tmp_path / 'vit', tensors, hf)
    config = tiny_config(vision=dict(ln_eps=1e-12, pooler=True))
    model, fresh = init_params(config)
    params, _ = import_into(fresh, path, 'vision', model.config)
    images = rng.normal(size=(3, IMAGE, IMAGE, 3)).astype(np.float32)
    pooled, tokens = run_vision(model, params, images)
    hidden, pooler_output = vit_forward(tensors, images.transpose(0, 3, 1, 2), HEADS)
    np.testing.assert_allclose(tokens, hidden, atol=TOL)
    np.testing.assert_allclose(pooled, pooler_output, atol=TOL)
    assert_same_params(params, fresh, 'text/')
    assert_round_trip(tensors, params, model.config, 'vit')


def clip_file(tmp_path, rng):
    tensors = clip_tensors(rng, VOCAB, POSITIONS, WIDTH, IMAGE, PATCH, WIDTH, DEPTH, MLP, EMBED)
    sizes = dict(hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=MLP, num_hidden_layers=DEPTH)
    hf = {
        'model_type': 'clip',
        'projection_dim': EMBED,
        'text_config': dict(sizes, vocab_size=VOCAB, max_position_embeddings=POSITIONS),
        'vision_config': dict(sizes, image_size=IMAGE, patch_size=PATCH),
    }
    return tensors, write(tmp_path / 'clip', tensors, hf)


def test_clip_layout_both_towers_projections_and_scale_match_numpy_and_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    tensors, path = clip_file(tmp_path, rng)
    config = tiny_config(text=CLIP_TEXT, vision=CLIP_VISION, proj_bias=False)
    model, fresh = init_params(config)
    params, text_plan = import_into(fresh, path, 'text', model.config)
    params, vision_plan = import_into(params, path, 'vision', model.config)
    assert not text_plan.fresh and not vision_plan.fresh
    ids, mask = text_inputs(rng)
    images = rng.normal(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
    text_pooled = clip_text_forward(tensors, ids, mask, HEADS)
    image_pooled = clip_vision_forward(tensors, images.transpose(0, 3, 1, 2), HEADS)
    np.testing.assert_allclose(run_text(model, params, ids, mask)[0], text_pooled, atol=TOL)
    np.testing.assert_allclose(run_vision(model, params, images)[0], image_pooled, atol=TOL)
    out = jax.jit(lambda p: model.apply({'params': p}, images, ids, mask))(params)
    logits = out['logit_scale'] * out['image_embed'] @ out['text_embed'].T
    np.testing.assert_allclose(logits, clip_logits(tensors, text_pooled, image_pooled), rtol=1e-4, atol=1e-3)
    assert_round_trip(tensors, params, model.config, 'clip')


def test_export_then_import_gives_the_same_params_scanned_or_not(tmp_path):
    """A model's own params (fresh, seed 5) -> safetensors -> imported into another init (seed 0), also
    into a model.scan=True tower (stacked layers), which exports the same bytes."""
    config = tiny_config(text=BERT)
    model, source = init_params(config, seed=5)
    tensors = export_tensors(importers.flat(source), model.config, 'bert')
    path = write(tmp_path / 'exported', tensors)
    _, target = init_params(config, seed=0)
    params, _ = import_into(target, path, 'text', model.config)
    table = params['text']['token_embed']['embedding']
    np.testing.assert_array_equal(table[VOCAB:], target['text']['token_embed']['embedding'][VOCAB:])
    params['text']['token_embed']['embedding'] = table[:VOCAB]
    source['text']['token_embed']['embedding'] = source['text']['token_embed']['embedding'][:VOCAB]
    assert_same_params(params, source, 'text/')
    config.model.scan = True
    scanned_model, scanned_fresh = init_params(config)
    scanned, _ = import_into(scanned_fresh, path, 'text', scanned_model.config)
    stacked = scanned['text']['encoder']['layers']['block']['attn']['query']['kernel']
    assert stacked.shape == (DEPTH, WIDTH, HEADS, WIDTH // HEADS)
    np.testing.assert_array_equal(stacked[1], source['text']['encoder']['block_1']['attn']['query']['kernel'])
    assert_round_trip(tensors, scanned, scanned_model.config, 'bert')


def check_inits(config):
    """importers.check_inits on the files `config` names, against its model's param shapes (as validate runs it)."""
    model = VLPModel(model_config_from_dict(config.model))
    size, length = config.model.image_size, config.model.max_text_len
    inputs = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.int32))
    boxed = jax.eval_shape(model.init, jax.random.key(0), *inputs)['params']
    importers.check_inits(importers.configured_inits(config), model.config, boxed)


def header_only(config, tmp_path, tensors, hf_config=None, tower='text', extra_files=None):
    """check_inits (what validate runs) on a file: reads only headers, builds only shapes."""
    directory = tmp_path / 'file'
    path = write(directory, tensors, hf_config)
    for name, content in (extra_files or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(json.dumps(content))
    config.model[tower].init = path
    check_inits(config)


BERT_FILE = dict(vocab=VOCAB, positions=POSITIONS, width=WIDTH, depth=DEPTH, mlp=MLP)
POOLING = '1_Pooling/config.json'


@pytest.mark.parametrize(
    'text, file, hf_config, extra, message',
    [
        (dict(BERT, pre_norm=True), {}, None, None, 'set model.text.pre_norm=False'),
        (dict(BERT, type_vocab_size=0), {}, None, None, 'set model.text.type_vocab_size=2'),
        (BERT, dict(vocab=90), None, None, 'set model.text.vocab_size=90'),
        (BERT, dict(positions=512), None, None, 'set model.text.max_positions=512'),
        (BERT, dict(depth=3), None, None, 'holds 3 layers; set model.text.depth=3'),
        (BERT, dict(width=48, mlp=96), None, None, 'word_embeddings.weight has shape (100, 48)'),
        (BERT, dict(width=48, mlp=96), None, None, 'set model.text.width, num_heads and mlp_dim'),
        (BERT, dict(pooler=False), None, None, 'no tensor pooler.dense.weight'),
        (dict(BERT, embed_norm=False), {}, None, None, 'set model.text.embed_norm=True'),
        (BERT, {}, {'num_attention_heads': 8}, None, 'set model.text.num_heads=8'),
        (BERT, {}, {'hidden_act': 'relu'}, None, "hidden_act='relu', which vlp_jax cannot express"),
        (BERT, {}, {'layer_norm_eps': 1e-5}, None, 'set model.text.ln_eps=1e-05'),
        (BERT, {}, {'hidden_act': 'gelu_new'}, None, "set model.text.activation='gelu_tanh'"),
        (BERT, {}, None, {POOLING: {'pooling_mode_mean_tokens': True}}, "set model.text.pool='mean'"),
    ],
)
def test_a_bert_file_that_does_not_fit_is_one_sentence_naming_the_key(tmp_path, text, file, hf_config, extra, message):
    config = tiny_config(text=text)
    tensors = bert_tensors(np.random.default_rng(0), **{**BERT_FILE, **file})
    hf = None if hf_config is None else {'model_type': 'bert', 'num_attention_heads': HEADS, **hf_config}
    with pytest.raises(ImportWeightsError, match='model.text.init') as error:
        header_only(config, tmp_path, tensors, hf, extra_files=extra)
    assert message in str(error.value) and '\n' not in str(error.value), str(error.value)


@pytest.mark.parametrize(
    'tower, text, vision, model, message',
    [
        ('text', CLIP_TEXT, CLIP_VISION, {}, 'set model.proj_bias=False'),
        ('text', dict(CLIP_TEXT, causal=False), CLIP_VISION, dict(proj_bias=False), 'set model.text.causal=True'),
        ('text', dict(CLIP_TEXT, embed_norm=True), CLIP_VISION, dict(proj_bias=False), 'embed_norm=False'),
        ('vision', CLIP_TEXT, dict(CLIP_VISION, pre_layernorm=False), dict(proj_bias=False), 'pre_layernorm=True'),
        ('vision', CLIP_TEXT, dict(CLIP_VISION, patch_bias=True), dict(proj_bias=False), 'patch_bias=False'),
        ('vision', CLIP_TEXT, dict(CLIP_VISION, activation='gelu'), dict(proj_bias=False), 'quick_gelu'),
    ],
)
def test_a_clip_file_that_does_not_fit_is_one_sentence_naming_the_key(tmp_path, tower, text, vision, model, message):
    config = tiny_config(text=text, vision=vision, **model)
    rng = np.random.default_rng(0)
    tensors = clip_tensors(rng, VOCAB, POSITIONS, WIDTH, IMAGE, PATCH, WIDTH, DEPTH, MLP, EMBED)
    hf = {
        'model_type': 'clip',
        'text_config': {'num_attention_heads': HEADS},
        'vision_config': {'num_attention_heads': HEADS},
    }
    with pytest.raises(ImportWeightsError, match=f'model.{tower}.init') as error:
        header_only(config, tmp_path, tensors, hf, tower=tower)
    assert message in str(error.value), str(error.value)


def test_wrong_tower_missing_and_foreign_files_are_refused(tmp_path):
    config = tiny_config(text=BERT)
    vit = vit_tensors(np.random.default_rng(0), IMAGE, PATCH, WIDTH, DEPTH, MLP)
    with pytest.raises(ImportWeightsError, match='is a vit file, which has no text tower'):
        header_only(config, tmp_path, vit)
    with pytest.raises(ImportWeightsError, match='vit layout.*set model.vision.pre_layernorm=False'):
        header_only(tiny_config(vision=dict(pre_layernorm=True, pooler=True)), tmp_path, vit, tower='vision')
    with pytest.raises(ImportWeightsError, match='matches none of the layouts'):
        header_only(config, tmp_path, {'decoder.weight': np.zeros((2, 2), np.float32)})
    config.model.text.init = str(tmp_path / 'missing.safetensors')
    with pytest.raises(ImportWeightsError, match='does not exist'):
        check_inits(config)
    (tmp_path / 'garbage.safetensors').write_bytes(b'not a safetensors file')
    config.model.text.init = str(tmp_path / 'garbage.safetensors')
    with pytest.raises(ImportWeightsError, match='not a readable safetensors file'):
        check_inits(config)


def test_export_refuses_what_the_layout_cannot_express():
    def zeros(config):
        return {k: np.zeros_like(v) for k, v in importers.flat(init_params(config)[1]).items()}

    default = tiny_config()
    with pytest.raises(ImportWeightsError, match=r'needs model.text.pre_norm=False'):
        export_tensors(zeros(default), model_config_from_dict(default.model), 'bert')
    clip = tiny_config(text=CLIP_TEXT, vision=CLIP_VISION)
    with pytest.raises(
        ImportWeightsError, match=r'param image_proj/bias has no place in the clip layout; set model.proj_bias=False'
    ):
        export_tensors(zeros(clip), model_config_from_dict(clip.model), 'clip')
    exported = export_tensors(zeros(default), model_config_from_dict(default.model), 'vit')  # vlp_jax's own ViT is HF's
    assert exported['embeddings.cls_token'].shape == (1, 1, WIDTH)
    assert exported['encoder.layer.1.attention.attention.query.weight'].shape == (WIDTH, WIDTH)


def test_last_token_pooling_and_fusion_layers_that_stay_fresh(tmp_path):
    """pool='last' takes each caption's last real token; a fusion model imports its text layers only."""
    rng = np.random.default_rng(4)
    path = write(tmp_path / 'bert', bert_tensors(rng, VOCAB, POSITIONS, WIDTH, DEPTH, MLP, pooler=False))
    model, fresh = init_params(tiny_config(text=dict(BERT, pool='last', pooler=False)))
    params, _ = import_into(fresh, path, 'text', model.config)
    ids, mask = text_inputs(rng)
    pooled, tokens = run_text(model, params, ids, mask)
    np.testing.assert_array_equal(pooled, np.asarray(tokens)[np.arange(len(ids)), mask.sum(1) - 1])
    fusion = tiny_config(text=dict(BERT, pooler=False, fusion_layers=1), kind='fusion')
    model, fresh = init_params(fusion)
    params, _ = import_into(fresh, path, 'text', model.config)
    assert_same_params(params, fresh, 'text/fusion/')
    assert not np.array_equal(
        params['text']['encoder']['block_0']['mlp']['fc1']['kernel'],
        fresh['text']['encoder']['block_0']['mlp']['fc1']['kernel'],
    )


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('text.pool', 'max', 'model.text.pool must be one of'),
        ('text.activation', 'relu', 'model.text.activation must be one of'),
        ('text.max_positions', 4, 'model.text.max_positions (4) must be 0 or >= model.max_text_len (8)'),
        ('vision.activation', 'swish', 'model.vision.activation must be one of'),
    ],
)
def test_bad_architecture_options_are_config_errors_naming_the_key(key, value, message):
    from vlp_jax.checks import validate
    from vlp_jax.config import ConfigError

    config = tiny_config()
    tower, name = key.split('.')
    config.model[tower][name] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, 1)
