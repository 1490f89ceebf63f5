"""Sharding from config: data parallel, FSDP, both, and tensor parallel train like 1 device; a checkpoint
moves between meshes; a layout the model cannot take is a one-line config error before compilation."""

import textwrap

import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_on_devices

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError

# 4 heads and the padded vocabulary: every dimension the 'model' axis splits is divisible by 4.
FOUR_HEADS = ('--config.model.vision.num_heads=4', '--config.model.text.num_heads=4')
FSDP_RULES = (
    "--config.mesh.rules=(('batch',('data','fsdp')),('embed','fsdp'),('mlp','model'),('heads','model'),"
    "('kv',None),('vocab','model'),('length',None),('patch',None),('proj',None))"
)
LAYOUTS = {
    'data=8': ('--config.mesh.data=8',),
    'fsdp=8': ('--config.mesh.data=1', '--config.mesh.fsdp=8', FSDP_RULES),
    'data=2,fsdp=4': ('--config.mesh.data=2', '--config.mesh.fsdp=4', FSDP_RULES),
    'data=2,model=4': ('--config.mesh.data=2', '--config.mesh.model=4'),
}

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import jax, numpy as np
    from vlp_jax import parallel, setup as setup_lib
    from vlp_jax.checkpointing import Checkpointer
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    from vlp_jax.checks import validate
    from conftest import train_batches
    assert jax.device_count() == 8
    base, layouts = sys.argv[1:-1], json.loads(sys.argv[-1])

    def build(extra, devices):
        config = load_config_file(base[0])
        apply_overrides(config, split_overrides([*base[1:], *extra])[1])
        validate(config, len(devices))
        return config, setup_lib.build(config, devices)

    config, _ = build([], jax.devices()[:1])
    batches = train_batches(config, 3)

    def train(run_setup):
        state, step, losses = run_setup.init_state(), run_setup.train_step(), []
        for host in batches:
            state, metrics, _ = step(state, parallel.global_batch(host, run_setup.mesh))
            losses.append([float(metrics[k]) for k in ('train/loss', 'train/grad_norm')])
        return state, losses

    results = {'1 device': train(build([], jax.devices()[:1])[1])[1]}
    states = {}
    for name, extra in layouts.items():
        _, run_setup = build(extra, jax.devices())
        states[name], results[name] = train(run_setup)
        states[name] = (run_setup, states[name])
    # a checkpoint saved under FSDP restores under tensor parallelism, value for value
    (fsdp_setup, fsdp_state), (tp_setup, _) = states['fsdp=8'], states['data=2,model=4']
    with tempfile.TemporaryDirectory() as directory, Checkpointer(directory, keep=1) as checkpointer:
        checkpointer.save(3, fsdp_state, {'k': 1})
        checkpointer.wait()
        _, restored, _ = checkpointer.restore(tp_setup.abstract_state)
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(fsdp_state['params']), jax.tree.leaves(restored['params']))
    )
    pairs = zip(jax.tree.leaves(fsdp_state['params']), jax.tree.leaves(restored['params']))
    moved = any(a.sharding != b.sharding for a, b in pairs)
    print('RESULTS ' + json.dumps({'losses': results, 'restored_equal': same, 'resharded': moved}))
""")


def test_four_mesh_layouts_train_like_one_device_and_checkpoints_move_between_meshes():
    import json

    import numpy as np

    result = run_on_devices(SCRIPT, TINY_CONFIG, *FAST_OVERRIDES, *FOUR_HEADS, json.dumps(LAYOUTS), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split('RESULTS ', 1)[1])
    reference = np.array(out['losses'].pop('1 device'))
    assert set(out['losses']) == set(LAYOUTS)
    for name, losses in out['losses'].items():
        np.testing.assert_allclose(np.array(losses), reference, rtol=1e-4, err_msg=name)
    assert out['restored_equal'] and out['resharded']


@pytest.mark.parametrize(
    'overrides, keys',
    [
        (('--config.mesh.data=2', '--config.mesh.model=4'), 'model.text.num_heads and mesh.model=4'),
        (
            ('--config.mesh.data=2', '--config.mesh.model=4', *FOUR_HEADS, '--config.model.vision.mlp_dim=66'),
            'model.vision.mlp_dim and mesh.model=4',
        ),
        (
            (
                '--config.mesh.data=1',
                '--config.mesh.fsdp=8',
                FSDP_RULES,
                '--config.model.text.width=36',
                '--config.model.text.num_heads=2',
            ),
            'model.text.width and mesh.fsdp=8',
        ),
    ],
)
def test_a_layout_the_model_cannot_take_is_one_line(overrides, keys):
    config = make_config(*overrides)
    with pytest.raises(ConfigError, match=keys.replace('.', r'\.')) as error:
        validate(config, 8)
    assert '\n' not in str(error.value)
