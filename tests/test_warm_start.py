"""Warm start (model.init_checkpoint): a pretrained fusion run initialises a fine-tuning model. What exists is
restored (towers, fusion layers, heads), what is new starts fresh and is listed, NLVR2's paired layers start
from the layers they double, a resolution change interpolates the position table, and a checkpoint of
another architecture is one line naming the param."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_cli

from vlp_jax import setup as setup_lib
from vlp_jax.checkpointing import Checkpointer
from vlp_jax.models import pos_embed
from vlp_jax.objectives.momentum import MOMENTUM_PARAMS
from vlp_jax.warm_start import WarmStartError, load_warm_start, warm_start

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')


def _setup(*overrides):
    config = make_config(*overrides, devices=1)
    return setup_lib.build(config, jax.devices()[:1])


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A fusion model's state saved as a run would save it (seed 3, so it differs from a fresh seed-0 init)."""
    run_setup = _setup(*FUSION, '--config.seed=3')
    state = run_setup.init_state()
    workdir = tmp_path_factory.mktemp('pretrained')
    with Checkpointer(workdir / 'checkpoints', keep=1) as checkpointer:
        checkpointer.save(
            1, state, {'pipeline': {'next_step': 1, 'seed': 3}, 'model': run_setup.config.model.to_dict()}
        )
    return workdir, _flat(jax.device_get(state['params']))


def _flat(tree):
    return {
        '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_a_pretrained_fusion_model_starts_a_fine_tuning_model_and_its_momentum_copy(pretrained):
    """Every param the checkpoint holds is restored, the new task head keeps its fresh init, the momentum
    model starts as a copy of the warm params, and the summary says which is which."""
    workdir, saved = pretrained
    run_setup = _setup(
        *FUSION,
        '--config.model.head=mlp',
        '--config.loss.momentum.enabled=True',
        '--config.loss.momentum.queue_size=64',
        f'--config.model.init_checkpoint={workdir}',
    )
    fresh = run_setup.init_state()
    fresh_params = _flat(jax.device_get(fresh['params']))
    warm = run_setup.load_warm_start()
    state = run_setup.warm_started(fresh, warm.arrays)
    params, momentum = _flat(state['params']), _flat(state['extra'][MOMENTUM_PARAMS])
    assert set(warm.restored) == set(saved) and set(warm.fresh) == {k for k in params if k.startswith('cls_head/')}
    assert len(warm.fresh) == 4 and not warm.unused and warm.total == len(params)
    for key, value in params.items():
        np.testing.assert_array_equal(value, saved[key] if key in saved else fresh_params[key], err_msg=key)
        np.testing.assert_array_equal(momentum[key], value, err_msg=f'momentum {key}')
    summary = warm.summary()
    assert summary.startswith(f'initialised {len(saved)} of {len(params)} param arrays from {workdir}')
    assert 'restored text/fusion (28), text (22), vision (22)' in summary and 'new: cls_head (4)' in summary


def test_paired_layers_and_a_new_resolution_start_from_the_one_image_checkpoint(pretrained):
    """NLVR2's model at 96 px from the 64-px one-image checkpoint: each paired block and the shared key/value
    come from the layer they double, the 8x8 position grid is interpolated to 12x12 as ALBEF does, and what
    every array of the checkpoint is used."""
    workdir, saved = pretrained
    config = make_config(
        *FUSION, '--config.model.text.fusion_images=2', '--config.model.head=mlp', '--config.model.image_size=96'
    )
    config.model.init_checkpoint = str(workdir)
    run_setup = setup_lib.build(config, jax.devices()[:1])
    warm = run_setup.load_warm_start()
    abstract = _flat(jax.tree.map(lambda leaf: leaf, run_setup.abstract_state['params']))
    pair = [key for key in abstract if '/pair_0/' in key]
    assert pair and set(pair) <= set(warm.restored)
    for key in pair:
        source = key.replace('pair_0/image0/', 'block_0/').replace('pair_0/image1/', 'block_0/')
        source = source.replace('pair_0/xattn_key/', 'block_0/xattn/key/').replace(
            'pair_0/xattn_value/', 'block_0/xattn/value/'
        )
        np.testing.assert_array_equal(np.asarray(warm.arrays[key]), saved[source], err_msg=key)
    # both blocks of a pair hold their own buffers: the train step donates the state, one buffer twice fails
    pointers = [warm.arrays[key].unsafe_buffer_pointer() for key in pair]
    assert len(set(pointers)) == len(pointers)
    leaf = run_setup.abstract_state['params']['vision']['pos_embedding']
    fitted = warm.arrays['vision/pos_embedding'](jax.device_put(jnp.zeros(leaf.shape), leaf.sharding))
    np.testing.assert_allclose(
        np.asarray(fitted), pos_embed.interpolate_pos_embedding(saved['vision/pos_embedding'], 12), rtol=1e-6
    )
    assert fitted.shape == (1 + 12 * 12, 32)
    summary = warm.summary()
    assert 'position embeddings interpolated from 8x8 to 12x12 (bicubic)' in summary, summary
    assert 'new: cls_head (4)' in summary and 'not used' not in summary  # every one-image array is used
    assert 'arrays of the two-image fusion layers from the single-image layers' in summary
    merged = warm_start(
        {'vision': {'pos_embedding': jnp.zeros(leaf.shape)}},
        {'vision/pos_embedding': warm.arrays['vision/pos_embedding']},
    )
    np.testing.assert_array_equal(np.asarray(merged['vision']['pos_embedding']), np.asarray(fitted))


@pytest.mark.parametrize(
    'layout, source_of',
    [
        ('separate', lambda key: key.replace('decoder/', 'text/fusion/')),
        pytest.param(
            'shared',
            lambda key: key.replace('decoder/block_1/', 'text/fusion/block_0/').replace('decoder/', 'text/encoder/'),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_decoder_starts_from_the_encoder_layers_it_continues(pretrained, layout, source_of):
    """ALBEF's VQA init ('separate'): every decoder param (self- and cross-attention, MLP, norms, final norm)
    equals the pretrained fusion layer's it continues; a 'shared' decoder's own self-attention equals the text
    and fusion layers' it runs with. The summary names each layer and its source."""
    workdir, saved = pretrained
    run_setup = _setup(*FUSION, f'--config.model.decoder.layout={layout}', f'--config.model.init_checkpoint={workdir}')
    warm = run_setup.load_warm_start()
    decoder = [key for key in _flat(run_setup.abstract_state['params']) if key.startswith('decoder/')]
    assert set(decoder) <= set(warm.restored) and not warm.fresh and not warm.unused
    if layout == 'separate':
        parts = {key.split('/')[2] for key in decoder if key.startswith('decoder/block_0/')}
        assert parts == {'attn', 'ln_attn', 'xattn', 'ln_xattn', 'mlp', 'ln_mlp'}, parts
    for key in decoder:
        np.testing.assert_array_equal(np.asarray(warm.arrays[key]), saved[source_of(key)], err_msg=key)
    summary = warm.summary()
    if layout == 'separate':
        assert {key.split('/')[1] for key in decoder} == {'block_0', 'ln_final'}
        assert f'{len(decoder)} decoder arrays from the layers it continues' in summary, summary
        per_block = sum(key.startswith('decoder/block_0/') for key in decoder)
        assert f'decoder/block_0 <- text/fusion/block_0 ({per_block})' in summary, summary
        assert 'decoder/ln_final <- text/fusion/ln_final (2)' in summary, summary
    else:
        assert (
            'decoder/block_0 <- text/encoder/block_0' in summary and 'decoder/block_1 <- text/fusion/block_0' in summary
        )


def test_a_checkpoint_of_another_architecture_is_one_line_naming_the_param(pretrained):
    workdir, _ = pretrained
    config = make_config(*FUSION, '--config.model.vision.mlp_dim=48')
    config.model.init_checkpoint = str(workdir)
    message = r"param 'vision/encoder/block_0/mlp/fc1/bias' has shape \(64,\) there but \(48,\)"
    with pytest.raises(WarmStartError, match=message):
        setup_lib.build(config, jax.devices()[:1]).load_warm_start()


def test_a_checkpoint_sharing_nothing_is_refused(pretrained):
    workdir, _ = pretrained
    sizes = ('embed_dim=8', 'vision.width=16', 'text.width=16', 'vision.mlp_dim=32', 'text.mlp_dim=32')
    run_setup = _setup(*(f'--config.model.{size}' for size in sizes))
    with pytest.raises(WarmStartError, match='shares no param'):
        load_warm_start(str(workdir), run_setup.abstract_state['params'])


def test_a_bad_init_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    missing = tmp_path / 'nope'
    result = run_cli(
        'vlp_jax.train',
        [
            '--config',
            f'{TINY_CONFIG}:steps=2',
            '--workdir',
            str(tmp_path / 'run'),
            *FAST_OVERRIDES,
            *FUSION,
            f'--config.model.init_checkpoint={missing}',
        ],
        check=False,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert 'model.init_checkpoint' in lines[0] and str(missing) in lines[0]
    assert not (tmp_path / 'run').exists()
