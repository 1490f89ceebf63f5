"""benchmarks/step_ab.py's arithmetic (no step is compiled): per-round ratios cancel a load shared by the
variants of a round, and the variant specs parse into overrides, the guard and module switches."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location(
    'step_ab', pathlib.Path(__file__).parent.parent / 'benchmarks' / 'step_ab.py'
)
step_ab = sys.modules['step_ab'] = importlib.util.module_from_spec(SPEC)  # dataclasses look it up
SPEC.loader.exec_module(step_ab)


def test_paired_ratios_cancel_a_load_shared_within_each_round():
    rng = np.random.default_rng(0)
    load = rng.uniform(0.5, 2.0, size=20)  # each round's slowdown, shared by its variants
    own = rng.normal(1.0, 0.01, size=20)  # variant 2's per-round noise
    throughput = np.stack([100 / load, 110 / load, 90 * own / load], axis=1)
    base, faster, noisy = step_ab.paired(throughput, rng)
    assert base['ratio'] == 1.0 and base['ci95'] == [1.0, 1.0]
    # paired per round, the shared load cancels: every round's ratio is 1.1, so the IQR and the interval are too
    assert faster['ratio'] == 1.1 and faster['iqr'] == [1.1, 1.1] and faster['ci95'] == [1.1, 1.1]
    assert faster['examples_per_s'] == round(float(np.median(110 / load)), 2)
    assert noisy['ratio'] == round(float(np.median(0.9 * own)), 4)
    assert noisy['iqr'] == [round(float(q), 4) for q in np.percentile(0.9 * own, [25, 75])]
    assert noisy['ci95'][0] <= noisy['ratio'] <= noisy['ci95'][1]


def test_summarise_pairs_the_wall_and_cpu_clocks_on_their_own():
    wall = np.array([[1.0, 0.5], [2.0, 1.0], [4.0, 2.0]])  # variant 1 twice as fast by the wall clock
    cpu = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # and the same work
    base, other = step_ab.summarise(['a', 'b'], wall, cpu, examples=8)
    assert (base['variant'], other['variant']) == ('a', 'b')
    assert other['wall']['ratio'] == 2.0 and other['cpu']['ratio'] == 1.0
    assert base['wall']['examples_per_s'] == 4.0 and other['cpu']['examples_per_s'] == 8.0


def test_a_variant_spec_parses_overrides_guard_and_module_switches():
    variant = step_ab.parse_variant(
        "fast=--config.batch_size=64 --guard=select \"--config.mesh.rules=(('batch','data'),)\" --set=a.b.C=True"
    )
    assert variant.name == 'fast' and variant.guard == 'select'
    assert variant.overrides == ['--config.batch_size=64', "--config.mesh.rules=(('batch','data'),)"]
    assert variant.sets == [('a.b', 'C', True)]
    assert step_ab.parse_variant('base=') == step_ab.Variant('base', [])
    for bad in ('noname', '=--guard=off', 'x=--lr=1'):
        with pytest.raises(SystemExit):
            step_ab.parse_variant(bad)
