"""train/mfu: the compiled step's FLOPs (XLA cost analysis) against the device peak.

The FLOPs are checked against a count of the step's matrix products written from the
architecture (forward + the backward pass's two products per forward product), so a
figure per device instead of per step, or counted twice, fails.
"""

import jax
import jax.numpy as jnp
import pytest
from conftest import make_config

from vlp_jax import mfu
from vlp_jax.checks import validate
from vlp_jax.config import apply_overrides, split_overrides


@pytest.mark.parametrize(
    'kind, peak',
    [('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5', 459e12), ('NVIDIA H100 80GB HBM3', 989e12)]
    + [('NVIDIA H100 PCIe', 756e12), ('NVIDIA A100-SXM4-80GB', 312e12), ('a kind nobody lists', None)],
)
def test_peak_table_by_device_kind(kind, peak):
    assert mfu.table_peak(kind) == peak


def test_a_configured_peak_wins_and_cpu_is_measured():
    assert mfu.peak_flops_per_device(123e9) == 123e9
    measured = mfu.peak_flops_per_device(0.0)  # this machine's CPU devices are not in the table
    assert jax.local_devices()[0].platform == 'cpu' and measured == mfu.measured_cpu_peak() > 1e8


def test_utilisation_arithmetic():
    figures = mfu.utilisation(2e9, 3.0, 1e10, 4, 8)
    assert figures == {'train/flops_per_example': 2e9 / 8, 'train/mfu': 2e9 * 3.0 / (1e10 * 4)}
    assert mfu.utilisation(2e9, 3.0, None, 4, 8) == {'train/flops_per_example': 2e9 / 8}
    assert mfu.utilisation(None, 3.0, 1e10, 4, 8) == {}


def matmul_flops_per_example(config) -> float:
    """FLOPs of a dual encoder's matrix products for one example, forward and backward."""
    model = config.model

    def blocks(tokens, tower):
        width, mlp = tower.width, tower.mlp_dim
        per_block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width
        return tower.depth * per_block

    patches = (model.image_size // model.vision.patch_size) ** 2
    patch_embed = 2 * patches * model.vision.patch_size**2 * 3 * model.vision.width
    vision = patch_embed + blocks(1 + patches, model.vision) + 2 * model.vision.width * model.embed_dim
    text = blocks(model.max_text_len, model.text) + 2 * model.text.width * model.embed_dim
    logits = 2 * 2 * config.batch_size * model.embed_dim  # i2t and t2i rows of one example
    forward = vision + text + logits
    return 3 * forward - patch_embed  # backward: 2 products per forward one, none for the pixels' gradient


def test_model_flops_match_the_matmul_count_and_the_compiled_step():
    from vlp_jax import parallel
    from vlp_jax import setup as setup_lib
    from vlp_jax.data import batch as batch_spec

    config = make_config('--config.model.text.mlp_dim=128', devices=1)
    flops = mfu.model_flops_per_step(config)
    ratio = flops / (matmul_flops_per_example(config) * config.batch_size)
    # XLA also counts the elementwise work (softmax, LayerNorm, GELU, Adam), a fraction of the products here.
    assert 1.0 <= ratio <= 1.5, ratio

    # The lowered plain step's figure is what the compiled step executes (one device here).
    run_setup = setup_lib.build(config, jax.devices()[:1])
    step = run_setup.train_step()
    host = batch_spec.example_batch(config.batch_size, config.model.image_size, config.model.max_text_len)
    batch = {
        k: jax.device_put(jnp.asarray(v), parallel.batch_sharding(run_setup.mesh, v.ndim)) for k, v in host.items()
    }
    step(run_setup.init_state(), batch)
    compiled = step.executable().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, (list, tuple)) else compiled
    assert abs(compiled['flops'] / flops - 1) < 0.05, (compiled['flops'], flops)


def test_accumulation_and_scan_do_not_change_the_model_flops():
    """XLA counts a loop body once: the accumulated or scanned step must not look cheaper."""
    config = make_config('--config.model.vision.depth=2')
    plain = mfu.model_flops_per_step(config)
    apply_overrides(config, split_overrides(['--config.micro_batches=4', '--config.model.scan=True'])[1])
    validate(config, 1)
    assert mfu.model_flops_per_step(config) == plain
