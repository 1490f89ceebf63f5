"""Surviving divergence: non-finite steps are skipped and counted, a run that keeps diverging stops
non-zero with finite checkpoints. (SIGTERM's checkpoint-and-resume is in test_train.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, read_metrics, run_cli, train_batches

from vlp_jax import setup as setup_lib
from vlp_jax import steps
from vlp_jax.checkpointing import restore_params_from
from vlp_jax.guards import Diverged, NonFiniteGuard


def test_a_non_finite_batch_leaves_the_state_as_it_was():
    # no warmup: the optimizer's own step count (not advanced by a skipped step) gives a non-zero lr
    config = make_config('--config.optim.warmup_steps=0', devices=1)
    run_setup = setup_lib.build(config, jax.devices()[:1])
    good = train_batches(config, as_jax=True)[0]
    step = run_setup.train_step()
    state = run_setup.init_state()
    before = jax.device_get(state)
    bad = {**good, 'image': good['image'].at[0, 0, 0, 0].set(jnp.nan)}
    state, metrics, _ = step(state, bad)
    after = jax.device_get(state)
    assert int(metrics[steps.SKIPPED]) == 1 and not np.isfinite(float(metrics['train/loss']))
    for name in ('params', 'opt_state'):
        for x, y in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])):
            np.testing.assert_array_equal(x, y)
    assert int(after['step']) == 1  # the batch is consumed
    state, metrics, _ = step(state, good)
    assert int(metrics[steps.SKIPPED]) == 0
    changed = [
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(after['params']), jax.tree.leaves(jax.device_get(state['params'])))
    ]
    assert any(changed)


def test_guard_counts_and_stops_after_patience_in_a_row():
    guard = NonFiniteGuard(patience=3, skipped_before=4)
    for step, skipped in enumerate([1, 1, 0, 1, 1], start=1):
        guard.observe(step, skipped)
    guard.observe(5, 1)  # the same step again is not counted twice
    assert guard.total == 8 and guard.in_a_row == 2
    with pytest.raises(Diverged, match='3 steps in a row up to step 6'):
        guard.observe(6, 1)


def test_a_diverging_run_stops_non_zero_and_its_checkpoints_are_finite(tmp_path):
    workdir = tmp_path / 'diverged'
    result = run_cli(
        'vlp_jax.train',
        [
            '--config',
            f'{TINY_CONFIG}:steps=40',
            '--workdir',
            str(workdir),
            *FAST_OVERRIDES,
            '--config.optim.lr=1e12',
            '--config.optim.warmup_steps=0',
            '--config.optim.grad_clip=0.0',
            '--config.log_every=1',
            '--config.checkpoint_every=2',
            '--config.nonfinite_patience=4',
        ],
        check=False,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr
    assert '4 steps in a row' in lines[-1] and 'non-finite' in lines[-1] and 'Lower lr' in lines[-1]
    records = read_metrics(workdir)
    assert records[-1]['step'] < 40 and records[-1]['train/skipped_steps'] >= 3
    assert [r['train/skipped_steps'] for r in records] == sorted(r['train/skipped_steps'] for r in records)
    checkpoints = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
    assert checkpoints
    for step in checkpoints:
        params = restore_params_from(workdir / 'checkpoints' / str(step))
        assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(params)), step
