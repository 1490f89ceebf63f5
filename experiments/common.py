"""What the experiment scripts share: run the training CLI, summarise metrics.jsonl, write a table and a plot."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_KEYS = {
    'i2t R@1': 'eval/retrieval/i2t_r1',
    't2i R@1': 'eval/retrieval/t2i_r1',
    'i2t sem R@1': 'eval/retrieval/i2t_semantic_r1',
    't2i sem R@1': 'eval/retrieval/t2i_semantic_r1',
}
LOG_EVERY = 25


def train(config: str, workdir: str, steps: int, seed: int, extra: Sequence[str] = ()) -> list[dict]:
    """Runs (or resumes, or re-evaluates a finished) training and returns its metrics.jsonl records."""
    command = [
        sys.executable,
        '-m',
        'vlp_jax.train',
        '--config',
        config,
        '--workdir',
        workdir,
        f'--config.total_steps={steps}',
        f'--config.seed={seed}',
        f'--config.log_every={LOG_EVERY}',
        f'--config.eval_every={steps}',
        f'--config.checkpoint_every={steps}',
        *extra,
    ]
    started = time.monotonic()
    print(f'  {" ".join(command[3:])}', flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f'  done in {time.monotonic() - started:.0f} s', flush=True)
    with open(os.path.join(workdir, 'metrics.jsonl')) as handle:
        return [json.loads(line) for line in handle]


def finished_records(workdir: str, steps: int) -> list[dict] | None:
    """The metrics.jsonl records of a run that reached `steps` and evaluated there (None if it did not)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        records = [json.loads(line) for line in handle]
    if not records or records[-1].get('step') != steps or not any(k.startswith('eval/') for k in records[-1]):
        return None
    return records


def run_minutes(workdir: str) -> float:
    """Wall minutes of a run: its config.json written at the start, metrics.jsonl last at its final eval."""
    paths = [os.path.join(workdir, name) for name in ('config.json', 'metrics.jsonl')]
    return (os.path.getmtime(paths[1]) - os.path.getmtime(paths[0])) / 60


def mean_of(records: list[dict], key: str, keep: Callable[[dict], bool] = lambda r: True) -> float:
    """Mean of a logged value over the records that have a finite one (NaN if none)."""
    values = [r[key] for r in records if keep(r) and r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float('nan')


def final_eval(records: list[dict]) -> dict[str, float]:
    return {label: records[-1][key] for label, key in EVAL_KEYS.items()}


def step_milliseconds(records: list[dict]) -> float:
    rates = [r['train/steps_per_sec'] for r in records if 'train/steps_per_sec' in r][1:]  # first window compiles
    return 1000.0 / float(np.mean(rates)) if rates else float('nan')


def _cell(values: list[float], digits: int) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return '–'
    if len(finite) == 1:
        return f'{finite[0]:.{digits}f}'
    return f'{np.mean(finite):.{digits}f} ± {np.std(finite, ddof=1):.{digits}f}'


def write_table(results: dict[str, list[dict]], path: str, header: str) -> str:
    """Markdown: one row per method, mean ± std over seeds of every summarised column."""
    columns = list(next(iter(results.values()))[0])
    lines = [header, '', '| method | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
    for method, runs in results.items():
        cells = [_cell([run[c] for run in runs], 1 if c.endswith('ms') else 3) for c in columns]
        lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    text = '\n'.join(lines) + '\n'
    with open(path, 'w') as handle:
        handle.write(text)
    return text


def write_plot(results: dict[str, list[dict]], path: str, title: str, labels: Sequence[str] = tuple(EVAL_KEYS)) -> None:
    """Grouped bars (mean ± std over seeds) of `labels` per method."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(results)
    for offset, (method, runs) in enumerate(results.items()):
        means = [np.mean([run[label] for run in runs]) for label in labels]
        stds = [np.std([run[label] for run in runs], ddof=1) if len(runs) > 1 else 0.0 for label in labels]
        ax.bar(np.arange(len(labels)) + offset * width, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_ylabel('zero-shot recall@1 (test split)')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_json(results: dict, path: str) -> None:
    with open(path, 'w') as handle:
        json.dump(results, handle, indent=1)


def parse_with_overrides(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """parse_args, plus every `--config.KEY=VALUE` on the command line appended to `args.extra`.

    argparse reads a value that starts with '--' as an option, so `--extra --config.batch_size=16` would be
    refused; the overrides are collected here instead, wherever they stand.
    """
    args, unknown = parser.parse_known_args()
    stray = [arg for arg in unknown if not arg.startswith('--config.')]
    if stray:
        parser.error(f'unrecognized arguments: {" ".join(stray)} (config overrides are --config.KEY=VALUE)')
    args.extra = [*args.extra, *unknown]
    return args
