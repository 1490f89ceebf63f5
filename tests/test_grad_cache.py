"""GradCache accumulation (config.micro_batches) equals the full-batch gradient, negatives kept global.

In-process on 1 device and in a subprocess on 8 fake CPU devices (data=4 x fsdp=2), with SRCL and
COSMO reading a frozen reference: the loss, metrics and gradients of micro_batches=4 equal those of
one pass over the whole batch to 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REGULATED_IN_PROCESS, TINY_CONFIG, make_config, run_on_devices, train_batches

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, apply_overrides, split_overrides
from vlp_jax.config_files import load_config_file
from vlp_jax.objectives.grad_cache import grad_cache_value_and_grad, join_micro_batches, split_micro_batches


def test_micro_batch_m_holds_rows_i_times_m_plus_m_and_joins_back():
    x = np.arange(12 * 2).reshape(12, 2)
    micro = np.asarray(split_micro_batches(jnp.asarray(x), 3))
    assert micro.shape == (3, 4, 2)
    for m in range(3):
        np.testing.assert_array_equal(micro[m], x[m::3])
    np.testing.assert_array_equal(np.asarray(join_micro_batches(jnp.asarray(micro))), x)


def test_grad_cache_equals_the_full_batch_gradient_of_a_coupled_loss():
    """A loss coupling all rows (softmax over the whole batch) and a batch-independent scalar (the scale)."""
    rng = np.random.default_rng(0)
    params = {
        'image': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        'text': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        'log_scale': jnp.float32(1.5),
    }
    inputs = (jnp.asarray(rng.normal(size=(12, 5)), jnp.float32), jnp.asarray(rng.normal(size=(12, 4)), jnp.float32))

    def embed(p, batch, key):
        del key
        image, text = batch
        return {
            'image': jnp.tanh(image @ p['image']),
            'text': jnp.tanh(text @ p['text']),
            'scale': jnp.exp(p['log_scale']),
        }

    def loss_of(e):
        logits = e['scale'] * e['image'] @ e['text'].T
        loss = -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=1)))
        return loss, {'first_row': logits[0]}

    (full_loss, full_aux), full_grads = jax.value_and_grad(lambda p: loss_of(embed(p, inputs, None)), has_aux=True)(
        params
    )
    for micro in (1, 3, 4, 12):
        (loss, aux), grads = grad_cache_value_and_grad(embed, loss_of, params, inputs, jax.random.key(0), micro)
        np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
        np.testing.assert_allclose(aux['first_row'], full_aux['first_row'], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, full_grads)


def compare_accumulated_with_full_batch(device_count: int, micro_batches: int, mesh_overrides=()) -> float:
    """Max relative gradient difference of micro_batches vs 1 through the real objectives (asserts 1e-5)."""
    from vlp_jax import setup as setup_lib

    def build(micro):
        config = load_config_file(TINY_CONFIG)
        overrides = [*FAST_OVERRIDES, *REGULATED_IN_PROCESS, *mesh_overrides, f'--config.micro_batches={micro}']
        apply_overrides(config, split_overrides(overrides)[1])
        validate(config, device_count)
        return config, setup_lib.build(config, jax.devices()[:device_count])

    config, full = build(1)
    _, accumulated = build(micro_batches)
    batch = train_batches(config)[0]
    params = full.init_state()['params']
    reference = jax.tree.map(lambda x: x * 1.5, params)  # a frozen model whose cosines differ from the trained one's
    frozen = {'reference': reference, 'discriminator': reference}

    def run(run_setup):
        fn = lambda p, b: run_setup.objective.value_and_grad(p, {}, frozen, b, jax.random.key(0), jnp.int32(3))
        with jax.set_mesh(run_setup.mesh):
            from vlp_jax import parallel

            sharded = {
                k: jax.device_put(jnp.asarray(v), parallel.batch_sharding(run_setup.mesh, v.ndim))
                for k, v in batch.items()
            }
            (loss, (metrics, _)), grads = jax.jit(fn)(params, sharded)
            return jax.device_get((loss, metrics, grads))

    loss_f, metrics_f, grads_f = run(full)
    loss_a, metrics_a, grads_a = run(accumulated)
    np.testing.assert_allclose(loss_a, loss_f, rtol=1e-5)
    for key in ('train/loss_i2t', 'train/loss_t2i', 'train/i2t_accuracy', 'train/hardest_negative_similarity'):
        np.testing.assert_allclose(metrics_a[key], metrics_f[key], rtol=1e-5, err_msg=key)
    # Relative to the largest gradient: some leaves (attention key biases) have a gradient that is zero
    # in exact arithmetic and ~1e-9 of rounding noise, which no relative per-leaf test can compare.
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_f))
    assert scale > 0
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_f)))
    assert worst / scale < 1e-5, (worst, scale)
    return worst / scale


def test_accumulated_gradient_equals_the_full_batch_on_one_device():
    compare_accumulated_with_full_batch(1, 4)


def test_accumulated_gradient_equals_the_full_batch_on_eight_devices():
    code = (
        'from test_grad_cache import compare_accumulated_with_full_batch as c; '
        'print("worst", c(8, 4, ("--config.mesh.data=4", "--config.mesh.fsdp=2")))'
    )
    result = run_on_devices(code, timeout=600)
    assert result.returncode == 0 and 'worst' in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    'overrides, named',
    [
        (('--config.micro_batches=3',), 'micro_batches'),  # 32 rows do not split 3 ways
        (('--config.micro_batches=0',), 'micro_batches'),
        (
            (
                '--config.micro_batches=2',
                '--config.objective=albef',
                '--config.model.kind=fusion',
                '--config.model.text.fusion_layers=1',
            ),
            "micro_batches > 1 .* not supported by objective 'albef'",
        ),
    ],
)
def test_bad_micro_batches_is_a_one_line_config_error(overrides, named):
    config = make_config(*overrides)
    with pytest.raises(ConfigError, match=named) as error:
        validate(config, 1)
    assert '\n' not in str(error.value)
