"""The fine-tuning model pieces: NLVR2's paired fusion layers (shared cross-attention K/V, one image each) and
ALBEF's task heads, against the one-image model and numpy."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config

from vlp_jax import state as state_lib
from vlp_jax.models.bi_fusion import single_image_sources
from vlp_jax.models.layers import TransformerBlock, layer_norm
from vlp_jax.models.param_paths import flat, path_key
from vlp_jax.models.vlp import VLPModel, model_config_from_dict

FUSION = ('--config.objective=albef', '--config.model.kind=fusion')


def _model(*overrides):
    return VLPModel(model_config_from_dict(make_config(*FUSION, *overrides).model))


def _params(model, seed):
    return nn.meta.unbox(model.init(jax.random.key(seed), *state_lib.dummy_inputs(model.config, 1))['params'])


def _set(params, values):
    """params with the leaves at the paths of `values` replaced."""
    return jax.tree_util.tree_map_with_path(lambda p, leaf: values.get(path_key(p), leaf), params)


@pytest.fixture(scope='module')
def models():
    """A one-image fusion model with ALBEF's cls_head, and a two-image one with its ta_head whose paired
    layers start, as the warm start starts them, from the one-image model's layer."""
    single = _model('--config.model.text.fusion_layers=1', '--config.model.head=mlp', '--config.model.head_classes=3')
    paired = _model(
        '--config.model.text.fusion_layers=1',
        '--config.model.text.fusion_images=2',
        '--config.model.head=linear',
        '--config.model.head_classes=3',
    )
    single_params = _params(single, 0)
    pretrained = flat(single_params)
    fresh = _params(paired, 1)
    mapped = {key: pretrained[single_image_sources(key)[0]] for key in flat(fresh) if single_image_sources(key)}
    assert len(mapped) == len([key for key in flat(fresh) if '/pair_0/' in key]) > 0
    paired_params = _set(fresh, {**mapped, **{k: v for k, v in pretrained.items() if k in flat(fresh)}})
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.normal(size=(3, 24, 32)), jnp.float32)
    mask = jnp.asarray(np.arange(24)[None] < np.array([[24], [9], [3]]), jnp.int32)
    images = [jnp.asarray(rng.normal(size=(3, 65, 32)), jnp.float32) for _ in range(2)]
    return dict(single=(single, single_params), paired=(paired, paired_params), text=text, mask=mask, images=images)


BLOCK = TransformerBlock(num_heads=2, mlp_dim=64, cross_attention=True, ln_eps=1e-12)


def _final_norm(params, x):
    return layer_norm(None, 1e-12).apply({'params': params['text']['fusion']['ln_final']}, x)


def test_paired_layers_with_identical_images_equal_the_pretrained_layer_twice(models):
    """Started from a one-image checkpoint, a pair fed the same image twice computes the pretrained fusion
    layer twice: the shared key/value are the pretrained layer's, and both blocks are its copies. A pair whose
    second block kept its own fresh key/value, or whose copy missed a tensor, differs."""
    paired, paired_params = models['paired']
    _, single_params = models['single']
    text, mask, image = models['text'], models['mask'], models['images'][0]
    layer = {'params': single_params['text']['fusion']['block_0']}
    want = _final_norm(single_params, BLOCK.apply(layer, BLOCK.apply(layer, text, mask, image), mask, image))
    got = paired.apply({'params': paired_params}, text, mask, (image, image), method=VLPModel.fuse)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    once = models['single'][0].apply({'params': single_params}, text, mask, image, method=VLPModel.fuse)
    assert not np.allclose(np.asarray(got), np.asarray(once), atol=1e-3)  # twice is not once


def test_paired_layers_attend_to_image0_then_image1_through_one_key_value(models):
    """Block image0 cross-attends to the first image and block image1 to the second, both through the pair's
    one key and value projection: the pair against two plain fusion blocks given those params by hand."""
    paired, params = models['paired']
    text, mask, (image0, image1) = models['text'], models['mask'], models['images']
    pair = params['text']['fusion']['pair_0']
    assert 'key' not in pair['image1']['xattn'] and 'value' not in pair['image0']['xattn']

    def block_params(n):
        own = dict(pair[f'image{n}'])
        own['xattn'] = {**own['xattn'], 'key': pair['xattn_key'], 'value': pair['xattn_value']}
        return {'params': own}

    x = BLOCK.apply(block_params(0), text, mask, image0)
    want = _final_norm(params, BLOCK.apply(block_params(1), x, mask, image1))
    got = paired.apply({'params': params}, text, mask, (image0, image1), method=VLPModel.fuse)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    swapped = paired.apply({'params': params}, text, mask, (image1, image0), method=VLPModel.fuse)
    assert not np.allclose(np.asarray(swapped), np.asarray(want), atol=1e-3)


@pytest.mark.parametrize('which', ['single', 'paired'])
def test_task_heads_against_numpy(models, which):
    """ALBEF's cls_head (dense, ReLU, dense) and ta_head (one dense) on the fused [CLS] token only."""
    model, params = models[which]
    name = {'single': 'cls_head', 'paired': 'ta_head'}[which]
    assert set(params[name]) == ({'hidden', 'out'} if which == 'single' else {'out'})
    rng = np.random.default_rng(1)
    fused = rng.normal(size=(4, 24, 32)).astype(np.float32)
    got = np.asarray(model.apply({'params': params}, jnp.asarray(fused), method=VLPModel.head_logits))
    p = jax.tree.map(np.asarray, params[name])
    x = fused[:, 0].astype(np.float64)
    if which == 'single':
        x = np.maximum(x @ p['hidden']['kernel'] + p['hidden']['bias'], 0.0)
    want = x @ p['out']['kernel'] + p['out']['bias']
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_paired_model_refuses_scan_in_one_line():
    from vlp_jax.config import ConfigError

    with pytest.raises(ConfigError, match='fusion_images=2'):
        make_config(
            *FUSION,
            '--config.model.text.fusion_layers=1',
            '--config.model.text.fusion_images=2',
            '--config.model.scan=True',
            devices=1,
        )


def test_heads_need_a_fusion_model():
    with pytest.raises(ValueError, match='model.head'):
        dataclasses.replace(model_config_from_dict(make_config().model), head='mlp')
