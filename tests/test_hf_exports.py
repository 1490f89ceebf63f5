"""Exports that transformers can use (models/exporters.py): the whole dual encoder as VisionTextDualEncoderModel,
checked end to end against a numpy forward of the written files (tests/hf_numpy.py) fed by transformers' own
tokenizer and image processor read from the export folder; the tokenizer every text export ships gives vlp_jax's
ids; options transformers cannot express are one line. No torch: transformers' configs, tokenizers and
image processors work without it (README's snippet, which needs torch, runs in the last test where torch is).
"""

import math
import os
import re

import jax
import numpy as np
import pytest
from conftest import REPO
from hf_numpy import clip_logits, clip_text_forward, clip_vision_forward, dual_encoder_forward
from safetensors.numpy import load_file
from test_importers import BERT, CLIP_TEXT, CLIP_VISION, IMAGE, LENGTH, init_params, tiny_config

from vlp_jax.data.batch import normalise_images
from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE, SHIPPED_VOCAB_DIR, Tokenizer
from vlp_jax.models import importers
from vlp_jax.models.exporters import export_tensors, write_export
from vlp_jax.models.importers import ImportWeightsError
from vlp_jax.models.vlp import model_config_from_dict

transformers = pytest.importorskip('transformers')

SENTENCES = [
    'a red circle',
    'A Red Circle!',  # uncased
    'two small blue squares on a white background, side by side',
    'Über-cafés naïve façade',  # accents stripped, as bert-base-uncased does
    'an emoji 🙂 and a tab\there',  # unknown character
    ' '.join(['word'] * 40),  # longer than model.max_text_len: truncated, [SEP] last
]
DUAL_TEXT = dict(BERT, pooler=True, vocab_size=BERT_VOCAB_SIZE)
TOL = 2e-5


def dual_model(vision_pooler=False, log_temperature=None):
    """A dual encoder transformers' VisionTextDualEncoderModel can express, with random params."""
    config = tiny_config(text=DUAL_TEXT, vision=dict(pooler=vision_pooler), proj_bias=False)
    model, params = init_params(config, seed=11)
    if log_temperature is not None:
        params['log_temperature'] = np.float32(log_temperature)
    return model, params


def vlp_outputs(model, params, images_uint8, sentences):
    tokens = Tokenizer(SHIPPED_VOCAB_DIR, LENGTH)(sentences)
    images = normalise_images(images_uint8)
    out = jax.jit(lambda p: model.apply({'params': p}, images, tokens['text_ids'], tokens['text_mask']))(params)
    return {key: np.asarray(value) for key, value in out.items()}


@pytest.mark.parametrize(
    'vision_pooler',
    [False, pytest.param(True, marks=pytest.mark.slow)],  # HF ViT's own pooler: test_importers covers its layout
    ids=['vit-without-pooler', 'vit-with-pooler'],
)
def test_dual_export_is_vlp_jax_through_transformers_tokenizer_processor_and_a_numpy_forward(tmp_path, vision_pooler):
    # log(2.0) is above temperature_max = 0.5: vlp_jax clamps it, and so must the exported logit_scale
    model, params = dual_model(vision_pooler, log_temperature=math.log(2.0))
    out_dir = tmp_path / 'dual'
    write_export(str(out_dir), export_tensors(importers.flat(params), model.config, 'dual'), model.config, 'dual')

    hf_config = transformers.AutoConfig.from_pretrained(str(out_dir))
    assert type(hf_config).__name__ == 'VisionTextDualEncoderConfig', type(hf_config)
    assert hf_config.vision_config.model_type == 'vit' and hf_config.text_config.model_type == 'bert'
    assert hf_config.projection_dim == model.config.embed_dim
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    processor = transformers.AutoImageProcessor.from_pretrained(str(out_dir))

    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, (3, IMAGE, IMAGE, 3), dtype=np.uint8)
    sentences = SENTENCES[:4]
    text_in = tokenizer(sentences, padding='max_length', truncation=True, return_tensors='np')
    pixels = processor([image for image in images], return_tensors='np')['pixel_values']
    assert pixels.shape == (3, 3, IMAGE, IMAGE)
    file_config = {tower: hf_config.to_dict()[tower] for tower in ('vision_config', 'text_config')}
    image_proj, text_proj, logits = dual_encoder_forward(
        load_file(str(out_dir / 'model.safetensors')),
        file_config,
        pixels,
        text_in['input_ids'],
        text_in['attention_mask'],
    )

    ours = vlp_outputs(model, params, images, sentences)
    unit = np.linalg.norm  # get_image_features / get_text_features are unnormalised: vlp_jax's are their directions
    np.testing.assert_allclose(ours['image_embed'], image_proj / unit(image_proj, axis=-1, keepdims=True), atol=TOL)
    np.testing.assert_allclose(ours['text_embed'], text_proj / unit(text_proj, axis=-1, keepdims=True), atol=TOL)
    assert math.isclose(float(ours['logit_scale']), 2.0, rel_tol=1e-6)  # 1 / temperature_max
    np.testing.assert_allclose(logits, ours['logit_scale'] * ours['image_embed'] @ ours['text_embed'].T, atol=1e-4)


def test_clip_export_is_vlp_jax_through_transformers_tokenizer_processor_and_a_numpy_forward(tmp_path):
    """CLIP-layout towers as CLIPModel, with the shipped tokenizer (its pooling at the highest id is CLIP's, in
    both) and a temperature below temperature_min, which vlp_jax clamps."""
    config = tiny_config(text=dict(CLIP_TEXT, vocab_size=BERT_VOCAB_SIZE), vision=CLIP_VISION, proj_bias=False)
    model, params = init_params(config, seed=13)
    params['log_temperature'] = np.float32(math.log(1e-4))  # temperature_min is 1e-3: logit scale 1000
    out_dir = tmp_path / 'clip'
    write_export(str(out_dir), export_tensors(importers.flat(params), model.config, 'clip'), model.config, 'clip')
    hf_config = transformers.AutoConfig.from_pretrained(str(out_dir))
    assert type(hf_config).__name__ == 'CLIPConfig' and hf_config.text_config.eos_token_id == 2  # argmax pooling
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    processor = transformers.AutoImageProcessor.from_pretrained(str(out_dir))
    images = np.random.default_rng(14).integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
    text_in = tokenizer(SENTENCES[:3], padding='max_length', truncation=True, return_tensors='np')
    pixels = processor([image for image in images], return_tensors='np')['pixel_values']
    tensors = load_file(str(out_dir / 'model.safetensors'))
    text, vision = hf_config.text_config, hf_config.vision_config
    text_pooled = clip_text_forward(
        tensors, text_in['input_ids'], text_in['attention_mask'], text.num_attention_heads, text.layer_norm_eps
    )
    image_pooled = clip_vision_forward(tensors, pixels, vision.num_attention_heads, vision.layer_norm_eps)
    image_proj = image_pooled @ tensors['visual_projection.weight'].T.astype(np.float64)
    text_proj = text_pooled @ tensors['text_projection.weight'].T.astype(np.float64)
    ours = vlp_outputs(model, params, images, SENTENCES[:3])
    np.testing.assert_allclose(
        ours['image_embed'], image_proj / np.linalg.norm(image_proj, axis=-1, keepdims=True), atol=TOL
    )
    np.testing.assert_allclose(
        ours['text_embed'], text_proj / np.linalg.norm(text_proj, axis=-1, keepdims=True), atol=TOL
    )
    assert math.isclose(float(ours['logit_scale']), 1000.0, rel_tol=1e-5)
    want = ours['logit_scale'] * ours['image_embed'] @ ours['text_embed'].T
    np.testing.assert_allclose(clip_logits(tensors, text_pooled, image_pooled), want, rtol=1e-4, atol=2e-2)


def test_a_dual_export_imports_back_into_the_same_params_and_exports_the_same_bytes(tmp_path):
    """Export -> import (both towers, with their projections and temperature; config.json checked) -> export."""
    model, params = dual_model(log_temperature=math.log(0.07))  # inside the clamp: it survives unchanged
    out_dir = tmp_path / 'dual'
    tensors = export_tensors(importers.flat(params), model.config, 'dual')
    write_export(str(out_dir), tensors, model.config, 'dual')
    _, fresh = init_params(tiny_config(text=DUAL_TEXT, proj_bias=False), seed=0)
    path = str(out_dir / 'model.safetensors')
    imported, text_plan = importers.import_into(fresh, path, 'text', model.config)
    imported, vision_plan = importers.import_into(imported, path, 'vision', model.config)
    assert text_plan.layout == vision_plan.layout == 'dual' and not text_plan.fresh and not vision_plan.fresh
    assert vision_plan.unused == ('vision_model.pooler.dense.bias', 'vision_model.pooler.dense.weight')  # identity
    assert text_plan.unused == ()
    got, want = importers.flat(imported), importers.flat(params)
    for key, value in want.items():
        if key == 'sigmoid_bias':  # no place in the file
            continue
        if key == 'text/token_embed/embedding':  # the rows past the vocabulary keep their init
            value, got[key] = value[:BERT_VOCAB_SIZE], np.asarray(got[key])[:BERT_VOCAB_SIZE]
        np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)
    again = export_tensors(got, model.config, 'dual')
    assert set(again) == set(tensors) and all(again[k].tobytes() == tensors[k].tobytes() for k in tensors)
    pooled = tiny_config(text=DUAL_TEXT, vision=dict(pooler=True), proj_bias=False)
    pooled_model, pooled_fresh = init_params(pooled)
    with pytest.raises(ImportWeightsError, match="pooler_act='linear' \\(no pooler\\); set model.vision.pooler=False"):
        importers.import_into(pooled_fresh, path, 'vision', pooled_model.config)


def exported(tmp_path, layout, config):
    model, params = init_params(config, seed=3)
    out_dir = tmp_path / layout
    written = write_export(
        str(out_dir), export_tensors(importers.flat(params), model.config, layout), model.config, layout
    )
    return out_dir, written


LAYOUT_CONFIGS = {
    'bert': dict(text=dict(BERT, vocab_size=BERT_VOCAB_SIZE)),
    'clip': dict(text=dict(CLIP_TEXT, vocab_size=BERT_VOCAB_SIZE), vision=CLIP_VISION, proj_bias=False),
    'dual': dict(text=DUAL_TEXT, proj_bias=False),
}


@pytest.mark.parametrize('layout', sorted(LAYOUT_CONFIGS))
def test_every_text_export_ships_a_tokenizer_that_gives_vlp_jax_ids(tmp_path, layout):
    out_dir, written = exported(tmp_path, layout, tiny_config(**LAYOUT_CONFIGS[layout]))
    assert f'the tokenizer (max_length {LENGTH})' in written
    for name in ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json'):
        assert (out_dir / name).is_file(), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    theirs = tokenizer(SENTENCES, padding='max_length', truncation=True, return_tensors='np')
    ours = Tokenizer(SHIPPED_VOCAB_DIR, LENGTH)(SENTENCES)
    assert set(theirs) == {'input_ids', 'attention_mask'}  # no token_type_ids: CLIPModel would refuse them
    np.testing.assert_array_equal(theirs['input_ids'], ours['text_ids'])
    np.testing.assert_array_equal(theirs['attention_mask'], ours['text_mask'])
    assert theirs['input_ids'][-1, -1] == tokenizer.sep_token_id == 102  # truncated at model.max_text_len
    assert len(tokenizer) == BERT_VOCAB_SIZE and tokenizer('a red circle')['input_ids'] == [101, 1037, 2417, 4418, 102]


def test_an_image_export_ships_the_image_processor_and_a_small_vocabulary_no_tokenizer(tmp_path):
    out_dir, written = exported(tmp_path, 'vit', tiny_config())
    assert written == ['config.json', 'preprocessor_config.json'] and not (out_dir / 'tokenizer.json').exists()
    processor = transformers.AutoImageProcessor.from_pretrained(str(out_dir))
    images = np.random.default_rng(5).integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
    pixels = processor([image for image in images], return_tensors='np')['pixel_values']
    np.testing.assert_allclose(pixels.transpose(0, 2, 3, 1), normalise_images(images), atol=1e-6)
    small = tiny_config(text=DUAL_TEXT, proj_bias=False)
    small.model.text.vocab_size = 100
    out_dir, written = exported(tmp_path / 'small', 'dual', small)
    assert not (out_dir / 'tokenizer.json').exists()
    assert "no tokenizer (model.text.vocab_size=100 is smaller than the shipped vocabulary's 30522)" in written


@pytest.mark.parametrize(
    'overrides, message',
    [
        (
            {},
            'the text tower cannot be written in the dual layout; it needs model.text.pre_norm=False and '
            'model.text.pooler=True.',
        ),
        (dict(text=DUAL_TEXT), 'param image_proj/bias has no place in the dual layout; set model.proj_bias=False'),
        (dict(text=dict(DUAL_TEXT, pool='mean'), proj_bias=False), "it needs model.text.pool='cls'."),
        (dict(text=DUAL_TEXT, vision=dict(pool='gap'), proj_bias=False), "it needs model.vision.pool='cls'."),
    ],
    ids=['default-pre-ln-text', 'projection-biases', 'mean-pooled-text', 'gap-pooled-image'],
)
def test_what_the_dual_encoder_cannot_express_is_one_line_naming_the_options(overrides, message):
    config = tiny_config(**overrides)
    model = model_config_from_dict(config.model)
    params = {k: np.zeros_like(v) for k, v in importers.flat(init_params(config)[1]).items()}
    with pytest.raises(ImportWeightsError) as error:
        export_tensors(params, model, 'dual')
    assert message in str(error.value) and '\n' not in str(error.value), str(error.value)


def test_the_readme_snippet_loads_the_export_in_transformers(tmp_path):
    """The README's transformers code, run on a dual export: its embeddings and logits are vlp_jax's."""
    readme = open(os.path.join(REPO, 'README.md')).read()
    snippet = re.search(r'<!-- transformers-snippet -->\n```python\n(.*?)```', readme, re.S).group(1)
    compile(snippet, 'README.md', 'exec')  # checked without torch too
    assert 'exports/dual' in snippet and 'photo.jpg' in snippet
    torch = pytest.importorskip('torch')
    model, params = dual_model()
    out_dir = tmp_path / 'exports' / 'dual'
    write_export(str(out_dir), export_tensors(importers.flat(params), model.config, 'dual'), model.config, 'dual')
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / 'photo.jpg', quality=100)
    namespace = {}
    with torch.no_grad():
        exec(snippet.replace('exports/dual', str(out_dir)).replace('photo.jpg', str(tmp_path / 'photo.jpg')), namespace)
    decoded = np.asarray(Image.open(tmp_path / 'photo.jpg').convert('RGB'))[None]
    ours = vlp_outputs(model, params, decoded, namespace['captions'])
    np.testing.assert_allclose(namespace['image_embeds'].numpy(), ours['image_embed'], atol=1e-4)
    np.testing.assert_allclose(namespace['text_embeds'].numpy(), ours['text_embed'], atol=1e-4)
    want = ours['logit_scale'] * ours['image_embed'] @ ours['text_embed'].T
    np.testing.assert_allclose(namespace['logits_per_image'].numpy(), want, atol=1e-3)
