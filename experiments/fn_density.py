"""Does handling false negatives help more when a batch holds more of them? Fashion-MNIST, paired seeds.

    .venv/bin/python experiments/fn_density.py [--steps 300] [--seeds 0 1 2 3 4] [--out docs/results]

Every method trains configs/fashion_mnist.py at each caption granularity ('class', 'group5',
'group2': 10%, 22%, 52% of a batch's pairs are false negatives by construction; the probe logs the
measured share), with the same seeds, so run s of every method sees the same data order and the same
initial weights: the comparison is paired by seed. SRCL and COSMO read a reference model trained first
with InfoNCE on the same captions (seed 1000, never one of the compared seeds); COSMO's threshold is that
reference's median cosine of matched training pairs (experiments/cosmo_threshold.py: no labels). It writes, per
granularity, each method's metrics and its paired difference from InfoNCE with a 95% t-interval
(docs/results/NAME.md), the gain-vs-density plot (NAME.png) and every run's figures (NAME.json).
Finished runs in --workdir are reused, so an interrupted sweep resumes; `--steps 2` is the smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from common import finished_records, mean_of, parse_with_overrides, run_minutes, save_json, train
from cosmo_threshold import calibrate

CONFIG = 'configs/fashion_mnist.py'
GRANULARITIES = ('class', 'group5', 'group2')
REFERENCE_SEED = 1000
GRIT = (
    '--config.sampling.name=grit',
    '--config.sampling.grit.queue_size=6400',
    '--config.sampling.grit.search_space=1280',
    '--config.loss.stop_grad_keys=true',
    '--config.loss.consistency_weight=0.2',
)
METHODS = {  # name -> overrides ({reference} is the granularity's reference run)
    'InfoNCE': (),
    'smoothing': ('--config.loss.regulators=smoothing',),
    'SRCL': ('--config.loss.regulators=srcl', '--config.loss.srcl.reference_checkpoint={reference}'),
    'COSMO': (
        '--config.loss.regulators=cosmo',
        '--config.loss.cosmo.reference_checkpoint={reference}',
        '--config.loss.cosmo.high={high}',
        '--config.loss.cosmo.low={low}',
    ),
    'GRIT': GRIT,
}
BASELINE = 'InfoNCE'
METRICS = {  # column -> metrics.jsonl key ({g}: the granularity)
    'zero-shot top-1': 'eval/zeroshot/{g}/top1',
    't2i class R@1': 'eval/retrieval/t2i_semantic_r1',
    'i2t class R@1': 'eval/retrieval/i2t_semantic_r1',
}
DIAGNOSTICS = {
    'FN fraction': 'train/false_negative_fraction',
    'w(FN)': 'train/srcl/weight_false_negative',
    'w(TN)': 'train/srcl/weight_true_negative',
}


def summarise(records: list[dict], granularity: str) -> dict[str, float]:
    final = records[-1]
    out = {label: float(final[key.format(g=granularity)]) for label, key in METRICS.items()}
    out.update({label: mean_of(records, key) for label, key in DIAGNOSTICS.items()})
    converted = sum(r.get('train/cosmo/num_converted', 0.0) for r in records)
    hits = sum(r.get('train/cosmo/num_true_positive', 0.0) for r in records)
    hardest = sum(r.get('train/cosmo/num_hardest_false_negative', 0.0) for r in records)
    has_cosmo = any('train/cosmo/num_converted' in r for r in records)
    out['conv. precision'] = hits / max(converted, 1.0) if has_cosmo else float('nan')
    out['conv. recall'] = hits / max(hardest, 1.0) if has_cosmo else float('nan')
    return out


def paired_interval(differences: list[float]) -> tuple[float, float]:
    """Mean of per-seed differences and the half-width of its 95% t-interval (nan with one seed)."""
    from scipy import stats

    values = np.asarray(differences, np.float64)
    if len(values) < 2:
        return float(values.mean()), float('nan')
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def _mean(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if np.isfinite(run[key])]
    return f'{np.mean(values):.2f}' if values else '–'


def table(results: dict, granularity: str) -> list[str]:
    runs = results[granularity]
    columns = list(METRICS)
    lines = [
        f"### Captions at granularity `{granularity}` (measured false-negative share of a batch's pairs: "
        f'{np.nanmean([r["FN fraction"] for r in runs[BASELINE]]):.3f})',
        '',
        '| method | '
        + ' | '.join(f'{c} | Δ vs {BASELINE} (95% CI)' for c in columns)
        + ' | w(FN) / w(TN) | conv. P / R |',
        '|---' * (2 * len(columns) + 3) + '|',
    ]
    for method, seeds in runs.items():
        cells = []
        for column in columns:
            values = [run[column] for run in seeds]
            cells.append(f'{np.mean(values):.3f}')
            if method == BASELINE:
                cells.append('–')
            else:
                mean, half = paired_interval([a[column] - b[column] for a, b in zip(seeds, runs[BASELINE])])
                cells.append(f'{mean:+.3f} ± {half:.3f}')
        weights = ' / '.join(_mean(seeds, key) for key in ('w(FN)', 'w(TN)'))
        conversion = ' / '.join(_mean(seeds, key) for key in ('conv. precision', 'conv. recall'))
        lines.append(f'| {method} | ' + ' | '.join(cells) + f' | {weights} | {conversion} |')
    return lines


def plot(results: dict, path: str, column: str) -> None:
    """Each method's paired gain over InfoNCE (95% CI) against the measured false-negative share."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    methods = [m for m in next(iter(results.values())) if m != BASELINE]
    for offset, method in enumerate(methods):
        xs, means, halves = [], [], []
        for granularity, runs in results.items():
            xs.append(np.nanmean([r['FN fraction'] for r in runs[BASELINE]]) + 0.006 * (offset - len(methods) / 2))
            mean, half = paired_interval([a[column] - b[column] for a, b in zip(runs[method], runs[BASELINE])])
            means.append(mean)
            halves.append(0.0 if np.isnan(half) else half)
        ax.errorbar(xs, means, yerr=halves, marker='o', capsize=3, label=method)
    ax.axhline(0.0, color='grey', linewidth=0.8)
    ax.set_xlabel("false-negative share of a batch's pairs (measured)")
    ax.set_ylabel(f'{column}: method - InfoNCE (paired, 95% CI)')
    ax.set_title('Fashion-MNIST: gain of false-negative handling vs false-negative density')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--granularities', nargs='+', default=list(GRANULARITIES), choices=GRANULARITIES)
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--workdir', default='workdirs/experiments/fn_density')
    parser.add_argument('--out', default='docs/results')
    parser.add_argument('--name', default='fn_density', help='stem of the output files')
    parser.add_argument('--extra', nargs='*', default=[], help='more --config.KEY=VALUE overrides for every run')
    parser.add_argument(
        '--collect',
        action='store_true',
        help='train nothing: tabulate the runs finished so far (a seed enters a granularity when all its methods did)',
    )
    args = parse_with_overrides(parser)
    methods = [BASELINE, *(m for m in args.methods if m != BASELINE)]
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    results: dict[str, dict[str, list[dict]]] = {}
    calibrations: dict[str, dict[str, float]] = {}
    seeds_used: dict[str, list[int]] = {}
    run_time = 0.0  # wall minutes of the tabulated runs, each from its own files
    for granularity in args.granularities:
        config = f'{CONFIG}:granularity={granularity}'
        reference = os.path.join(args.workdir, f'reference_{granularity}')
        if any('reference' in ' '.join(METHODS[m]) for m in methods) and not args.collect:
            print(f'{granularity}: reference (InfoNCE, seed {REFERENCE_SEED})', flush=True)
            train(config, reference, args.steps, REFERENCE_SEED, args.extra)
        threshold = {'high': 0.0, 'low': 0.0}
        if 'COSMO' in methods:
            calibration = calibrate(reference)
            calibrations[granularity] = calibration
            threshold = {'high': calibration['high'], 'low': min(0.5, calibration['high'])}
            print(f'  COSMO threshold: {json.dumps(calibration)}', flush=True)
        results[granularity] = {method: [] for method in methods}
        seeds_used[granularity] = []
        for seed in args.seeds:
            runs = {}
            for method in methods:
                workdir = os.path.join(args.workdir, f'{granularity}_{method}_seed{seed}')
                if args.collect:
                    runs[method] = finished_records(workdir, args.steps)
                    continue
                print(f'{granularity}: {method}, seed {seed}', flush=True)
                overrides = [o.format(reference=reference, **threshold) for o in METHODS[method]]
                runs[method] = train(config, workdir, args.steps, seed, [*overrides, *args.extra])
            if all(records is not None for records in runs.values()):
                seeds_used[granularity].append(seed)
                run_time += sum(run_minutes(os.path.join(args.workdir, f'{granularity}_{m}_seed{seed}')) for m in runs)
                for method, records in runs.items():
                    results[granularity][method].append(summarise(records, granularity))
        if not seeds_used[granularity]:
            sys.exit(f'no seed of {args.seeds} has every method finished at granularity {granularity!r}.')
    minutes = run_time if args.collect else (time.monotonic() - started) / 60
    header = [
        '# False-negative handling against false-negative density: Fashion-MNIST',
        '',
        f'`experiments/fn_density.py {" ".join(sys.argv[1:])}`: seeds paired across methods '
        f'({"; ".join(f"{g}: {s}" for g, s in seeds_used.items())}), '
        f'{args.steps} steps at batch 128 on 12,800 training images, {minutes:.0f} min of training runs in all '
        'on this machine. '
        'Metrics on 1,000 test images with held-out templates; Δ = mean over seeds of (method - InfoNCE) on '
        "the same seed, ± the half-width of its 95% t-interval. w(FN) / w(TN): SRCL's mean weight on true "
        "and on false negatives; conv. P / R: COSMO's conversion precision and recall (ground truth).",
        '',
    ]
    for granularity in args.granularities:
        header += [*table(results, granularity), '']
        if granularity in calibrations:
            c = calibrations[granularity]
            header += [
                f"COSMO's threshold (the reference's median matched-pair cosine): high = {c['high']:.3f}; on the "
                f"reference's own hardest negatives it would convert {c['converted_share']:.2f} of them with "
                f'precision {c["precision"]:.2f} and recall {c["recall"]:.2f} (false-negative share of the '
                f'hardest: {c["hardest_false_negative_share"]:.2f}).',
                '',
            ]
    text = '\n'.join(header)
    with open(os.path.join(args.out, f'{args.name}.md'), 'w') as handle:
        handle.write(text)
    print(text)
    plot(results, os.path.join(args.out, f'{args.name}.png'), 'zero-shot top-1')
    save_json(
        {'runs': results, 'seeds': seeds_used, 'cosmo_thresholds': calibrations},
        os.path.join(args.out, f'{args.name}.json'),
    )


if __name__ == '__main__':
    main()
