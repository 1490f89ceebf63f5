"""Prints step time, FLOPs and MFU of the train step, one JSON object per line (asserts nothing).

    python benchmarks/step_mfu.py --case tiny          # configs/shapes_tiny.py as it is
    python benchmarks/step_mfu.py --case vitb_bert     # ViT-B/16 (224 px) + BERT-base dual encoder, bf16
    python benchmarks/step_mfu.py --case accumulation  # tiny at micro_batches 1, 2, 4, 8: time and memory
    python benchmarks/step_mfu.py --case scan_compile  # compile seconds of vitb_bert with and without model.scan
    ... [--batch N] [--steps N] [--config.key=value ...]

Keys: case, device, devices, batch, dtype, micro_batches, remat, scan, compile_s, step_ms,
examples_per_sec, flops_per_example, mfu, peak_flops_per_device, temp_mib_per_device (the
compiled step's temporary buffers, from XLA's memory analysis). The FLOPs are the model FLOPs
train/mfu uses (vlp_jax/mfu.py: the plain step's cost analysis). On CPU give vitb_bert a small --batch: 256 is a
GPU/TPU figure.
"""

from __future__ import annotations

import argparse
import json
import time

from common import fixed_batch, load_config

BIG = (
    '--config.model.image_size=224',
    '--config.model.vision.variant=B',
    '--config.model.vision.patch_size=16',
    '--config.model.text.variant=base',
    '--config.model.embed_dim=512',
    '--config.model.dtype=bfloat16',
)
CASES = {
    'tiny': [()],
    'vitb_bert': [BIG],
    'accumulation': [(f'--config.micro_batches={m}',) for m in (1, 2, 4, 8)],
    'scan_compile': [BIG, (*BIG, '--config.model.scan=True')],
}


def measure(case: str, overrides, batch: int | None, steps: int, run_steps: bool) -> dict:
    import jax

    from vlp_jax import mfu
    from vlp_jax import setup as setup_lib

    size = () if batch is None else (f'--config.batch_size={batch}',)
    config = load_config('configs/shapes_tiny.py', [*overrides, *size])
    run_setup = setup_lib.build(config)
    state = run_setup.init_state()
    step = run_setup.train_step()
    device_batch = fixed_batch(config, run_setup.mesh)
    start = time.perf_counter()
    state, metrics, _ = step(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start  # the first call compiles (ahead of time) and runs once
    memory = step.executable().memory_analysis()
    peak = mfu.peak_flops_per_device(float(config.peak_flops_per_device))
    devices = run_setup.mesh.devices.size
    record = {
        'case': case,
        'device': jax.devices()[0].device_kind,
        'devices': devices,
        'batch': config.batch_size,
        'dtype': config.model.dtype,
        'micro_batches': config.micro_batches,
        'remat': config.model.remat,
        'scan': config.model.scan,
        'compile_s': round(compile_s, 2),
        'temp_mib_per_device': round(memory.temp_size_in_bytes / 2**20, 1) if memory else None,
        'peak_flops_per_device': peak,
    }
    if run_steps:
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics, _ = step(state, device_batch)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / steps
        flops = mfu.model_flops_per_step(config)
        figures = mfu.utilisation(flops, 1 / seconds, peak, devices, config.batch_size)
        record.update(step_ms=round(1000 * seconds, 1), examples_per_sec=round(config.batch_size / seconds, 1))
        record.update({key.split('/')[1]: value for key, value in figures.items()})
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--case', choices=sorted(CASES), default='tiny')
    parser.add_argument('--batch', type=int, default=None, help="default: the config's (vitb_bert: 256)")
    parser.add_argument('--steps', type=int, default=10)
    args, rest = parser.parse_known_args()
    batch = args.batch if args.batch is not None else (256 if args.case == 'vitb_bert' else None)
    for overrides in CASES[args.case]:
        record = measure(args.case, (*overrides, *rest), batch, args.steps, run_steps=args.case != 'scan_compile')
        print(json.dumps(record), flush=True)


if __name__ == '__main__':
    main()
