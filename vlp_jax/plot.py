"""`python -m vlp_jax.plot WORKDIR [WORKDIR ...] --out FILE.png`: a picture of one or more runs.

Four panels against the step, from each WORKDIR/metrics.jsonl: the training loss, the learning rate,
the evaluation metrics (the R@1 and top-1 figures the console prints; every eval metric with --all_eval)
and the throughput (examples/s). One colour per run, labelled with the run's name (the workdir's folder
name, or --names). Needs only matplotlib: no TensorFlow, no JAX.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

METRICS_FILE = 'metrics.jsonl'  # as metrics.py writes it (not imported: this tool needs no JAX)
PANELS = (
    ('train/loss', 'training loss'),
    ('train/lr', 'learning rate'),
    ('eval', 'evaluation'),
    ('train/examples_per_sec', 'examples / s'),
)
HEADLINE = ('_r1', 'top1')  # the eval metrics shown by default: those the console's eval line prints
STYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'v', 'D', 'x')
EXIT_USER_ERROR = 2


class PlotError(Exception):
    """A workdir that cannot be plotted; the message is one sentence naming it and what to do."""


def read_run(workdir: str) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl in order (a line cut short by a kill is skipped)."""
    if not os.path.isdir(workdir):
        raise PlotError(f'workdir {workdir!r} does not exist; pass the --workdir of a vlp_jax.train run.')
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        raise PlotError(
            f'{workdir!r} holds no {METRICS_FILE}: it is not the --workdir of a vlp_jax.train run, or the run '
            'has not logged a step yet.'
        )
    records = []
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get('step'), (int, float)):
                records.append(record)
    if not records:
        raise PlotError(f'{path} holds no records yet; plot the run once it has logged a step.')
    return records


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, finite values only."""
    points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def eval_keys(runs: dict[str, list[dict]], every: bool) -> list[str]:
    """The eval metrics to draw: the headline ones (R@1, top-1), or all of them."""
    keys = sorted({k for records in runs.values() for r in records for k in r if k.startswith('eval/')})
    headline = [k for k in keys if k.endswith(HEADLINE)]
    return keys if every or not headline else headline


def run_names(workdirs: Sequence[str]) -> list[str]:
    """Each workdir's folder name; the whole path where two share a name."""
    names = [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
    return [w if names.count(n) > 1 else n for n, w in zip(names, workdirs)]


def plot_runs(workdirs: Sequence[str], out: str, names: Sequence[str] | None = None, every_eval: bool = False) -> str:
    """Draws the runs into OUT (a .png, .pdf or .svg); returns a one-line summary. PlotError for a bad workdir."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(names) if names else run_names(workdirs)
    if len(names) != len(workdirs):
        raise PlotError(f'--names gives {len(names)} names for {len(workdirs)} workdirs; give one name per workdir.')
    runs = {name: read_run(workdir) for name, workdir in zip(names, workdirs)}
    metrics = eval_keys(runs, every_eval)
    figure, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for (key, title), axis in zip(PANELS, axes.flat):
        axis.set_title(title)
        axis.grid(alpha=0.3)
        for number, (name, records) in enumerate(runs.items()):
            colour = colours[number % len(colours)]
            if key != 'eval':
                steps, values = series(records, key)
                if steps:
                    axis.plot(steps, values, color=colour, label=name)
                continue
            for index, metric in enumerate(metrics):
                steps, values = series(records, metric)
                if steps:
                    label = f'{name}: {metric[len("eval/") :]}'
                    style, marker = STYLES[index % len(STYLES)], MARKERS[index % len(MARKERS)]
                    axis.plot(steps, values, style, color=colour, marker=marker, ms=4, label=label)
        if axis.lines:
            axis.legend(fontsize='x-small', ncol=2 if len(axis.lines) > 6 else 1)
        else:
            axis.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=axis.transAxes, color='grey')
    for axis in axes[1]:
        axis.set_xlabel('step')
    figure.suptitle(', '.join(runs))
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    steps = {name: records[-1]['step'] for name, records in runs.items()}
    return f'wrote {out}: ' + ', '.join(f'{name} (to step {step})' for name, step in steps.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m vlp_jax.plot', description=__doc__.split('\n')[0])
    parser.add_argument('workdirs', nargs='+', metavar='WORKDIR', help='the --workdir of each run to draw')
    parser.add_argument('--out', required=True, help='the picture to write, e.g. runs.png (.pdf and .svg work too)')
    parser.add_argument('--names', default=None, help="comma-separated run names (default: the workdirs' names)")
    parser.add_argument('--all_eval', action='store_true', help='draw every eval metric, not only R@1 and top-1')
    args = parser.parse_args(argv)
    names = args.names.split(',') if args.names else None
    try:
        print(plot_runs(args.workdirs, args.out, names, args.all_eval), flush=True)
    except PlotError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0


if __name__ == '__main__':
    sys.exit(main())
