"""The step's non-finite guard (steps.GUARDS) without its tax, on a toy objective whose compile takes a second:
a finite step is the unguarded step bit for bit, a skipped one leaves params, optimizer state and the
objective's extra state (what `after_update` moves: EMA model, queue) as they were, and an update that overflows
the params is what only the updated-params check sees. (The real model's skip, the loop's count and stop, and
the finite checkpoints of a diverging run: test_guards.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlp_jax import parallel, steps
from vlp_jax.objectives.base import FEEDBACK, Objective

WIDTH, BATCH = 4, 8


class ToyEMA(Objective):
    """Loss mean((image @ w + b)^2); `after_update` moves an EMA of w and counts its calls, as ALBEF's
    momentum model and queue move (only after an applied update)."""

    batch_keys = ('image',)
    frozen_roles = ()

    @classmethod
    def build(cls, config, parts):
        return cls()

    def init_extra(self, params, rng):
        return {'ema': params['w'], 'updates': jnp.zeros((), jnp.int32)}

    def loss(self, params, extra, frozen, batch, rng, step):
        x = batch['image'].reshape(BATCH, -1)[:, :WIDTH]
        loss = jnp.mean((x @ params['w'] + params['b']) ** 2)
        return loss, {}, {FEEDBACK: None}

    def after_update(self, params, extra, outputs, step):
        return params, {'ema': 0.9 * extra['ema'] + 0.1 * params['w'], 'updates': extra['updates'] + 1}


def _setup(lr: float) -> tuple[steps.TrainStep, dict, dict, dict]:
    """{guard: step}, a fresh state, a finite batch and a NaN one, on 1 device."""
    mesh = parallel.make_mesh({'data': 1, 'fsdp': 1, 'model': 1}, jax.devices()[:1])
    objective, optimizer = ToyEMA(), optax.adamw(lr, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    params = {'w': jnp.asarray(rng.normal(size=(WIDTH, WIDTH)), jnp.float32), 'b': jnp.zeros((WIDTH,), jnp.float32)}
    state = {
        'params': params,
        'opt_state': optimizer.init(params),
        'extra': objective.init_extra(params, None),
        'step': jnp.zeros((), jnp.int32),
        'rng': jax.random.key_data(jax.random.key(0)),
    }
    state = jax.tree.map(jnp.array, state)  # extra's EMA starts as w: its own buffer, as both are donated
    shardings = jax.tree.map(lambda _: parallel.replicated(mesh), state)
    step_of = {
        guard: steps.make_train_step(objective, optimizer, lambda s: lr, mesh, (), shardings, guard=guard)
        for guard in steps.GUARDS
    }
    image = jnp.asarray(rng.normal(size=(BATCH, 2, 2, 3)), jnp.float32)
    return step_of, state, {'image': image}, {'image': image.at[0, 0, 0, 0].set(jnp.nan)}


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def _assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_finite_steps_equal_the_unguarded_step_bit_for_bit():
    step_of, state, good, _ = _setup(lr=1e-2)
    results = {}
    for guard in steps.GUARDS:
        current = jax.tree.map(jnp.array, state)  # the step donates its state
        for _ in range(3):
            current, metrics, _ = step_of[guard](current, good)
            assert int(metrics[steps.SKIPPED]) == 0, guard
        results[guard] = _copy(current)
    assert int(results['off']['extra']['updates']) == 3
    for guard in ('cond', 'cond_params', 'select'):
        _assert_trees_equal(results[guard], results['off'])


@pytest.mark.parametrize('guard', ['cond', 'cond_params', 'select'])
def test_a_non_finite_batch_leaves_params_optimizer_and_extra_as_they_were(guard):
    step_of, state, good, bad = _setup(lr=1e-2)
    state, _, _ = step_of[guard](state, good)
    before = _copy(state)
    state, metrics, _ = step_of[guard](state, bad)
    after = _copy(state)
    assert int(metrics[steps.SKIPPED]) == 1 and not np.isfinite(float(metrics['train/loss']))
    for name in ('params', 'opt_state', 'extra'):
        _assert_trees_equal(before[name], after[name])
    assert int(after['step']) == int(before['step']) + 1  # the batch is consumed
    # the unguarded step applies it: what the guard is for
    unguarded, _, _ = step_of['off'](jax.tree.map(jnp.array, before), bad)
    assert not np.all(np.isfinite(np.asarray(unguarded['params']['w'])))


@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')
def test_an_update_that_overflows_the_params_is_seen_by_the_updated_params_check_only():
    # lr 1e39 is inf in float32: loss and gradient are finite, the updated params are not. The pre-update check
    # ('cond') cannot see that; 'cond_params' and the earlier 'select' check the updated params.
    step_of, state, good, _ = _setup(lr=1e39)
    for guard, skipped in (('cond', 0), ('cond_params', 1), ('select', 1)):
        new, metrics, _ = step_of[guard](jax.tree.map(jnp.array, state), good)
        assert np.isfinite(float(metrics['train/loss'])) and np.isfinite(float(metrics['train/grad_norm']))
        assert int(metrics[steps.SKIPPED]) == skipped, guard
        if skipped:
            _assert_trees_equal(_copy(state['params']), _copy(new['params']))
            _assert_trees_equal(_copy(state['extra']), _copy(new['extra']))
        else:
            assert not np.all(np.isfinite(np.asarray(new['params']['w'])))
