"""Warm start (model.init_checkpoint): a dual encoder's towers initialise a fusion model, the rest stays fresh."""

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_cli

from vlp_jax import setup as setup_lib
from vlp_jax.checkpointing import Checkpointer
from vlp_jax.objectives.momentum import MOMENTUM_PARAMS
from vlp_jax.warm_start import WarmStartError, load_warm_start

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')


def _setup(*overrides):
    config = make_config(*overrides, devices=1)
    return setup_lib.build(config, jax.devices()[:1])


@pytest.fixture(scope='module')
def dual_checkpoint(tmp_path_factory):
    """A dual encoder's state saved as a run would save it (seed 3, so it differs from a fresh seed-0 init)."""
    run_setup = _setup('--config.seed=3')
    state = run_setup.init_state()
    workdir = tmp_path_factory.mktemp('dual')
    with Checkpointer(workdir / 'checkpoints', keep=1) as checkpointer:
        saved = state  # the random sampler has no state to save beside it
        checkpointer.save(
            1, saved, {'pipeline': {'next_step': 1, 'seed': 3}, 'model': run_setup.config.model.to_dict()}
        )
    return workdir, jax.device_get(state['params'])


def _flat(tree):
    return {
        '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_dual_towers_initialise_a_fusion_model_and_its_momentum_copy(dual_checkpoint):
    workdir, dual = dual_checkpoint
    run_setup = _setup(*FUSION, '--config.loss.momentum.enabled=True', '--config.loss.momentum.queue_size=64')
    fresh = run_setup.init_state()
    fresh_params = _flat(jax.device_get(fresh['params']))
    arrays, matched, total = load_warm_start(str(workdir), run_setup.abstract_state['params'])
    state = run_setup.warm_started(fresh, arrays)
    params, momentum, dual = _flat(state['params']), _flat(state['extra'][MOMENTUM_PARAMS]), _flat(dual)
    copied = [key for key in params if key in dual and dual[key].shape == params[key].shape]
    assert matched == len(copied) == len(dual) and total == len(params) > matched
    for key, value in params.items():
        want = dual[key] if key in copied else fresh_params[key]
        np.testing.assert_array_equal(value, want, err_msg=key)
        np.testing.assert_array_equal(momentum[key], value, err_msg=f'momentum {key}')
    fresh_parts = {key.split('/')[0] for key in params if key not in copied} | {
        key.split('/')[1] for key in params if key not in copied and key.startswith('text/')
    }
    assert {'itm_head', 'mlm_dense', 'mlm_bias', 'fusion'} <= fresh_parts, fresh_parts
    assert not np.array_equal(params['vision/patch_embed/kernel'], fresh_params['vision/patch_embed/kernel'])


def test_a_checkpoint_sharing_nothing_is_refused(dual_checkpoint):
    workdir, _ = dual_checkpoint
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
