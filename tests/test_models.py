"""Tests for vlp_jax.models: shapes, masking, attention math, sharding metadata."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.models.layers import MultiHeadAttention
from vlp_jax.models.text import TextConfig, text_config
from vlp_jax.models.vit import ViTConfig, vit_config
from vlp_jax.models.vlp import VLPConfig, VLPModel, clamp_temperature, model_config_from_dict

BATCH, IMAGE, PATCH, SEQ, VOCAB, WIDTH, EMBED = 2, 16, 8, 8, 50, 32, 16


def tiny_config(dtype: str = 'float32') -> VLPConfig:
    return VLPConfig(
        vision=ViTConfig(image_size=IMAGE, patch_size=PATCH, width=WIDTH, depth=2, num_heads=4, mlp_dim=64),
        text=TextConfig(max_len=SEQ, width=WIDTH, depth=2, num_heads=4, mlp_dim=64, vocab_size=VOCAB),
        embed_dim=EMBED,
        dtype=dtype,
    )


def tiny_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.normal(size=(BATCH, IMAGE, IMAGE, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(1, VOCAB, size=(BATCH, SEQ)), jnp.int32)
    mask = jnp.asarray([[1] * SEQ, [1] * 5 + [0] * (SEQ - 5)], jnp.int32)
    return image, ids, mask


@pytest.fixture(scope='module')
def model_and_vars():
    model = VLPModel(tiny_config())
    boxed = jax.jit(model.init)(jax.random.key(0), *tiny_inputs())
    return model, boxed, nn.unbox(boxed)


def test_output_shapes_dtypes_and_norms(model_and_vars):
    model, _, variables = model_and_vars
    out = model.apply(variables, *tiny_inputs())
    n_img_tokens = 1 + (IMAGE // PATCH) ** 2
    assert out['image_embed'].shape == (BATCH, EMBED)
    assert out['text_embed'].shape == (BATCH, EMBED)
    assert out['image_tokens'].shape == (BATCH, n_img_tokens, WIDTH)
    assert out['text_tokens'].shape == (BATCH, SEQ, WIDTH)
    for key in ('image_embed', 'text_embed', 'logit_scale', 'sigmoid_bias'):
        assert out[key].dtype == jnp.float32, key
    np.testing.assert_allclose(np.linalg.norm(out['image_embed'], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out['text_embed'], axis=-1), 1.0, atol=1e-5)
    assert out['logit_scale'].shape == ()
    np.testing.assert_allclose(out['logit_scale'], 1.0 / 0.07, rtol=1e-5)
    np.testing.assert_allclose(out['sigmoid_bias'], -10.0)


def test_clamp_temperature(model_and_vars):
    model, _, variables = model_and_vars
    cfg = model.config
    params = dict(variables['params'])
    params['log_temperature'] = jnp.float32(5.0)
    clamped = clamp_temperature(params, cfg)
    np.testing.assert_allclose(clamped['log_temperature'], math.log(cfg.temperature_max), rtol=1e-6)
    params['log_temperature'] = jnp.float32(-50.0)
    np.testing.assert_allclose(
        clamp_temperature(params, cfg)['log_temperature'], math.log(cfg.temperature_min), rtol=1e-6
    )
    # In range: untouched; the {'params': ...} form works too.
    wrapped = clamp_temperature({'params': variables['params']}, cfg)
    np.testing.assert_allclose(wrapped['params']['log_temperature'], math.log(0.07), rtol=1e-6)
    # The logit scale itself is clipped even without clamping the param.
    out = model.apply({'params': params}, *tiny_inputs())
    np.testing.assert_allclose(out['logit_scale'], 1.0 / cfg.temperature_min, rtol=1e-5)


def test_padding_does_not_leak(model_and_vars):
    model, _, variables = model_and_vars
    _, ids, mask = tiny_inputs()
    embed = lambda i: model.apply(variables, i, mask, method=VLPModel.encode_texts)
    base = embed(ids)
    padded_changed = ids.at[1, 6].set((ids[1, 6] + 7) % VOCAB)  # mask[1, 6] == 0
    np.testing.assert_allclose(embed(padded_changed), base, atol=1e-6)
    valid_changed = ids.at[1, 2].set((ids[1, 2] + 7) % VOCAB)  # mask[1, 2] == 1
    assert np.abs(np.asarray(embed(valid_changed)[1] - base[1])).max() > 1e-4


def _numpy_attention(x, ctx, mask, p, num_heads):
    """Reference softmax(QK^T / sqrt(d) + mask) V with per-head projections."""

    def proj(name, inp):
        return np.einsum('ld,dhk->lhk', inp, p[name]['kernel']) + p[name]['bias']

    outs = []
    for b in range(x.shape[0]):
        q, k, v = proj('query', x[b]), proj('key', ctx[b]), proj('value', ctx[b])
        heads = []
        for h in range(num_heads):
            logits = q[:, h] @ k[:, h].T / np.sqrt(q.shape[-1])
            logits = np.where(mask[b][None, :] > 0, logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            heads.append(w @ v[:, h])
        o = np.stack(heads, axis=1)  # [Lq, H, D]
        outs.append(np.einsum('lhk,hkd->ld', o, p['out']['kernel']) + p['out']['bias'])
    return np.stack(outs)


@pytest.mark.parametrize('cross', [False, True])
def test_attention_matches_numpy(cross):
    rng = np.random.default_rng(1)
    heads, width = 2, 8
    x = rng.normal(size=(2, 3, width)).astype(np.float32)
    ctx = rng.normal(size=(2, 5, width)).astype(np.float32) if cross else x
    mask = np.array([[1] * ctx.shape[1], [1, 1] + [0] * (ctx.shape[1] - 2)])
    layer = MultiHeadAttention(num_heads=heads)
    args = (x, ctx if cross else None, mask)
    params = nn.unbox(layer.init(jax.random.key(1), *args))
    # Non-zero biases so the reference checks them too.
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    got = layer.apply(params, *args)
    p = jax.tree.map(np.asarray, params['params'])
    np.testing.assert_allclose(got, _numpy_attention(x, ctx, mask, p, heads), atol=1e-5, rtol=1e-5)


def assert_every_param_has_logical_names(boxed, variables):
    """Each param of `variables` has a PartitionSpec in `boxed` (the boxed init) naming each of its dims."""
    specs = nn.get_partition_spec(boxed)
    leaves, _ = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    params = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    assert len(leaves) == len(params)
    for path, spec in leaves:
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == params[path].ndim, (path, spec)


def test_every_param_has_logical_names(model_and_vars):
    _, boxed, variables = model_and_vars
    assert_every_param_has_logical_names(boxed, variables)
    assert all(
        isinstance(leaf, nn.LogicallyPartitioned)
        for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    )


@pytest.mark.parametrize(
    'rules',
    [
        (('batch', None), ('mlp', None), ('heads', None), ('vocab', None)),
        (('batch', 'data'), ('mlp', 'model'), ('heads', 'model'), ('vocab', 'model')),
    ],
)
def test_logical_sharding_on_one_device_mesh(model_and_vars, rules):
    model, boxed, variables = model_and_vars
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))
    mlp_spec = shardings['params']['text']['encoder']['block_0']['mlp']['fc1']['kernel'].spec
    assert mlp_spec == jax.sharding.PartitionSpec(None, dict(rules)['mlp'])
    sharded = jax.device_put(variables, shardings)

    @jax.jit
    def fwd(v, *inputs):
        with nn.logical_axis_rules(rules):
            return model.apply(v, *inputs)

    with jax.set_mesh(mesh):
        out = fwd(sharded, *tiny_inputs())
        with nn.logical_axis_rules(rules):  # abstract init under mesh + rules (state.py)
            abstract = jax.eval_shape(model.init, jax.random.key(0), *tiny_inputs())
    assert jax.tree.structure(abstract) == jax.tree.structure(boxed)
    ref = model.apply(variables, *tiny_inputs())
    np.testing.assert_allclose(out['image_embed'], ref['image_embed'], atol=1e-5)


def test_bf16_close_to_f32_and_params_f32(model_and_vars):
    _, _, variables = model_and_vars
    model16 = VLPModel(tiny_config('bfloat16'))
    vars16 = nn.unbox(jax.eval_shape(model16.init, jax.random.key(0), *tiny_inputs()))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(vars16))
    out16 = model16.apply(variables, *tiny_inputs())
    out32 = VLPModel(tiny_config()).apply(variables, *tiny_inputs())
    for key in ('image_embed', 'text_embed'):
        assert out16[key].dtype == jnp.float32
        np.testing.assert_allclose(out16[key], out32[key], atol=5e-2)
        assert not np.array_equal(out16[key], out32[key])  # bf16 really was used


def test_encode_methods_match_call(model_and_vars):
    model, _, variables = model_and_vars
    image, ids, mask = tiny_inputs()
    out = model.apply(variables, image, ids, mask)
    np.testing.assert_allclose(
        model.apply(variables, image, method=VLPModel.encode_images), out['image_embed'], atol=1e-6
    )
    np.testing.assert_allclose(
        model.apply(variables, ids, mask, method=VLPModel.encode_texts), out['text_embed'], atol=1e-6
    )


def test_dropout_needs_rng_and_changes_output():
    cfg = tiny_config()
    cfg = VLPConfig(vision=ViTConfig(IMAGE, PATCH, WIDTH, 1, 4, 64, dropout=0.5), text=cfg.text, embed_dim=EMBED)
    model = VLPModel(cfg)
    variables = nn.unbox(model.init(jax.random.key(0), *tiny_inputs()))
    det = model.apply(variables, *tiny_inputs())
    sto = model.apply(variables, *tiny_inputs(), deterministic=False, rngs={'dropout': jax.random.key(3)})
    assert not np.allclose(det['image_embed'], sto['image_embed'])


def test_named_variants_and_bad_sizes():
    widths = {'Ti': 192, 'S': 384, 'B': 768, 'L': 1024}
    for name, width in widths.items():
        assert vit_config(name, 224, 16).width == width
    assert vit_config('L', 224, 14).depth == 24
    assert text_config('mini', 32).width == 384
    assert text_config('base', 32).num_heads == 12
    with pytest.raises(ValueError, match='divisible'):
        vit_config('B', 225, 16)
    with pytest.raises(ValueError):
        vit_config('XXL', 224, 16)
    model = VLPModel(tiny_config())
    with pytest.raises(ValueError):
        model.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)), *tiny_inputs()[1:])


def test_model_config_from_dict():
    model_cfg = {
        'image_size': 32,
        'max_text_len': 16,
        'embed_dim': 64,
        'temperature_init': 0.05,
        'dtype': 'bfloat16',
        'vision': {'variant': 'S', 'patch_size': 16, 'width': 1, 'depth': 1, 'num_heads': 1, 'mlp_dim': 1},
        'text': {'variant': 'custom', 'width': 48, 'depth': 1, 'num_heads': 4, 'mlp_dim': 96, 'vocab_size': 100},
    }

    class Attr(dict):  # attribute + item access, like ml_collections.ConfigDict
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:  # a missing attribute is an AttributeError, as on a ConfigDict (hasattr works)
                raise AttributeError(name) from None

    attr_cfg = Attr(model_cfg, vision=Attr(model_cfg['vision']), text=Attr(model_cfg['text']))
    for cfg in (model_cfg, {'model': model_cfg}, attr_cfg):
        c = model_config_from_dict(cfg)
        assert c.vision.width == 384 and c.vision.image_size == 32
        assert (c.text.width, c.text.vocab_size, c.text.max_len) == (48, 100, 16)
        assert c.embed_dim == 64 and c.dtype == 'bfloat16'
        assert c.temperature_init == 0.05 and c.temperature_max == 0.5
