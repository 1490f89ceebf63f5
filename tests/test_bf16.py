"""bf16 end to end: the train step computes in bfloat16 while params, gradients and Adam's
moments (the master weights) stay float32, and its loss follows the float32 step's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config

from vlp_jax import parallel
from vlp_jax import setup as setup_lib
from vlp_jax.data import batch as batch_spec


def one_step(*overrides):
    config = make_config(*overrides, devices=1)
    run_setup = setup_lib.build(config, jax.devices()[:1])
    step = run_setup.train_step()
    host = batch_spec.example_batch(config.batch_size, config.model.image_size, config.model.max_text_len)
    batch = {
        k: jax.device_put(jnp.asarray(v), parallel.batch_sharding(run_setup.mesh, v.ndim)) for k, v in host.items()
    }
    state = run_setup.init_state()
    program = step.lower(state, batch).as_text()  # StableHLO as traced: XLA:CPU may widen bf16 products later
    state, metrics, _ = step(state, batch)
    return jax.device_get(state), jax.device_get(metrics), program


def products(program: str) -> list[str]:
    """The StableHLO operations that multiply matrices (their operand and result types are on the line)."""
    return [line for line in program.splitlines() if 'stablehlo.dot_general' in line or 'stablehlo.convolution' in line]


@pytest.mark.parametrize(
    'options',
    [
        (),
        pytest.param(  # budget: the plain case runs in CI
            ('--config.micro_batches=2', '--config.model.scan=True', '--config.model.remat=full'),
            marks=pytest.mark.slow,
        ),
    ],
    ids=['plain', 'accumulated_scanned_remat'],
)
def test_bf16_step_keeps_float32_master_weights_and_follows_float32(options):
    state32, metrics32, hlo32 = one_step(*options)
    state16, metrics16, hlo16 = one_step('--config.model.dtype=bfloat16', *options)
    for name in ('params', 'opt_state'):
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(state16[name]) if jnp.issubdtype(leaf.dtype, jnp.floating)}
        assert dtypes == {np.dtype('float32')}, (name, dtypes)
    # The products really ran in bf16 (and not in the float32 step).
    assert any('bf16>' in line for line in products(hlo16))
    assert products(hlo32) and not any('bf16>' in line for line in products(hlo32))
    np.testing.assert_allclose(metrics16['train/loss'], metrics32['train/loss'], rtol=2e-2)
    np.testing.assert_allclose(metrics16['train/grad_norm'], metrics32['train/grad_norm'], rtol=1e-1)
    assert metrics16['train/skipped'] == 0
