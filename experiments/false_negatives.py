"""InfoNCE vs smoothing vs SRCL vs COSMO vs SRCL+COSMO vs COSMO in MAFA's setting, noisy shapes, several seeds.

    .venv/bin/python experiments/false_negatives.py [--steps 300] [--seeds 0 1 2] [--out docs/results]

Stage 1 trains the clean reference model once (configs/shapes_reference.py); stage 2
trains each method on the same noisy data, steps and seeds. The train split is cut to
--train-size pairs (default 12,800: 100 steps per epoch at batch 128), so a 300-step run
has three epochs and MAFA's smoothing and GRIT's grouped batches start at step 100.
'smoothing' is COSMO without conversion (same eps, same start): it separates COSMO's
gain from plain label smoothing. 'COSMO (MAFA)' is COSMO in MAFA's setting: GRIT
batches, key-side stop-gradient ITC, no consistency term, smoothing from the first
grouped epoch. It writes a markdown table (mean ± std over seeds) and a PNG plot to
--out, plus the raw per-run numbers as JSON. Runs already finished in --workdir are
reused, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import (
    final_eval,
    mean_of,
    parse_with_overrides,
    save_json,
    step_milliseconds,
    train,
    write_plot,
    write_table,
)

MAFA_SETTING = (
    '--config.sampling.name=grit',
    '--config.loss.stop_grad_keys=true',
    '--config.loss.consistency_weight=0.0',
)
METHODS = {  # name -> (config file, overrides); all share shapes_noisy's data and model
    'InfoNCE': ('configs/shapes_noisy.py', ()),
    'smoothing': ('configs/shapes_noisy.py', ('--config.loss.regulators=smoothing',)),
    'SRCL': ('configs/shapes_srcl.py', ()),
    'COSMO': ('configs/shapes_cosmo.py', ()),
    'SRCL+COSMO': ('configs/shapes_srcl_cosmo.py', ()),
    'COSMO (MAFA)': ('configs/shapes_cosmo.py', MAFA_SETTING),
}
DIAGNOSTIC_KEYS = {  # averaged over the run's log steps
    'FN fraction': 'train/false_negative_fraction',
    'w(FN)': 'train/srcl/weight_false_negative',
    'w(TN)': 'train/srcl/weight_true_negative',
}


def summarise(records: list[dict]) -> dict[str, float]:
    out = final_eval(records)
    out.update({label: mean_of(records, key) for label, key in DIAGNOSTIC_KEYS.items()})
    pooled = {
        key: sum(r.get(f'train/cosmo/{key}', 0.0) for r in records)
        for key in ('num_true_positive', 'num_converted', 'num_hardest_false_negative')
    }
    has_cosmo = any('train/cosmo/num_converted' in r for r in records)  # pooled over steps: no empty-set NaNs
    out['conv. precision'] = (
        pooled['num_true_positive'] / max(pooled['num_converted'], 1.0) if has_cosmo else float('nan')
    )
    out['conv. recall'] = (
        pooled['num_true_positive'] / max(pooled['num_hardest_false_negative'], 1.0) if has_cosmo else float('nan')
    )
    out['step ms'] = step_milliseconds(records)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--reference-steps', type=int, default=600)
    parser.add_argument(
        '--train-size', type=int, default=12_800, help='train pairs of stage 2 (data.shapes.train_size)'
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--workdir', default='workdirs/experiments/false_negatives')
    parser.add_argument('--out', default='docs/results')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--extra', nargs='*', default=[], help='more --config.KEY=VALUE overrides for every method')
    parser.add_argument('--name', default='false_negatives', help='stem of the output files and run folders')
    args = parse_with_overrides(parser)
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()

    reference = os.path.join(args.workdir, 'reference')
    print('stage 1: reference model (clean regime)', flush=True)
    train('configs/shapes_reference.py', reference, args.reference_steps, 0)
    results: dict[str, list[dict]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            config, overrides = METHODS[method]
            print(f'stage 2: {method}, seed {seed}', flush=True)
            extra = [f'--config.data.shapes.train_size={args.train_size}', *overrides]
            if config != 'configs/shapes_noisy.py':
                extra += [
                    f'--config.loss.srcl.reference_checkpoint={reference}',
                    f'--config.loss.cosmo.reference_checkpoint={reference}',
                ]
            suffix = '' if args.name == 'false_negatives' else f'_{args.name}'
            slug = method.replace('+', '_').replace(' (', '_').replace(')', '')
            workdir = os.path.join(args.workdir, f'{slug}_seed{seed}{suffix}')
            results[method].append(summarise(train(config, workdir, args.steps, seed, [*extra, *args.extra])))
    minutes = (time.monotonic() - started) / 60
    header = (
        f'# False-negative-aware objectives on the noisy shapes regime\n\n'
        f'`experiments/false_negatives.py {" ".join(sys.argv[1:])}`: '
        f'{len(args.seeds)} seeds, {args.steps} steps each at batch 128 on {args.train_size:,} noisy pairs '
        f'({args.train_size // 128} steps per epoch), reference trained '
        f'{args.reference_steps} steps on the clean regime; {minutes:.0f} min in all on this machine. '
        f"R@1 on the 1,000-image test split (chance 0.001); diagnostics are means over the run's log "
        f'steps, conversion precision/recall pooled over them (ground truth from the generator).'
    )
    print(write_table(results, os.path.join(args.out, f'{args.name}.md'), header))
    write_plot(
        results,
        os.path.join(args.out, f'{args.name}.png'),
        'False-negative-aware objectives, noisy captioned shapes (mean ± std over seeds)',
    )
    save_json(results, os.path.join(args.out, f'{args.name}.json'))


if __name__ == '__main__':
    main()
