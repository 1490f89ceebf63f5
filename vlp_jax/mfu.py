"""Model FLOPs utilisation: the train step's model FLOPs against the devices' peak.

The FLOPs come from XLA's cost analysis of the step lowered for the run's global shapes,
built *plain*: micro_batches=1, model.scan=False, model.remat='none'. XLA counts the body of
a loop once however often it runs, so the accumulated (GradCache) and scanned steps would be
undercounted M or depth times, and a remat policy's recomputation is hardware work, not
model work (MFU, not HFU). The plain step is the same function, so its FLOPs are the run's
model FLOPs; it is only lowered (traced), never compiled. The peak is the dense bf16
matrix-unit peak per JAX device from the vendors' data sheets, the convention of
PaLM/big_vision MFU figures; `peak_flops_per_device` in config overrides it (e.g. for a
device missing from the table), and on CPU it is measured once with a float32 matmul
running on all local devices at once (so fake devices sharing cores share the peak).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# (substring of jax.Device.device_kind, dense bf16 FLOP/s per JAX device); first match wins.
PEAK_FLOPS_BY_KIND: tuple[tuple[str, float], ...] = (
    ('TPU v6 lite', 918e12),  # v6e: one chip per device
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5', 459e12),  # v5p
    ('TPU v4', 275e12),  # one megacore chip per device
    ('TPU v3', 61.5e12),  # one of the chip's two cores per device
    ('H100 PCIe', 756e12),
    ('H100', 989e12),  # SXM
    ('H200', 989e12),
    ('GH200', 989e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('A10G', 70e12),
)
CPU_PROBE_SIZE = 1024  # the measured matmul: [devices, n, n] @ [n, n], sharded over devices
CPU_PROBE_REPEATS = 3
CPU_PROBE_TRIALS = 3  # the best trial counts: other load on the machine only slows a trial down


def table_peak(device_kind: str) -> float | None:
    """The table's peak for a device kind, or None when it is not listed."""
    for needle, flops in PEAK_FLOPS_BY_KIND:
        if needle in device_kind:
            return flops
    return None


@functools.cache
def measured_cpu_peak() -> float:
    """FLOP/s per device of a float32 matmul running on all of this process's CPU devices at once."""
    devices = jax.local_devices()
    device_count = len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ('devices',))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices'))
    n = CPU_PROBE_SIZE
    a = jax.device_put(jnp.ones((device_count, n, n), jnp.float32), spec)
    b = jnp.ones((n, n), jnp.float32) / n
    matmul = jax.jit(lambda x: jnp.einsum('dij,jk->dik', x, b), out_shardings=spec)
    matmul(a).block_until_ready()  # compile
    best = float('inf')
    for _ in range(CPU_PROBE_TRIALS):
        start = time.perf_counter()
        for _ in range(CPU_PROBE_REPEATS):
            a = matmul(a)
        a.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * CPU_PROBE_REPEATS / best  # per device: each does 2 n^3 per repeat


def peak_flops_per_device(configured: float = 0.0) -> float | None:
    """The peak per device: `configured` when > 0, else the table's, else measured on CPU, else None."""
    if configured > 0:
        return float(configured)
    device = jax.local_devices()[0]
    peak = table_peak(device.device_kind)
    if peak is None and device.platform == 'cpu':
        peak = measured_cpu_peak()
    return peak


def plain_config(config):
    """`config` with the options that change how the step runs but not what it computes turned off."""
    plain = config.copy_and_resolve_references()
    with plain.unlocked():
        plain.micro_batches = 1
        plain.model.scan = False
        plain.model.remat = 'none'
        plain.model.vision.remat = ''
        plain.model.text.remat = ''
    return plain


def model_flops_per_step(config, derived=None) -> float | None:
    """FLOPs of one global train step of `config`'s model, from XLA's cost analysis of the plain step.
    `derived`: the run's derived values (checks.check_config), when at hand."""
    from vlp_jax import parallel
    from vlp_jax import setup as setup_lib
    from vlp_jax.data import batch as batch_spec

    run_setup = setup_lib.build(plain_config(config), derived=derived)
    step = run_setup.train_step()
    mesh = run_setup.mesh
    host = batch_spec.example_batch(
        1, int(config.model.image_size), int(config.model.max_text_len), keys=step.batch_keys
    )
    batch = {
        key: jax.ShapeDtypeStruct(
            (int(config.batch_size), *value.shape[1:]), value.dtype, sharding=parallel.batch_sharding(mesh, value.ndim)
        )
        for key, value in host.items()
    }
    frozen = {role: spec.abstract_params for role, spec in run_setup.frozen.items()}
    analysis = step.lower(run_setup.abstract_state, batch, frozen).cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    flops = float((analysis or {}).get('flops', 0.0))
    return flops if flops > 0 else None


def utilisation(
    flops_per_step: float | None, steps_per_sec: float, peak_per_device: float | None, devices: int, batch_size: int
) -> dict[str, float]:
    """{'train/flops_per_example', 'train/mfu'} as far as the FLOPs and the peak are known."""
    if not flops_per_step:
        return {}
    figures = {'train/flops_per_example': flops_per_step / batch_size}
    if peak_per_device and steps_per_sec > 0:
        figures['train/mfu'] = flops_per_step * steps_per_sec / (peak_per_device * devices)
    return figures
