"""Locked towers (LiT) and per-param learning-rate multipliers (vlp_jax/optim.py).

The optimizer is checked against a plain numpy AdamW on a toy tree; a locked tower keeps no
optimizer state (counted against numpy sums of the param sizes); a CLI run on 8 fake devices
with FSDP leaves the locked tower bit-identical to its initialisation while the other trains;
the optimizer state survives an orbax save/restore and updates exactly as before, and a LiT
checkpoint written on 8 devices restores into a 1-device run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_cli, train_source
from lit_workdir import LIT, STEPS, lit_workdir

from vlp_jax import optim
from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, OptimSettings, settings_of
from vlp_jax.models.param_paths import path_key

pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _config(*overrides):
    return make_config(*overrides)


TOY_STEPS = 6  # total_steps of the toy optimizer's schedule


def _toy_settings(frozen='', multipliers=(), grad_clip=1.0, weight_decay=0.1):
    return OptimSettings(
        lr=0.01,
        warmup_steps=2,
        min_lr_ratio=0.1,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        adam_b2=0.98,
        frozen=frozen,
        lr_multipliers=multipliers,
    )


def _toy_params():
    rng = np.random.default_rng(0)
    return {
        'vision': {'kernel': rng.normal(size=(3, 4)), 'bias': rng.normal(size=(4,))},
        'text': {'kernel': rng.normal(size=(4, 2)), 'bias': rng.normal(size=(2,))},
        'log_temperature': np.float64(-2.0),
    }


def _toy_grads(steps):
    rng = np.random.default_rng(1)
    shapes = jax.tree.map(np.shape, _toy_params())
    draw = lambda shape: rng.normal(size=shape) * 3.0  # large enough that clipping acts
    return [jax.tree.map(draw, shapes, is_leaf=lambda x: isinstance(x, tuple)) for _ in range(steps)]


def _numpy_adamw(params, grads_per_step, settings, frozen, multipliers):
    """Plain numpy AdamW + warmup-cosine + global-norm clipping over the unlocked leaves only."""
    names = lambda tree: {
        '/'.join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    p = {k: np.asarray(v, np.float64) for k, v in names(params).items()}
    trained = [k for k in p if k not in frozen]
    mu = {k: np.zeros_like(p[k]) for k in trained}
    nu = {k: np.zeros_like(p[k]) for k in trained}
    b1, b2, eps = 0.9, settings.adam_b2, 1e-8
    peak, end, warm, total = settings.lr, settings.lr * settings.min_lr_ratio, settings.warmup_steps, TOY_STEPS
    for t, grads in enumerate(grads_per_step):
        g = names(grads)
        norm = math.sqrt(sum(float(np.sum(g[k] ** 2)) for k in trained))
        scale = min(1.0, settings.grad_clip / norm)
        lr = (
            peak * t / warm
            if t < warm
            else end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
        )
        for k in trained:
            gk = g[k] * scale
            mu[k] = b1 * mu[k] + (1 - b1) * gk
            nu[k] = b2 * nu[k] + (1 - b2) * gk**2
            update = (mu[k] / (1 - b1 ** (t + 1))) / (np.sqrt(nu[k] / (1 - b2 ** (t + 1))) + eps)
            if p[k].ndim >= 2:
                update = update + settings.weight_decay * p[k]
            p[k] = p[k] - lr * multipliers.get(k, 1.0) * update
    return p


def _run_optax(params, grads_per_step, settings):
    tx = optim.make_optimizer(settings, TOY_STEPS)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(params)
    updates_seen = []
    for grads in grads_per_step:
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, params)
        updates_seen.append(updates)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, state, updates_seen


def test_locked_params_and_multipliers_match_numpy_adamw():
    params, grads = _toy_params(), _toy_grads(5)
    settings = _toy_settings(frozen='vision/.*', multipliers=(('text/kernel', 0.5), ('text/.*', 2.0)))
    got, _, _ = _run_optax(params, grads, settings)
    want = _numpy_adamw(
        params,
        grads,
        settings,
        frozen={'vision/kernel', 'vision/bias'},
        multipliers={'text/kernel': 0.5, 'text/bias': 2.0},
    )
    flat = {'/'.join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(got)}
    for name, value in want.items():
        np.testing.assert_allclose(np.asarray(flat[name]), value, rtol=2e-5, atol=1e-6, err_msg=name)
    # Locked: bit-identical (no decay, no update), not merely close.
    np.testing.assert_array_equal(np.asarray(flat['vision/kernel']), np.float32(params['vision']['kernel']))


def test_multiplier_half_gives_exactly_half_the_update():
    params, grads = _toy_params(), _toy_grads(3)
    # Without decay each step's update depends on the gradients alone, so the two runs see the same
    # Adam direction at every step and the multiplier must scale it exactly (a power of two: no rounding).
    _, _, full = _run_optax(params, grads, _toy_settings(weight_decay=0.0))
    _, _, half = _run_optax(params, grads, _toy_settings(weight_decay=0.0, multipliers=(('text/.*', 0.5),)))
    for step_full, step_half in zip(full, half):
        np.testing.assert_array_equal(
            np.asarray(step_half['text']['kernel']), np.asarray(step_full['text']['kernel']) * 0.5
        )
        np.testing.assert_array_equal(
            np.asarray(step_half['text']['bias']), np.asarray(step_full['text']['bias']) * 0.5
        )
        np.testing.assert_array_equal(
            np.asarray(step_half['vision']['kernel']), np.asarray(step_full['vision']['kernel'])
        )


def _bytes(tree):
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def test_locked_tower_has_no_optimizer_state():
    from vlp_jax import setup as setup_lib

    plain = setup_lib.build(_config()).abstract_state
    locked = setup_lib.build(_config(f'--config.optim.frozen={LIT}')).abstract_state
    params = {
        '/'.join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(plain['params'])
    }
    trained_bytes = sum(
        int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        for name, leaf in params.items()
        if not name.startswith(('vision/', 'image_proj/'))
    )
    counters = 2 * 4  # int32 step counts of adam and of the lr schedule; clipping and set_to_zero keep none
    assert _bytes(plain['opt_state']) == 2 * _bytes(plain['params']) + counters
    assert _bytes(locked['opt_state']) == 2 * trained_bytes + counters
    moment_paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(locked['opt_state'])]
    assert not [p for p in moment_paths if "'vision'" in p or "'image_proj'" in p]
    assert any("'text'" in p for p in moment_paths)


def test_locked_optimizer_state_survives_checkpoint_and_trains_on_identically(tmp_path):
    """orbax round-trips multi_transform's state (masked leaves and all); updates after it are unchanged."""
    from vlp_jax.checkpointing import Checkpointer

    settings = _toy_settings(frozen='vision/.*', multipliers=(('text/.*', 0.5),))
    params, grads = _toy_params(), _toy_grads(3)
    _, opt_state, _ = _run_optax(params, grads[:2], settings)
    state = {'params': jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), 'opt_state': opt_state}
    with Checkpointer(tmp_path, keep=1, async_save=False) as checkpointer:
        checkpointer.save(2, state, {'k': 1})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    with Checkpointer(tmp_path, keep=1) as checkpointer:
        _, restored, _ = checkpointer.restore(abstract)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    tx, last = optim.make_optimizer(settings, TOY_STEPS), jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads[2])
    for a, b in zip(
        jax.tree.leaves(tx.update(last, state['opt_state'], state['params'])),
        jax.tree.leaves(tx.update(last, restored['opt_state'], restored['params'])),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    'override, message',
    [
        ('--config.optim.frozen=vision', "optim.frozen = 'vision' matches no param"),
        ('--config.optim.frozen=.*', 'locks every param'),
        ('--config.optim.frozen=(', 'is not a valid regex'),
        ("--config.optim.lr_multipliers=(('txt/.*', 0.5),)", "pattern 'txt/.*' matches no trained param"),
        ("--config.optim.lr_multipliers=(('text/.*', 0),)", 'must be > 0'),
        ("--config.optim.lr_multipliers=('text/.*',)", 'needs (regex, multiplier) pairs'),
    ],
)
def test_bad_optim_keys_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as error:
        validate(_config(override), 1)
    assert message in str(error.value) and '\n' not in str(error.value)


def test_lit_run_on_8_devices_with_fsdp_keeps_the_locked_tower_bit_identical(tmp_path_factory):
    """Through the CLI: the checkpoint's image side equals its initialisation bit for bit, it holds no
    moments for it, and the whole state restores into a 1-device LiT setup (resume on another mesh)."""
    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import (
        Checkpointer,
        CheckpointError,
        _flat_shapes,
        _read_state_metadata,
        restore_params_from,
    )

    workdir = lit_workdir(tmp_path_factory)
    config = _config(f'--config.optim.frozen={LIT}')
    lit_setup = setup_lib.build(config)
    initial = jax.tree.map(np.asarray, lit_setup.init_state()['params'])
    # A target with a group the checkpoint lacks (here an empty one) is another layout, refused by name:
    # the good checkpoint is not taken for a damaged one and moved aside.
    with (
        pytest.raises(CheckpointError, match="'sampler'"),
        Checkpointer(workdir / 'checkpoints', keep=1) as checkpointer,
    ):
        checkpointer.restore({**lit_setup.abstract_state, setup_lib.SAMPLER_STATE: {}})
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [str(STEPS)]
    target = lit_setup.checkpoint_target(setup_lib.make_sampler(config, train_source(config)))
    with Checkpointer(workdir / 'checkpoints', keep=1) as checkpointer:
        step, state, _ = checkpointer.restore(target)
    assert step == STEPS
    trained = jax.tree.map(np.asarray, restore_params_from(workdir / 'checkpoints' / str(STEPS)))
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(jax.tree.map(np.asarray, state['params']))):
        np.testing.assert_array_equal(a, b)
    flat = lambda tree: {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    initial, trained = flat(initial), flat(trained)
    assert initial.keys() == trained.keys()
    locked = [k for k in initial if k.startswith(("['vision']", "['image_proj']"))]
    assert len(locked) > 4
    for key in locked:
        np.testing.assert_array_equal(trained[key], initial[key], err_msg=key)
    moved = [k for k in initial if k.startswith("['text']") and not np.array_equal(trained[k], initial[k])]
    assert len(moved) > 4, 'the unlocked text tower did not train'
    stored = _flat_shapes(_read_state_metadata(workdir / 'checkpoints' / str(STEPS)))
    moments = [k for k in stored if k.startswith('opt_state/') and '/mu/' in k]
    assert moments and not [k for k in moments if '/mu/vision/' in k or '/mu/image_proj/' in k]


@pytest.mark.slow  # CI: the orbax round trip above and the 8-device run's full-state restore cover resuming
def test_lit_run_stopped_and_resumed_matches_a_straight_run(tmp_path):
    from vlp_jax.checkpointing import restore_params_from

    args = lambda workdir: ['--config', f'{TINY_CONFIG}:steps=6', '--workdir', str(workdir), *FAST_OVERRIDES]
    lit = (f'--config.optim.frozen={LIT}', '--config.checkpoint_every=3')
    run_cli('vlp_jax.train', [*args(tmp_path / 'straight'), *lit])
    run_cli('vlp_jax.train', [*args(tmp_path / 'resumed'), *lit, '--stop_at_step=3'])
    resumed = run_cli('vlp_jax.train', [*args(tmp_path / 'resumed'), *lit])
    assert 'resumed from checkpoint at step 3' in resumed.stdout
    straight = restore_params_from(tmp_path / 'straight' / 'checkpoints' / '6')
    again = restore_params_from(tmp_path / 'resumed' / 'checkpoints' / '6')
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _cost_flops(lowered) -> float:
    analysis = lowered.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis['flops'])


def test_locked_params_get_exact_zero_gradients_and_no_backward_pass():
    """The step differentiates through optim.stop_locked_gradients: a locked param's gradient is an
    exact zero (not a number the optimizer then drops), train/grad_norm counts the trained params
    only, and the locked image side, at the input end, loses its whole backward pass: the step's
    FLOPs fall by twice the image side's forward FLOPs (weight and activation gradients)."""
    from vlp_jax import mfu, steps
    from vlp_jax import setup as setup_lib
    from vlp_jax.data import batch as batch_spec

    config = _config(f'--config.optim.frozen={LIT}')
    run_setup = setup_lib.build(config, jax.devices()[:1])
    state = run_setup.init_state()
    host = batch_spec.example_batch(
        int(config.batch_size), int(config.model.image_size), int(config.model.max_text_len)
    )
    batch = {key: jnp.asarray(value) for key, value in host.items()}
    lock = optim.stop_locked_gradients(settings_of(config, OptimSettings))

    def grads(transform):
        loss = lambda p: run_setup.objective.loss(transform(p), {}, {}, batch, jax.random.key(0), jnp.int32(0))[0]
        return {path_key(path): g for path, g in jax.tree_util.tree_leaves_with_path(jax.grad(loss)(state['params']))}

    locked, full = grads(lock), grads(lambda p: p)
    is_locked = lambda name: name.startswith(('vision/', 'image_proj/'))
    assert any(is_locked(name) for name in locked) and any(not is_locked(name) for name in locked)
    for name, g in locked.items():
        if is_locked(name):
            assert not np.any(np.asarray(g)), name  # exact zeros
            assert np.any(np.asarray(full[name])), name  # ... where the unlocked gradient is not zero
        else:
            np.testing.assert_allclose(np.asarray(g), np.asarray(full[name]), rtol=1e-5, atol=1e-7, err_msg=name)

    # The step's grad norm is the trained params' norm.
    step = run_setup.train_step()
    _, metrics, _ = step(jax.tree.map(jnp.copy, state), batch, {})
    trained_norm = math.sqrt(
        sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for n, g in full.items() if not is_locked(n))
    )
    np.testing.assert_allclose(float(metrics['train/grad_norm']), trained_norm, rtol=1e-4)

    # FLOPs: the locked step against the same step differentiating every param.
    unlocked_step = steps.make_train_step(
        run_setup.objective,
        run_setup.optimizer,
        run_setup.schedule,
        run_setup.mesh,
        run_setup.rules,
        run_setup.shardings,
    )
    flops_locked = _cost_flops(step.lower(run_setup.abstract_state, batch, {}))
    flops_unlocked = _cost_flops(unlocked_step.lower(run_setup.abstract_state, batch, {}))
    # The image side's backward pass alone: its forward + backward (to the params, not the pixels) minus its forward.
    encode = lambda p, x: run_setup.model.apply({'params': p}, x, method='encode_images')
    image_forward = _cost_flops(jax.jit(encode).lower(state['params'], batch['image']))
    cotangent = jnp.ones((int(config.batch_size), int(config.model.embed_dim)))
    image_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(encode(p, x) * cotangent)))
    image_backward = _cost_flops(image_grad.lower(state['params'], batch['image'])) - image_forward
    saved = flops_unlocked - flops_locked
    assert 0.9 < saved / image_backward < 1.1, (saved, image_backward, image_forward)
    assert mfu.model_flops_per_step(config) == pytest.approx(flops_locked, rel=1e-6)
