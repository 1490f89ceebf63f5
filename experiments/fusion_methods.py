"""ALBEF vs GRIT-VLP vs MAFA (cosine and ITM discriminators) vs SRCL on ALBEF: tiny fusion models, noisy shapes.

    .venv/bin/python experiments/fusion_methods.py [--steps 120] [--batch-size 32] [--reference-steps 480] \
        [--seeds 0 1 2] [--out docs/results]

Stage 1 trains ONE clean-regime tiny fusion reference (configs/shapes_albef_reference.py,
seed 0). Stage 2 trains each recipe's `:tiny` config on the same noisy data, steps, batch
and seeds; the reference serves all three methods that need a frozen model:

- 'ALBEF': configs/albef.py:tiny (momentum model, queue, sampled ITM negatives, MLM 15%);
- 'ALBEF (no momentum)': the same without the momentum model, its queue and distillation;
- 'GRIT-VLP': configs/grit_vlp.py:tiny (grouped batches, key-side stop-gradient ITC, the
  consistency term, hardest ITM negatives, MLM 50%);
- 'MAFA (cosine)': configs/mafa.py:tiny with loss.cosmo.discriminator=cosine: q is the
  reference's image-text cosine, so the thresholds are cosines; they are set to
  configs/shapes_cosmo.py's (and the false-negatives experiment's) high 0.8 / low 0.5;
- 'MAFA (ITM)': configs/mafa.py:tiny as it is: q is the reference's ITM match probability
  (high 0.8 / low 0.5, the paper's);
- 'SRCL (ALBEF)': configs/srcl_albef.py:tiny (ALBEF + SRCL weights from the reference's cosine).

Overrides shared by every method (--batch-size, --steps): batch_size; data.shapes.train_size =
steps / 3 * batch_size, so every run has 3 epochs and GRIT's grouped batches and MAFA's
smoothing start at epoch 1; optim.warmup_steps = steps / 6; GRIT's search space 10 batches and
queue 5 search spaces (the tiny configs' ratios at batch 128); log_every 5. The two
momentum recipes also get loss.momentum.queue_size = 10 batches (the tiny recipe's 1,280 at
batch 128). The reference gets the same batch and warmup and --reference-steps steps.

Summaries: R@1 on the noise-free test split, ITC ('eval/retrieval/...') and re-ranked by
ITM ('eval/retrieval_itm/...', the top eval.rerank_k = 16 of ITC), semantic and instance;
a 'chance' row gives random ranking's semantic R@1 on each seed's test split (from the
generator's truth). ITM and MLM accuracy are the train metrics averaged over the log steps
of the last epoch; conversion precision/recall are pooled (sum / sum) over all log steps.
Writes a markdown table (mean ± std over seeds) and a PNG plot to --out, the raw per-run
numbers as JSON to --workdir. Finished runs in --workdir are read back without relaunching
them (the total time is the sum of the run times recorded in --workdir/wall_seconds.json);
unfinished ones resume. The reading of the numbers is added to the markdown by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from common import REPO, mean_of, parse_with_overrides, save_json, step_milliseconds, train, write_table

COSINE_HIGH, COSINE_LOW = 0.8, 0.5  # configs/shapes_cosmo.py's thresholds, in cosine units
METHODS = {  # name -> (config spec with {steps} and {reference}, method-specific overrides)
    'ALBEF': ('configs/albef.py:tiny,steps={steps}', ('momentum',)),
    # The same recipe without its momentum model, queue and distillation: the reading's first suspect.
    'ALBEF (no momentum)': (
        'configs/albef.py:tiny,steps={steps}',
        ('--config.loss.momentum.enabled=False', '--config.loss.momentum.queue_size=0'),
    ),
    'GRIT-VLP': ('configs/grit_vlp.py:tiny,steps={steps}', ()),
    'MAFA (cosine)': (
        'configs/mafa.py:tiny,steps={steps},reference={reference}',
        (
            '--config.loss.cosmo.discriminator=cosine',
            f'--config.loss.cosmo.high={COSINE_HIGH}',
            f'--config.loss.cosmo.low={COSINE_LOW}',
        ),
    ),
    'MAFA (ITM)': (
        'configs/mafa.py:tiny,steps={steps},reference={reference}',
        ('--config.loss.cosmo.discriminator=itm',),
    ),
    'SRCL (ALBEF)': ('configs/srcl_albef.py:tiny,steps={steps},reference={reference}', ('momentum',)),
}
EVAL_COLUMNS = {  # label -> metrics.jsonl key of the final eval
    'i2t sem R@1': 'eval/retrieval/i2t_semantic_r1',
    't2i sem R@1': 'eval/retrieval/t2i_semantic_r1',
    'i2t sem R@1 ITM': 'eval/retrieval_itm/i2t_semantic_r1',
    't2i sem R@1 ITM': 'eval/retrieval_itm/t2i_semantic_r1',
    'i2t R@1': 'eval/retrieval/i2t_r1',
    't2i R@1': 'eval/retrieval/t2i_r1',
    'i2t R@1 ITM': 'eval/retrieval_itm/i2t_r1',
    't2i R@1 ITM': 'eval/retrieval_itm/t2i_r1',
}
PLOT_LABELS = ('i2t sem R@1', 't2i sem R@1', 'i2t sem R@1 ITM', 't2i sem R@1 ITM')
LOG_EVERY = 5
WALL_FILE = 'wall_seconds.json'
EPOCHS = 3


def shared_overrides(batch_size: int, steps: int) -> list[str]:
    search_space = 10 * batch_size
    return [
        f'--config.batch_size={batch_size}',
        f'--config.data.shapes.train_size={steps // EPOCHS * batch_size}',
        f'--config.optim.warmup_steps={max(steps // 6, 1)}',
        f'--config.sampling.grit.search_space={search_space}',
        f'--config.sampling.grit.queue_size={5 * search_space}',
        f'--config.log_every={LOG_EVERY}',
    ]


def method_overrides(method: str, batch_size: int) -> list[str]:
    """The method's own overrides; 'momentum' stands for the momentum recipes' queue of 10 batches."""
    return [
        f'--config.loss.momentum.queue_size={10 * batch_size}' if item == 'momentum' else item
        for item in METHODS[method][1]
    ]


def finished(workdir: str, steps: int, batch_size: int, seed: int) -> list[dict] | None:
    """The records of a run already trained and evaluated to `steps` with this batch and seed, else None."""
    path = os.path.join(REPO, workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return None
    with open(os.path.join(REPO, workdir, 'config.json')) as handle:
        config = json.load(handle)
    asked, held = (steps, batch_size, seed), (config['total_steps'], config['batch_size'], config['seed'])
    if held != asked:
        sys.exit(f'{workdir} holds a run with (steps, batch, seed) {held}, not {asked}; move it aside.')
    with open(path) as handle:
        records = [json.loads(line) for line in handle]
    done = records and records[-1]['step'] == steps and 'eval/retrieval/t2i_r1' in records[-1]
    return records if done else None


def run(config: str, workdir: str, steps: int, batch_size: int, seed: int, extra: list[str]) -> list[dict]:
    """Trains (or resumes) a run unless it is finished; its wall time goes to wall_seconds.json beside it."""
    records = finished(workdir, steps, batch_size, seed)
    if records is not None:
        print(f'  finished already: {workdir}', flush=True)
        return records
    started = time.monotonic()
    records = train(config, workdir, steps, seed, extra)
    walls = wall_seconds(os.path.dirname(workdir))
    walls[os.path.basename(workdir)] = round(time.monotonic() - started)
    with open(os.path.join(REPO, os.path.dirname(workdir), WALL_FILE), 'w') as handle:
        json.dump(walls, handle, indent=1)
    return records


def wall_seconds(sweep: str) -> dict[str, int]:
    """Run folder -> seconds its training (or resumption) took, as recorded by `run`."""
    path = os.path.join(REPO, sweep, WALL_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def summarise(records: list[dict], steps: int) -> dict[str, float]:
    out = {label: records[-1][key] for label, key in EVAL_COLUMNS.items()}
    last_epoch = lambda r: r['step'] > steps - steps // EPOCHS
    out['ITM acc'] = mean_of(records, 'train/itm_accuracy', last_epoch)
    out['MLM acc'] = mean_of(records, 'train/mlm_accuracy', last_epoch)
    out['FN fraction'] = mean_of(records, 'train/false_negative_fraction', lambda r: r['step'] > steps // EPOCHS)
    has_cosmo = any('train/cosmo/num_converted' in r for r in records)
    pooled = {
        key: sum(r.get(f'train/cosmo/{key}', 0.0) for r in records)
        for key in ('num_true_positive', 'num_converted', 'num_hardest_false_negative')
    }
    nan = float('nan')
    out['converted'] = mean_of(records, 'train/cosmo/converted_fraction') if has_cosmo else nan
    out['conv. precision'] = pooled['num_true_positive'] / max(pooled['num_converted'], 1.0) if has_cosmo else nan
    out['conv. recall'] = (
        pooled['num_true_positive'] / max(pooled['num_hardest_false_negative'], 1.0) if has_cosmo else nan
    )
    out['step ms'] = step_milliseconds(records)
    return out


def chance(config_spec: str, seed: int, columns: list[str]) -> dict[str, float]:
    """Random ranking's expected R@1 on the seed's test split: semantic from the generator's truth
    (the share of images true of a caption, of captions true of an image), instance 1/images."""
    sys.path.insert(0, REPO)  # the training CLI runs as a module from REPO; this script imports it directly
    from vlp_jax.config_files import load_config_file
    from vlp_jax.data.eval_sets import source_retrieval_set
    from vlp_jax.derived import source_plugin

    config = load_config_file(os.path.join(REPO, config_spec))
    config.seed = seed
    test = source_plugin(config, 'shapes').open('test')
    data = source_retrieval_set(test, config.eval.retrieval_size, config.model.image_size, config.model.max_text_len)
    truth = np.asarray(data.truth, bool)  # [texts, images]
    out = dict.fromkeys(columns, float('nan'))
    for suffix in ('', ' ITM'):
        out[f'i2t sem R@1{suffix}'] = float(truth.mean(axis=0).mean())
        out[f't2i sem R@1{suffix}'] = float(truth.mean(axis=1).mean())
        for direction in ('i2t', 't2i'):
            out[f'{direction} R@1{suffix}'] = 1.0 / truth.shape[1]  # i2t: 5 true of 5 x images captions
    return out


def write_plot(results: dict[str, list[dict]], path: str, title: str) -> None:
    """common.write_plot's grouped bars (mean ± std over seeds) of PLOT_LABELS, legend in rows above the bars."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(results)
    for offset, (method, runs) in enumerate(results.items()):
        means = [np.mean([run[label] for run in runs]) for label in PLOT_LABELS]
        stds = [np.std([run[label] for run in runs], ddof=1) if len(runs) > 1 else 0.0 for label in PLOT_LABELS]
        ax.bar(np.arange(len(PLOT_LABELS)) + offset * width, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(np.arange(len(PLOT_LABELS)) + 0.4 - width / 2, PLOT_LABELS)
    ax.set_ylabel('zero-shot recall@1 (test split)')
    ax.set_ylim(0, 0.8)
    ax.set_title(title)
    ax.legend(ncol=3, loc='upper center')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=120)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--reference-steps', type=int, default=480)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--workdir', default='workdirs/experiments/fusion_methods')
    parser.add_argument('--out', default='docs/results')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--extra', nargs='*', default=[], help='more --config.KEY=VALUE overrides for every method')
    parser.add_argument('--name', default='fusion_methods', help='stem of the output files')
    args = parse_with_overrides(parser)
    if args.steps % EPOCHS:
        parser.error(f'--steps must be a multiple of {EPOCHS} (one third of the run is an epoch)')
    os.makedirs(args.out, exist_ok=True)
    shared = shared_overrides(args.batch_size, args.steps)

    reference = os.path.join(args.workdir, 'reference')
    print('stage 1: tiny fusion reference (clean regime)', flush=True)
    reference_extra = [
        arg for arg in shared if arg.startswith(('--config.batch_size', '--config.optim.warmup', '--config.log'))
    ]
    run(
        f'configs/shapes_albef_reference.py:steps={args.reference_steps}',
        reference,
        args.reference_steps,
        args.batch_size,
        0,
        reference_extra,
    )
    results: dict[str, list[dict]] = {method: [] for method in args.methods}
    commands = {}
    folders = ['reference']  # the run folders this table reads, for the total wall time
    for seed in args.seeds:
        for method in args.methods:
            spec = METHODS[method][0].format(steps=args.steps, reference=reference)
            extra = [*shared, *method_overrides(method, args.batch_size), *args.extra]
            commands[method] = f'--config {spec} {" ".join(extra)}'
            print(f'stage 2: {method}, seed {seed}', flush=True)
            slug = method.replace(' (', '_').replace(')', '').replace(' ', '_')
            workdir = os.path.join(args.workdir, f'{slug}_seed{seed}')
            folders.append(os.path.basename(workdir))
            results[method].append(summarise(run(spec, workdir, args.steps, args.batch_size, seed, extra), args.steps))
    columns = list(next(iter(results.values()))[0])
    results['chance'] = [chance('configs/albef.py:tiny', seed, columns) for seed in args.seeds]
    walls = wall_seconds(args.workdir)
    minutes = sum(walls.get(folder, 0) for folder in folders) / 60
    per_epoch = args.steps // EPOCHS
    header = (
        f'# Fusion recipes on the noisy shapes regime: ALBEF, GRIT-VLP, MAFA, SRCL\n\n'
        f'`.venv/bin/python experiments/fusion_methods.py {" ".join(sys.argv[1:])}`: {len(args.seeds)} seeds, '
        f'{args.steps} steps each at batch {args.batch_size} on {per_epoch * args.batch_size:,} noisy pairs '
        f'({EPOCHS} epochs of {per_epoch} steps), tiny fusion model (3-layer ViT, 2 text layers + 1 fusion '
        f'layer); one clean-regime tiny fusion reference (configs/shapes_albef_reference.py, seed 0, '
        f'{args.reference_steps} steps at batch {args.batch_size}) serves MAFA (cosine), MAFA (ITM) and SRCL. '
        f"{minutes:.0f} min in all (the sum of the runs' wall times) on this 2-core machine, shared with other "
        f'jobs. R@1 on the noise-free '
        f'1,000-image test split; "ITM" columns re-rank the top 16 ITC candidates by the ITM head. ITM/MLM '
        f'accuracy: train metrics (each method on its own ITM negatives and MLM mask ratio) averaged over the '
        f"last epoch's log steps; FN fraction: in-batch false negatives, mean over epochs >= 1; converted: "
        f'share of (anchor, direction) whose hardest negative was converted; conversion precision/recall '
        f'pooled over all log steps (ground truth from the generator). The chance row is random ranking.\n\n'
        f'Per-method training commands (`python -m vlp_jax.train --workdir ... --config.seed=S` plus '
        f"experiments/common.py's total_steps/eval_every/checkpoint_every = {args.steps}):\n\n"
        + '\n'.join(f'- {method}: `{command}`' for method, command in commands.items())
        + f'\n- reference: `--config configs/shapes_albef_reference.py:steps={args.reference_steps} '
        f'{" ".join(reference_extra)}`\n\n'
        f'MAFA (cosine) thresholds are cosines of the reference: high {COSINE_HIGH} / low {COSINE_LOW}, as '
        f'configs/shapes_cosmo.py and the false-negatives experiment; MAFA (ITM) uses the same numbers as '
        f"match probabilities (the paper's)."
    )
    print(write_table(results, os.path.join(args.out, f'{args.name}.md'), header))
    write_plot(
        results,
        os.path.join(args.out, f'{args.name}.png'),
        'Fusion recipes, noisy shapes: semantic R@1, ITC and ITM re-ranked (mean ± std over seeds)',
    )
    save_json(results, os.path.join(args.out, f'{args.name}.json'))  # raw per-run numbers, beside the table


if __name__ == '__main__':
    main()
