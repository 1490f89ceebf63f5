"""Paired in-process A/B of train-step variants: can see a 2% difference on a loaded machine (asserts nothing).

    python benchmarks/step_ab.py --devices 8 --rounds 30 \\
        --variant 'select=--guard=select' --variant 'cond=' --variant 'off=--guard=off'

Separate processes timed one after the other differ by 5-10% on a shared 2-core machine, because the
load changes between them. Here every variant is built and compiled in ONE process, each with its own
state, on the same device batch; then, round after round, each variant runs `--steps` steps in turn (the
order rotates every round), and each round gives one ratio per variant against the first variant, the
baseline, measured within seconds of each other. Load that changes slowly cancels in the ratio. The
figure is the median of the per-round ratios with its interquartile range and a bootstrap 95% interval
of the median; a change is real when that interval excludes 1.0.

A variant is `NAME=ARGS`, ARGS space-separated:
  --config.key=value   a config override of this variant alone (after the common ones);
  --guard=MODE         the step's non-finite guard (vlp_jax.steps.GUARDS): cond (what runs use), cond_params,
                       select (the earlier guard), off;
  --set=module.attr=V  sets a module attribute (a Python literal) while the variant is traced and compiled,
                       for code switches that are not config keys.
Everything else on the command line that starts with --config. applies to every variant. `--size bench`
(the default) is the issue-20 benchmark size (BENCH_SIZE: a SigLIP two-tower step, width 192, depth 4,
batch 128, float32), `--size config` the config file as it is (e.g. `--config configs/albef.py:tiny`).
`--devices N` runs on N fake CPU devices (XLA_FLAGS, set before jax is imported).

Each variant runs the same steps on the same batch from the same initial state, so with numerically
equal variants the losses agree: the output gives each variant's largest loss difference from the
baseline (0 = bit-identical) and its skipped steps.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# The issue-20 benchmark size: big_vision's SigLIP two-tower step at equal size (embed_dim stays 64).
BENCH_SIZE = (
    *(
        f'--config.model.{tower}.{key}={value}'
        for tower in ('vision', 'text')
        for key, value in (('width', 192), ('depth', 4), ('num_heads', 3), ('mlp_dim', 768))
    ),
    '--config.model.image_size=64',
    '--config.model.vision.patch_size=8',
    '--config.model.max_text_len=16',
    '--config.model.text.vocab_size=30522',
    '--config.batch_size=128',
    '--config.loss.form=sigmoid',
    '--config.model.dtype=float32',
)
BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass
class Variant:
    name: str
    overrides: list[str]
    guard: str = 'cond'
    sets: list[tuple[str, str, Any]] = dataclasses.field(default_factory=list)


def parse_variant(spec: str) -> Variant:
    """'NAME=ARGS' -> Variant (see the module docstring)."""
    name, sep, args = spec.partition('=')
    if not sep or not name:
        raise SystemExit(f'--variant {spec!r}: expected NAME=ARGS')
    variant = Variant(name, [])
    for arg in shlex.split(args):
        if arg.startswith('--config.'):
            variant.overrides.append(arg)
        elif arg.startswith('--guard='):
            variant.guard = arg.split('=', 1)[1]
        elif arg.startswith('--set='):
            target, value = arg[len('--set=') :].split('=', 1)
            module, attr = target.rsplit('.', 1)
            variant.sets.append((module, attr, ast.literal_eval(value)))
        else:
            raise SystemExit(f'--variant {spec!r}: unknown argument {arg!r}')
    return variant


@contextlib.contextmanager
def module_sets(sets: Sequence[tuple[str, str, Any]]) -> Iterator[None]:
    """The variant's module attributes set for the duration (tracing and compiling happen inside)."""
    saved = []
    for module_name, attr, value in sets:
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), f'{module_name} has no attribute {attr}'
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


@dataclasses.dataclass
class Built:
    """One variant, compiled, with its own state and the batch it runs on."""

    variant: Variant
    step: Any
    state: Any
    batch: Any
    frozen: Any
    batch_size: int
    compile_s: float = 0.0
    losses: list[float] = dataclasses.field(default_factory=list)
    skipped: int = 0

    def run(self, steps: int) -> None:
        import jax

        metrics = None
        for _ in range(steps):
            self.state, metrics, _ = self.step(self.state, self.batch, self.frozen)
        jax.block_until_ready((self.state, metrics))
        self._last = metrics

    def record(self) -> None:
        """The last step's loss and skip flag (outside the timed region)."""
        import jax

        from vlp_jax.steps import SKIPPED

        values = jax.device_get({k: self._last[k] for k in ('train/loss', SKIPPED)})
        self.losses.append(float(values['train/loss']))
        self.skipped += int(values[SKIPPED])


def build(variant: Variant, config_path: str, common: Sequence[str], warmup: int) -> Built:
    import jax
    from common import fixed_batch, load_config

    from vlp_jax import optim, steps
    from vlp_jax import setup as setup_lib
    from vlp_jax.config import OptimSettings, settings_of

    with module_sets(variant.sets):
        config = load_config(config_path, [*common, *variant.overrides])
        run_setup = setup_lib.build(config)
        step = steps.make_train_step(
            run_setup.objective,
            run_setup.optimizer,
            run_setup.schedule,
            run_setup.mesh,
            run_setup.rules,
            run_setup.shardings,
            frozen_shardings={role: spec.abstract_params for role, spec in run_setup.frozen.items()},
            lock=optim.stop_locked_gradients(settings_of(config, OptimSettings)),
            guard=variant.guard,
        )
        built = Built(
            variant,
            step,
            run_setup.init_state(),
            fixed_batch(config, run_setup.mesh),
            run_setup.load_frozen(),
            int(config.batch_size),
        )
        start = time.perf_counter()
        built.run(1)  # compiles (ahead of time, at the first call) inside the variant's module sets
        built.compile_s = time.perf_counter() - start
        built.record()
    built.run(max(warmup - 1, 0))
    if warmup > 1:
        built.record()
    jax.block_until_ready(built.state)
    return built


def bootstrap_median_interval(ratios: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of `ratios` (rounds resampled with replacement)."""
    samples = rng.choice(ratios, size=(BOOTSTRAP_SAMPLES, len(ratios)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def paired(throughput: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """throughput [rounds, variants] -> per variant: the median, and the per-round ratio to variant 0 (> 1 is
    faster) as its median, quartiles and bootstrap interval."""
    out = []
    for index in range(throughput.shape[1]):
        ratios = throughput[:, index] / throughput[:, 0]
        low, high = bootstrap_median_interval(ratios, rng)
        out.append(
            {
                'examples_per_s': round(float(np.median(throughput[:, index])), 2),
                'ratio': round(float(np.median(ratios)), 4),
                'iqr': [round(float(q), 4) for q in np.percentile(ratios, [25, 75])],
                'ci95': [round(low, 4), round(high, 4)],
            }
        )
    return out


def summarise(names: Sequence[str], wall: np.ndarray, cpu: np.ndarray, examples: int, seed: int = 0) -> list[dict]:
    """Wall and process-CPU seconds [rounds, variants] -> one record per variant, each clock paired on its own.

    Wall time is what a dedicated machine would see; CPU time (every thread of this process) is what
    the step costs, and other jobs' load moves it much less. A change that adds idle time (waiting
    between devices) shows in the wall ratio only."""
    rng = np.random.default_rng(seed)
    by_wall, by_cpu = paired(examples / wall, rng), paired(examples / cpu, rng)
    return [{'variant': name, 'wall': w, 'cpu': c} for name, w, c in zip(names, by_wall, by_cpu)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/shapes_tiny.py')
    parser.add_argument('--size', choices=('bench', 'config'), default='bench')
    parser.add_argument('--variant', action='append', default=[], help='NAME=ARGS; the first is the baseline')
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--steps', type=int, default=2, help='steps per variant per round')
    parser.add_argument('--warmup', type=int, default=2, help='steps per variant before the rounds')
    parser.add_argument('--devices', type=int, default=1, help='fake CPU devices')
    parser.add_argument('--json', action='store_true', help='one JSON line instead of the table')
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if not arg.startswith('--config.')]
    if unknown:
        parser.error(f'unknown arguments {unknown}')
    variants = [parse_variant(spec) for spec in args.variant] or [
        parse_variant('cond='),
        parse_variant('off=--guard=off'),
    ]
    if len({v.name for v in variants}) != len(variants):
        parser.error('variant names must differ')
    if args.devices > 1:
        flags = os.environ.get('XLA_FLAGS', '')
        os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={args.devices}'.strip()
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    import jax

    assert jax.device_count() == args.devices, (jax.device_count(), args.devices, 'jax was imported before')
    common = [*(BENCH_SIZE if args.size == 'bench' else ()), *rest]
    built = []
    for variant in variants:
        built.append(build(variant, args.config, common, args.warmup))
        print(f'{variant.name}: compiled in {built[-1].compile_s:.1f} s', file=sys.stderr, flush=True)
    assert len({b.batch_size for b in built}) == 1, 'the variants must share the batch size'
    wall, cpu = np.zeros((args.rounds, len(built))), np.zeros((args.rounds, len(built)))
    gc.collect()
    gc.disable()  # a collection inside one variant's turn would land on that variant alone
    try:
        for r in range(args.rounds):
            for k in range(len(built)):
                index = (r + k) % len(built)  # the order rotates: no variant always runs first
                start, start_cpu = time.perf_counter(), time.process_time()
                built[index].run(args.steps)
                wall[r, index] = time.perf_counter() - start
                cpu[r, index] = time.process_time() - start_cpu
                built[index].record()
            if (r + 1) % 5 == 0:
                print(f'round {r + 1}/{args.rounds}', file=sys.stderr, flush=True)
    finally:
        gc.enable()
    records = summarise([v.name for v in variants], wall, cpu, built[0].batch_size * args.steps)
    base = np.asarray(built[0].losses)
    for record, b in zip(records, built):
        record['compile_s'] = round(b.compile_s, 1)
        record['max_loss_diff'] = float(np.max(np.abs(np.asarray(b.losses) - base)))
        record['skipped'] = b.skipped
    header = {
        'device': jax.devices()[0].device_kind,
        'devices': args.devices,
        'config': args.config,
        'size': args.size,
        'batch': built[0].batch_size,
        'rounds': args.rounds,
        'steps_per_round': args.steps,
        'variants': {
            v.name: ' '.join([*v.overrides, f'--guard={v.guard}', *(f'--set={m}.{a}={x!r}' for m, a, x in v.sets)])
            for v in variants
        },
    }
    if args.json:
        print(json.dumps({**header, 'results': records}), flush=True)
        return
    print(json.dumps(header))
    print(
        f'{"":<16} {"wall clock":^45}   {"process CPU time":^45}\n'
        f'{"variant":<16} {"ex/s":>7} {"ratio":>6} {"IQR":>13} {"95% CI":>13}   {"ex/cpu-s":>7} {"ratio":>6} '
        f'{"IQR":>13} {"95% CI":>13}  {"compile s":>9} {"max |dloss|":>11} skipped'
    )
    span = lambda pair: f'{pair[0]:.3f}-{pair[1]:.3f}'
    for r in records:
        clocks = '   '.join(
            f'{c["examples_per_s"]:>7.1f} {c["ratio"]:>6.3f} {span(c["iqr"]):>13} {span(c["ci95"]):>13}'
            for c in (r['wall'], r['cpu'])
        )
        print(f'{r["variant"]:<16} {clocks}  {r["compile_s"]:>9.1f} {r["max_loss_diff"]:>11.2e} {r["skipped"]:>7}')


if __name__ == '__main__':
    main()
