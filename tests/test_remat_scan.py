"""model.remat and model.scan change memory and compile time, never the function.

Each option is checked against the plain layout: remat policies give the same loss and
gradients; a scanned model given the plain model's block params stacked along a leading
'layers' axis gives the same outputs and gradients (so scan runs the same blocks in the
same order, not a shared or reordered block).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models import tiny_config, tiny_inputs

from vlp_jax.models.layers import REMAT_POLICIES
from vlp_jax.models.vlp import VLPModel, model_config_from_dict


def with_towers(config, **options):
    return dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, **options),
        text=dataclasses.replace(config.text, **options),
    )


def fusion_config(**options):
    config = tiny_config()
    config = dataclasses.replace(config, kind='fusion', text=dataclasses.replace(config.text, num_fusion_layers=2))
    return with_towers(config, **options)


def loss_of(model):
    def loss(params, image, ids, mask):
        out = model.apply({'params': params}, image, ids, mask)
        return jnp.sum(out['image_embed'] * out['text_embed']) + jnp.sum(out['text_tokens'] ** 2) * 1e-3

    return jax.value_and_grad(loss)


def plain_params(config):
    return nn.unbox(jax.jit(VLPModel(config).init)(jax.random.key(0), *tiny_inputs()))['params']


def stack_blocks(tree):
    """The plain layout's encoder params {block_0, block_1, ..., ln_final} in scan's layout
    {layers: {block: stacked}, ln_final}: written from the layout, not by calling the model."""
    if not isinstance(tree, dict):
        return tree
    blocks = sorted((k for k in tree if k.startswith('block_')), key=lambda k: int(k.split('_')[1]))
    out = {k: stack_blocks(v) for k, v in tree.items() if not k.startswith('block_')}
    if blocks:
        out['layers'] = {'block': jax.tree.map(lambda *xs: np.stack(xs), *[tree[k] for k in blocks])}
    return out


@pytest.mark.parametrize(
    'policy', [pytest.param(p, marks=[pytest.mark.slow] if p == 'dots' else []) for p in REMAT_POLICIES if p != 'none']
)
def test_remat_policy_gives_the_same_loss_and_gradients(policy):
    config = fusion_config()
    params = plain_params(config)
    base_value, base_grads = jax.jit(loss_of(VLPModel(config)))(params, *tiny_inputs())
    value, grads = jax.jit(loss_of(VLPModel(with_towers(config, remat=policy))))(params, *tiny_inputs())
    np.testing.assert_allclose(value, base_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, base_grads)


@pytest.mark.parametrize('remat', [pytest.param('none', marks=pytest.mark.slow), 'full'])  # 'full': scan and remat
def test_scan_runs_the_same_blocks_in_order(remat):
    config = fusion_config()
    params = plain_params(config)
    scanned_config = with_towers(config, scan=True, remat=remat)
    scanned_shapes = nn.unbox(jax.eval_shape(VLPModel(scanned_config).init, jax.random.key(0), *tiny_inputs()))
    stacked = stack_blocks(jax.device_get(params))
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned_shapes['params'])
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(lambda s: s.shape, scanned_shapes['params'])

    base_out = VLPModel(config).apply({'params': params}, *tiny_inputs())
    out = VLPModel(scanned_config).apply({'params': stacked}, *tiny_inputs())
    for key in ('image_embed', 'text_embed', 'image_tokens', 'text_tokens'):
        np.testing.assert_allclose(out[key], base_out[key], rtol=1e-5, atol=1e-6, err_msg=key)

    base_value, base_grads = jax.jit(loss_of(VLPModel(config)))(params, *tiny_inputs())
    value, grads = jax.jit(loss_of(VLPModel(scanned_config)))(stacked, *tiny_inputs())
    np.testing.assert_allclose(value, base_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, stack_blocks(base_grads))


def test_scanned_params_carry_the_layers_axis_name():
    boxed = jax.eval_shape(VLPModel(with_towers(tiny_config(), scan=True)).init, jax.random.key(0), *tiny_inputs())
    kernel = boxed['params']['vision']['encoder']['layers']['block']['mlp']['fc1']['kernel']
    assert kernel.names[0] == 'layers' and kernel.value.shape[0] == tiny_config().vision.depth


def test_config_keys_reach_each_tower():
    model = {
        'image_size': 16,
        'max_text_len': 8,
        'embed_dim': 16,
        'remat': 'dots',
        'scan': True,
        'vision': {'patch_size': 8, 'width': 32, 'depth': 1, 'num_heads': 2, 'mlp_dim': 64, 'remat': 'full'},
        'text': {'width': 32, 'depth': 1, 'num_heads': 2, 'mlp_dim': 64, 'remat': ''},
    }
    config = model_config_from_dict(model)
    assert (config.vision.remat, config.text.remat) == ('full', 'dots')
    assert config.vision.scan and config.text.scan
