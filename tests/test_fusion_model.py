"""ALBEF's fusion layers and heads in the model: numpy references with masks, what attends to what, names."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import TINY_CONFIG
from test_models import _numpy_attention, assert_every_param_has_logical_names, tiny_inputs

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, apply_overrides
from vlp_jax.config_files import load_config_file
from vlp_jax.models.layers import TransformerBlock
from vlp_jax.models.text import TextConfig
from vlp_jax.models.vit import ViTConfig
from vlp_jax.models.vlp import VLPConfig, VLPModel

# Batch, image, patch, sequence and vocabulary as test_models' (its tiny_inputs feed both); widths differ.
BATCH, IMAGE, PATCH, SEQ, VOCAB, TEXT_WIDTH, VISION_WIDTH, EMBED = 2, 16, 8, 8, 50, 32, 24, 16
LN_EPS = 1e-6


def _fusion_config(fusion_layers: int = 2) -> VLPConfig:
    return VLPConfig(
        vision=ViTConfig(image_size=IMAGE, patch_size=PATCH, width=VISION_WIDTH, depth=1, num_heads=4, mlp_dim=48),
        text=TextConfig(
            max_len=SEQ,
            width=TEXT_WIDTH,
            depth=1,
            num_heads=4,
            mlp_dim=64,
            vocab_size=VOCAB,
            num_fusion_layers=fusion_layers,
        ),
        embed_dim=EMBED,
        kind='fusion',
    )


@pytest.fixture(scope='module')
def fusion_model():
    model = VLPModel(_fusion_config())
    boxed = jax.jit(model.init)(jax.random.key(0), *tiny_inputs())
    return model, boxed, nn.unbox(boxed)


def _np_layer_norm(x, p, eps=LN_EPS):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def test_fusion_block_matches_numpy_with_masks():
    """Pre-norm fusion block: x + SelfAttn(LN x) [text mask], + CrossAttn(LN x, image), + MLP(LN x)."""
    rng = np.random.default_rng(3)
    heads, width, image_width = 2, 8, 6
    x = rng.normal(size=(2, 4, width)).astype(np.float32)
    image = rng.normal(size=(2, 5, image_width)).astype(np.float32)
    text_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    block = TransformerBlock(num_heads=heads, mlp_dim=16, cross_attention=True)
    params = nn.unbox(block.init(jax.random.key(0), x, mask=text_mask, context=image))
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    got = block.apply(params, x, mask=text_mask, context=image)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['params'])
    every_image_token = np.ones((2, image.shape[1]))
    h = x + _numpy_attention(
        _np_layer_norm(x, p['ln_attn']), _np_layer_norm(x, p['ln_attn']), text_mask, p['attn'], heads
    )
    h = h + _numpy_attention(_np_layer_norm(h, p['ln_xattn']), image, every_image_token, p['xattn'], heads)
    mlp = p['mlp']
    inner = _np_gelu(_np_layer_norm(h, p['ln_mlp']) @ mlp['fc1']['kernel'] + mlp['fc1']['bias'])
    want = h + inner @ mlp['fc2']['kernel'] + mlp['fc2']['bias']
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_fused_text_attends_to_the_image_and_the_itc_embedding_does_not(fusion_model):
    model, _, variables = fusion_model
    image, ids, mask = tiny_inputs()

    def run(image, ids):
        out = model.apply(variables, image, ids, mask)
        fused = model.apply(variables, out['text_tokens'], mask, out['image_tokens'], method=VLPModel.fuse)
        return out, fused

    out, fused = run(image, ids)
    other_out, other_fused = run(image[::-1], ids)
    np.testing.assert_array_equal(out['text_embed'], other_out['text_embed'])  # unimodal: before fusion
    assert np.abs(np.asarray(fused - other_fused)).max() > 1e-3  # fusion reads the image
    # Padding does not leak: changing a padded token of row 1 leaves its real positions unchanged.
    padded = ids.at[1, 6].set((ids[1, 6] + 3) % VOCAB)
    _, fused_padded = run(image, padded)
    np.testing.assert_allclose(fused_padded[1, :5], fused[1, :5], atol=1e-6)


def test_itm_and_mlm_heads_match_numpy(fusion_model):
    model, _, variables = fusion_model
    image, ids, mask = tiny_inputs()
    out = model.apply(variables, image, ids, mask)
    fused = model.apply(variables, out['text_tokens'], mask, out['image_tokens'], method=VLPModel.fuse)
    itm = model.apply(variables, fused, method=VLPModel.itm_logits)
    mlm = model.apply(variables, fused, method=VLPModel.mlm_logits)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
    f = np.asarray(fused, np.float64)
    rows = 128  # VOCAB padded to a multiple of 128 (a tensor-parallel axis must divide the table)
    assert itm.shape == (BATCH, 2) and mlm.shape == (BATCH, SEQ, rows)
    assert p['text']['token_embed']['embedding'].shape[0] == rows and p['mlm_bias'].shape == (rows,)
    np.testing.assert_allclose(itm, f[:, 0] @ p['itm_head']['kernel'] + p['itm_head']['bias'], atol=1e-5)
    hidden = _np_gelu(f @ p['mlm_dense']['kernel'] + p['mlm_dense']['bias'])
    hidden = _np_layer_norm(hidden, p['mlm_norm'], eps=1e-12)
    word_embeddings = p['text']['token_embed']['embedding']  # [rows, width]: the decoder is tied to them
    want = hidden @ word_embeddings.T + p['mlm_bias']
    np.testing.assert_allclose(mlm[..., :VOCAB], want[..., :VOCAB], atol=1e-4, rtol=1e-4)
    # the padding rows are never predicted: no probability mass, never the argmax
    assert np.all(np.asarray(mlm[..., VOCAB:]) <= -1e8)
    assert float(jax.nn.softmax(mlm, axis=-1)[..., VOCAB:].sum()) == 0.0


def test_fusion_params_have_logical_names_and_a_dual_model_has_none(fusion_model):
    _, boxed, variables = fusion_model
    assert_every_param_has_logical_names(boxed, variables)
    names = set(variables['params'])
    assert {'itm_head', 'mlm_dense', 'mlm_norm', 'mlm_bias'} <= names and 'fusion' in variables['params']['text']
    assert len(variables['params']['text']['fusion']) == 2 + 1  # two blocks and the final LayerNorm
    dual = VLPConfig(
        vision=_fusion_config().vision,
        text=TextConfig(max_len=SEQ, width=TEXT_WIDTH, depth=1, num_heads=4, mlp_dim=64, vocab_size=VOCAB),
        embed_dim=EMBED,
    )
    dual_params = jax.eval_shape(VLPModel(dual).init, jax.random.key(0), *tiny_inputs())['params']
    assert not {'itm_head', 'mlm_dense', 'mlm_bias'} & set(dual_params) and 'fusion' not in dual_params['text']


def test_kind_and_fusion_layers_must_agree():
    with pytest.raises(ValueError, match='fusion'):
        _fusion_config(fusion_layers=0)
    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, [('model.kind', 'fusion')])
    with pytest.raises(ConfigError, match='model.text.fusion_layers'):
        validate(config, 1)
    apply_overrides(config, [('model.text.fusion_layers', '2')])
    with pytest.raises(ConfigError, match="objective='albef'"):  # the contrastive objective trains dual encoders
        validate(config, 1)
    apply_overrides(config, [('objective', 'albef')])
    validate(config, 1)
    apply_overrides(config, [('loss.itm.negatives', 'random')])
    with pytest.raises(ConfigError, match='loss.itm.negatives'):
        validate(config, 1)
