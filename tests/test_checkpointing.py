"""Tests for vlp_jax.checkpointing: round trip, keep-K, resume, corruption fallback, sharding."""

import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_devices

from vlp_jax.checkpointing import Checkpointer, CheckpointError, restore_params_from

# orbax/tensorstore leave an 'Event loop is closed' callback behind after a failed read.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def make_state(seed: int) -> dict:
    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        'enc': {'w': jax.random.normal(k[0], (4, 3)), 'b': jnp.full((3,), float(seed))},
        'head': jax.random.normal(k[1], (3, 2)),
    }
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    # One real update so mu/nu/count are not all zeros.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    return {'params': params, 'opt_state': opt_state, 'step': jnp.int32(seed), 'rng': jax.random.key_data(k[2])}


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(directory, steps, keep=10):
    ckpt = Checkpointer(directory, keep=keep)
    for s in steps:
        ckpt.save(s, make_state(s), {'step': s, 'pipeline': {'epoch': 0, 'pos': s * 8}})
    ckpt.close()


def step_dirs(directory):
    return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())


def test_round_trip_and_keep_last_k(tmp_path):
    d = tmp_path / 'checkpoints'
    ckpt = Checkpointer(d, keep=2)
    for s in (1, 2, 3, 4):
        ckpt.save(s, make_state(s), {'step': s, 'cfg': {'name': 'x', 'lr': 0.5}})
    ckpt.wait()
    assert ckpt.latest_step() == 4
    assert step_dirs(d) == [3, 4]
    want = make_state(4)
    step, state, extra = ckpt.restore(abstract(want))
    assert step == 4
    assert extra == {'step': 4, 'cfg': {'name': 'x', 'lr': 0.5}}
    assert_tree_equal(state, want)  # includes the optax NamedTuple structure
    assert isinstance(state['opt_state'][0], optax.ScaleByAdamState)
    step, state, _ = ckpt.restore(abstract(want), step=3)
    assert step == 3
    assert_tree_equal(state, make_state(3))
    with pytest.raises(CheckpointError, match='step 1'):
        ckpt.restore(abstract(want), step=1)
    ckpt.close()


def test_reopen_sees_steps_and_resave_is_skipped(tmp_path):
    d = tmp_path / 'checkpoints'
    save_steps(d, [5, 7])
    ckpt = Checkpointer(d, keep=10)
    assert ckpt.latest_step() == 7
    step, state, extra = ckpt.restore(abstract(make_state(0)))
    assert step == 7 and extra['pipeline']['pos'] == 56
    assert_tree_equal(state, make_state(7))
    # Re-saving an existing step keeps the original untouched.
    ckpt.save(7, make_state(99), {'step': 99})
    ckpt.wait()
    _, state, extra = ckpt.restore(abstract(make_state(0)))
    assert extra['step'] == 7
    assert_tree_equal(state, make_state(7))
    ckpt.close()


def test_unfinished_tmp_dir_is_ignored(tmp_path):
    d = tmp_path / 'checkpoints'
    save_steps(d, [1])
    (d / '2.orbax-checkpoint-tmp-123').mkdir()  # what a SIGKILL mid-save leaves behind
    ckpt = Checkpointer(d, keep=10)
    assert ckpt.latest_step() == 1
    assert ckpt.restore(abstract(make_state(0)))[0] == 1
    ckpt.close()


def test_no_checkpoints(tmp_path):
    d = tmp_path / 'work' / 'checkpoints'
    ckpt = Checkpointer(d, keep=3)
    assert ckpt.latest_step() is None
    assert ckpt.restore(abstract(make_state(0))) is None
    ckpt.close()
    assert not (tmp_path / 'work').exists()
    d.mkdir(parents=True)
    assert Checkpointer(d, keep=3).restore(abstract(make_state(0))) is None


def _truncate_data_files(step_dir: pathlib.Path) -> None:
    data = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
    assert data
    for p in data:
        with open(p, 'r+b') as f:
            f.truncate(10)


def _garbage_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / 'state' / '_METADATA').write_bytes(b'\x00garbage' * 20)


def _delete_manifest(step_dir: pathlib.Path) -> None:
    (step_dir / 'state' / 'manifest.ocdbt').unlink()


@pytest.mark.parametrize('damage', [_truncate_data_files, _garbage_metadata, _delete_manifest])
def test_corrupt_latest_falls_back(tmp_path, capsys, caplog, damage):
    d = tmp_path / 'checkpoints'
    save_steps(d, [1, 2, 3])
    damage(d / '3')
    ckpt = Checkpointer(d, keep=10)
    step, state, extra = ckpt.restore(abstract(make_state(0)))
    assert step == 2 and extra['step'] == 2
    assert_tree_equal(state, make_state(2))
    bad = str(d / '3')
    assert bad in capsys.readouterr().err
    assert any(bad in r.getMessage() for r in caplog.records)
    assert step_dirs(d) == [1, 2]  # good ones kept
    assert (d / 'corrupt' / '3' / 'state').is_dir()  # bad one moved, not deleted
    assert ckpt.latest_step() == 2
    # Re-saving step 3 after the fallback does not collide with the moved one.
    ckpt.save(3, make_state(3), {'step': 3})
    ckpt.wait()
    assert ckpt.restore(abstract(make_state(0)))[0] == 3
    ckpt.close()


def test_all_corrupt_raises(tmp_path):
    d = tmp_path / 'checkpoints'
    save_steps(d, [1, 2])
    _truncate_data_files(d / '1')
    _garbage_metadata(d / '2')
    ckpt = Checkpointer(d, keep=10)
    with pytest.raises(CheckpointError, match=str(d)):
        ckpt.restore(abstract(make_state(0)))
    assert sorted(p.name for p in (d / 'corrupt').iterdir()) == ['1', '2']
    assert ckpt.restore(abstract(make_state(0))) is None  # nothing left that looks like a step
    ckpt.close()


def test_explicit_corrupt_step_raises_without_moving(tmp_path):
    d = tmp_path / 'checkpoints'
    save_steps(d, [1, 2])
    _truncate_data_files(d / '1')
    with pytest.raises(CheckpointError, match='damaged'):
        Checkpointer(d, keep=10).restore(abstract(make_state(0)), step=1)
    assert step_dirs(d) == [1, 2]


def test_shape_mismatch_is_config_error_not_corruption(tmp_path):
    d = tmp_path / 'checkpoints'
    save_steps(d, [1])
    other = make_state(0)
    other['params']['head'] = jnp.zeros((3, 5))
    with pytest.raises(CheckpointError, match='params/head.*\\(3, 2\\).*\\(3, 5\\)'):
        Checkpointer(d, keep=10).restore(abstract(other))
    assert step_dirs(d) == [1] and not (d / 'corrupt').exists()


def test_restore_params_from(tmp_path):
    work = tmp_path / 'work'
    save_steps(work / 'checkpoints', [1, 2])
    want = make_state(2)['params']
    for path in (work, work / 'checkpoints', work / 'checkpoints' / '2'):
        assert_tree_equal(restore_params_from(path), want)
    assert_tree_equal(restore_params_from(work / 'checkpoints' / '1', abstract(want)), make_state(1)['params'])
    bad = abstract(want)
    bad['enc']['w'] = jax.ShapeDtypeStruct((4, 7), jnp.float32, sharding=want['enc']['w'].sharding)
    with pytest.raises(CheckpointError, match=r'enc/w.*\(4, 3\).*\(4, 7\)'):
        restore_params_from(work, bad)
    with pytest.raises(CheckpointError, match='does not exist'):
        restore_params_from(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CheckpointError, match='not a vlp_jax checkpoint'):
        restore_params_from(tmp_path / 'empty')


SHARDED_SCRIPT = textwrap.dedent("""
        import sys
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from vlp_jax.checkpointing import Checkpointer
        assert len(jax.devices()) == 8, jax.devices()
        mesh = Mesh(np.array(jax.devices()), ('data',))
        sharded, repl = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
        state = {'params': {'w': jax.device_put(jnp.arange(64.0).reshape(16, 4), sharded),
                                                'b': jax.device_put(jnp.arange(4.0), repl)},
                          'step': jax.device_put(jnp.int32(11), repl)}
        assert len(state['params']['w'].addressable_shards) == 8
        ckpt = Checkpointer(sys.argv[1], keep=2)
        ckpt.save(11, state, {'k': 1})
        ckpt.wait()
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
        step, got, extra = ckpt.restore(target)
        assert step == 11 and extra == {'k': 1}
        assert got['params']['w'].sharding == repl
        np.testing.assert_array_equal(np.asarray(got['params']['w']), np.arange(64.0).reshape(16, 4))
        ckpt.close()
        print('SHARDED_OK')
""")


def test_sharded_save_restore_across_device_counts(tmp_path):
    d = tmp_path / 'checkpoints'
    proc = run_on_devices(SHARDED_SCRIPT, d, timeout=120)
    assert proc.returncode == 0 and 'SHARDED_OK' in proc.stdout, proc.stderr[-3000:]
    # This process: restore the 8-way sharded checkpoint onto one device.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {
        'params': {
            'w': jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=one),
            'b': jax.ShapeDtypeStruct((4,), jnp.float32, sharding=one),
        },
        'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=one),
    }
    step, got, _ = Checkpointer(d, keep=2).restore(target)
    assert step == 11 and int(got['step']) == 11
    assert got['params']['w'].sharding == one
    np.testing.assert_array_equal(np.asarray(got['params']['w']), np.arange(64.0).reshape(16, 4))
