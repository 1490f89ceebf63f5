"""Prints GRIT's grouping time per queue fill and its share of epoch time (asserts nothing).

    python benchmarks/grit_grouping.py [--queue-size 48000] [--search-space 1920] [--dim 256]
                                       [--fills 3] [--step-ms 250] [--batch-size 128]

Paper sizes by default, random unit-norm embeddings. A queue fill spans
queue_size / batch_size train steps, so the grouping's share of the epoch is
grouping_time / (steps_per_fill * step_time); the issue's target is <= 2%.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BYTES_PER_FLOAT = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--queue-size', type=int, default=48_000)
    parser.add_argument('--search-space', type=int, default=1_920)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--fills', type=int, default=3, help='timed fills after the compiling one')
    parser.add_argument('--step-ms', type=float, default=250.0, help='assumed train step time')
    parser.add_argument('--batch-size', type=int, default=128, help='global batch size')
    args = parser.parse_args()

    import jax
    import numpy as np

    from vlp_jax.sampling import grit

    error = grit.validate_grit(args.queue_size, args.search_space, args.batch_size)
    if error:
        sys.exit(error)
    rng = np.random.default_rng(0)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    images = unit(rng.normal(size=(args.queue_size, args.dim)))
    texts = unit(rng.normal(size=(args.queue_size, args.dim)))
    indices = np.arange(args.queue_size, dtype=np.int64)

    def fill(number: int) -> float:
        queue_images, queue_texts = jax.device_put(images), jax.device_put(texts)
        jax.block_until_ready((queue_images, queue_texts))
        start = time.perf_counter()
        positions = np.asarray(
            grit._group_positions(queue_images, queue_texts, args.search_space, jax.random.key(number))
        )
        grouped = indices[positions]
        elapsed = time.perf_counter() - start
        assert len(np.unique(grouped)) == args.queue_size
        return elapsed

    first = fill(0)
    times = [fill(number) for number in range(1, args.fills + 1)]
    per_fill = float(np.median(times))
    spaces = args.queue_size // args.search_space
    steps_per_fill = args.queue_size / args.batch_size
    fill_time = steps_per_fill * args.step_ms / 1e3
    sim_bytes = spaces * args.search_space**2 * BYTES_PER_FLOAT
    print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})')
    print(
        f'queue {args.queue_size}, search space {args.search_space} ({spaces} spaces), dim {args.dim}; '
        f'similarity matrices {sim_bytes / 2**20:.0f} MiB'
    )
    print(f'first fill (compile + run): {first * 1e3:.0f} ms')
    print(
        f'grouping per fill: median {per_fill * 1e3:.0f} ms over {len(times)} fills '
        f'({", ".join(f"{t * 1e3:.0f}" for t in times)} ms)'
    )
    print(
        f'a fill spans {steps_per_fill:g} steps x {args.step_ms:g} ms = {fill_time:.1f} s of training; '
        f'grouping = {100 * per_fill / fill_time:.2f}% of epoch time (target <= 2%)'
    )


if __name__ == '__main__':
    main()
