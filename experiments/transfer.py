"""Does pretraining transfer? The four synthetic fine-tuning tasks from a tiny pretrained run and from scratch.

    .venv/bin/python experiments/transfer.py [--seeds 0 1 2] [--pretrain-steps 400] [--task-steps 300]

For each seed s: pretrain configs/shapes_albef.py (the recipe below, seed s), then fine-tune each task's `:tiny`
config (configs/finetune/{retrieval,snli_ve,nlvr2,grounding}.py) twice with seed s: from that run
(model.init_checkpoint) and from scratch. Every run draws ITM negatives uniformly (EVERY_RUN). The two starts of a
task see the same data order and the same new-head initialisation, so the comparison is paired by seed. It writes
docs/results/transfer.md (chance, scratch and pretrained means with 95% t-intervals over seeds, their paired
difference with its interval), transfer.json (every run's figures) and transfer.png, after every finished seed, so a
cut run still leaves its table. Finished runs in --workdir are reused (a rerun over finished runs only rewrites the
outputs). Any `--config.KEY=VALUE` is passed to every run. `--task-steps 2 --pretrain-steps 2 --seeds 0` is the
smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from math import comb

import numpy as np
from common import REPO, finished_records, run_minutes, save_json, train

PRETRAIN = 'configs/shapes_albef.py'
RECIPE = (  # the tiny pretraining run: clean coarse captions ("a red circle", "something blue", "a square")
    '--config.batch_size=64',
    '--config.data.shapes.test_size=100',
    '--config.data.shapes.caption_noise=0.0',
)
# Every run (pretraining and each fine-tune, both starts) draws ITM negatives uniformly: with ALBEF's hard ones the
# tiny ITM head stays at its all-negative prior, and grounding's Grad-CAM follows that head (docs/results.md).
EVERY_RUN = ('--config.loss.itm.negatives=uniform',)
TASKS = {  # name -> (config, metric key)
    'retrieval': ('configs/finetune/retrieval.py', 'eval/retrieval_ft/r_mean'),
    'SNLI-VE': ('configs/finetune/snli_ve.py', 'eval/snli_ve/accuracy'),
    'NLVR2': ('configs/finetune/nlvr2.py', 'eval/nlvr2/accuracy'),
    'grounding': ('configs/finetune/grounding.py', 'eval/grounding/accuracy'),
}
STARTS = ('scratch', 'pretrained')
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def retrieval_chance(images: int, captions: int = 5) -> float:
    """r_mean (percent) of a random ranking: TR R@K = 1 - C(cN - c, K) / C(cN, K), IR R@K = K / N."""
    texts = images * captions
    tr = [1 - comb(texts - captions, k) / comb(texts, k) for k in (1, 5, 10)]
    ir = [k / images for k in (1, 5, 10)]
    return 100 * float(np.mean(tr + ir))


def grounding_chance(seed: int, test_size: int = 300) -> float:
    """Mean of 1 / objects over the test expressions of the seed's world (a random proposal's hit rate)."""
    sys.path.insert(0, REPO)
    from vlp_jax.data.synthetic import ShapesWorld, ShapesWorldConfig
    from vlp_jax.data.tasks.shapes_grounding import GroundingSource

    config = ShapesWorldConfig(image_size=32, captions_per_image=2, train_size=1, val_size=1, test_size=test_size)
    source = GroundingSource(ShapesWorld(config, seed, 'test'))
    scenes = [source.scenes.scene(index)[0] for index, _, _ in source.items]
    return float(np.mean([1 / (scene[:, 0] >= 0).sum() for scene in scenes]))


def chance(task: str, seed: int, workdir: str) -> float:
    """The task's chance level on the test set the run in `workdir` was evaluated on (its config.json)."""
    with open(os.path.join(workdir, 'config.json')) as handle:
        data = json.load(handle)['data']
    return {
        'retrieval': lambda: retrieval_chance(int(data['shapes_retrieval']['test_size'])),
        'SNLI-VE': lambda: 1 / 3,
        'NLVR2': lambda: 1 / 2,
        'grounding': lambda: grounding_chance(seed, int(data['shapes_grounding']['test_size'])),
    }[task]()


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with one value)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), float('nan')
    return float(values.mean()), float(T_975[len(values) - 1] * values.std(ddof=1) / np.sqrt(len(values)))


def _fmt(mean: float, half: float, signed: bool = False) -> str:
    text = f'{mean:+.3f}' if signed else f'{mean:.3f}'
    return text if np.isnan(half) else f'{text} ± {half:.3f}'


def table(results: dict) -> list[str]:
    lines = [
        '| task (metric) | seeds | chance | from scratch | from the pretrained run | pretrained - scratch (paired) |',
        '|---|---|---|---|---|---|',
    ]
    for task, (_, key) in TASKS.items():
        runs = results['tasks'].get(task)
        if not runs or not runs['pretrained']:
            continue
        scratch, pretrained = runs['scratch'], runs['pretrained']
        cells = [
            str(runs['seeds']),
            f'{np.mean(runs["chance"]):.3f}',
            _fmt(*interval(scratch)),
            _fmt(*interval(pretrained)),
            _fmt(*interval([p - s for p, s in zip(pretrained, scratch)]), signed=True),
        ]
        lines.append(f'| {task} (`{key}`) | ' + ' | '.join(cells) + ' |')
    return lines


def plot(results: dict, path: str) -> None:
    """Per task: scratch and pretrained means (95% t-interval) and each seed's figure, chance as a line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if results['tasks'].get(t, {}).get('pretrained')]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(3.2 * max(len(tasks), 1), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        runs = results['tasks'][task]
        for x, start in enumerate(STARTS):
            mean, half = interval(runs[start])
            ax.bar(x, mean, 0.6, yerr=0.0 if np.isnan(half) else half, capsize=4, color=('#999999', '#3b75af')[x])
            ax.plot([x] * len(runs[start]), runs[start], 'k.', markersize=5)
        ax.axhline(np.mean(runs['chance']), color='red', linestyle='--', linewidth=1, label='chance')
        ax.set_xticks(range(len(STARTS)), STARTS)
        ax.set_title(f'{task}\n{TASKS[task][1].split("/", 1)[1]}', fontsize=9)
    axes[0][0].legend(fontsize=8)
    seeds = sorted({seed for task in tasks for seed in results['tasks'][task]['seeds']})
    fig.suptitle(f'tiny synthetic tasks: from scratch vs from a pretrained run (seeds {seeds})')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: dict, args: argparse.Namespace) -> str:
    minutes = sum(results['minutes'].values())
    lines = [
        '# Pretraining transfer on the synthetic fine-tuning tasks',
        '',
        f'`experiments/transfer.py {" ".join(sys.argv[1:])}`: seeds {results["seeds"]}; each seed pretrains '
        f"`{PRETRAIN}:steps={args.pretrain_steps} {' '.join(RECIPE)}` and fine-tunes every task's `:tiny` "
        f'config for {args.task_steps} steps (batch 64, lr 3e-4) from that run and from scratch, every run with '
        f"`{' '.join(EVERY_RUN)}` (ALBEF's hard negatives keep the tiny ITM head at its prior, "
        '[../results.md](../results.md#why-itm-stays-at-its-prior)); the runs took '
        f'{minutes:.0f} min on 2 shared CPU cores. Means over seeds ± the half-width of the 95% t-interval; '
        'the difference is paired by seed (same data order and head initialisation). Retrieval: r_mean in '
        'percent over the test images x 5 captions (`data.shapes_retrieval.test_size`, 300 unless overridden); '
        'chance is a random ranking. SNLI-VE / NLVR2: accuracy on 300 test examples whose text alone is at '
        'chance; grounding: accuracy of the best Grad-CAM proposal at IoU >= 0.5, chance = mean 1 / objects.',
        '',
        *table(results),
        '',
    ]
    text = '\n'.join(lines)
    with open(os.path.join(args.out, f'{args.name}.md'), 'w') as handle:
        handle.write(text)
    save_json(results, os.path.join(args.out, f'{args.name}.json'))
    plot(results, os.path.join(args.out, f'{args.name}.png'))
    return text


def finished(workdir: str, steps: int, key: str) -> dict | None:
    """The final eval figures of a run finished in `workdir` at `steps` (None if it is not)."""
    records = finished_records(workdir, steps)
    if records is None or key not in records[-1]:
        return None
    return {k: v for k, v in records[-1].items() if k.startswith('eval/')}


def run(config: str, workdir: str, steps: int, seed: int, extra: list[str], key: str, collect: bool) -> dict | None:
    """One training run's final figures: a finished run in `workdir` is read, not rerun; with `collect` an
    unfinished one is None."""
    figures = finished(workdir, steps, key)
    if figures is None and not collect:
        train(config, workdir, steps, seed, extra)
        figures = finished(workdir, steps, key)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--pretrain-steps', type=int, default=400)
    parser.add_argument('--task-steps', type=int, default=300)
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS), help='run in this order')
    parser.add_argument('--workdir', default='workdirs/experiments/transfer')
    parser.add_argument('--out', default='docs/results')
    parser.add_argument('--name', default='transfer', help='stem of the output files')
    parser.add_argument('--starts', nargs='+', default=list(STARTS), choices=STARTS, help='train only these starts')
    parser.add_argument('--collect', action='store_true', help='train nothing: tabulate the runs finished so far')
    args, extra = parser.parse_known_args()  # every --config.KEY=VALUE given: an override for every run
    if any(not item.startswith('--config.') for item in extra):
        parser.error(f'unrecognized arguments (only --config.KEY=VALUE overrides pass through): {extra}')
    args.extra = [*EVERY_RUN, *extra]
    os.makedirs(args.out, exist_ok=True)
    # Seeds and starts share every shape: compile each program once.
    os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.abspath(os.path.join(args.workdir, 'jax_cache')))
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    results = {'seeds': [], 'pretrain': {}, 'tasks': {}, 'minutes': {}}
    for seed in args.seeds:
        print(f'seed {seed}: pretraining', flush=True)
        pre_dir = os.path.abspath(os.path.join(args.workdir, f'pretrain_seed{seed}'))
        config = f'{PRETRAIN}:steps={args.pretrain_steps}'
        extra = [*RECIPE, *args.extra]
        only_read = args.collect or 'pretrained' not in args.starts  # from-scratch runs need no pretraining
        pretrain = run(config, pre_dir, args.pretrain_steps, seed, extra, 'eval/retrieval/t2i_r1', only_read)
        if pretrain is None and not only_read:
            continue
        if pretrain is not None:
            results['seeds'].append(seed)
            results['pretrain'][seed] = pretrain
            results['minutes'][f'pretrain_seed{seed}'] = run_minutes(pre_dir)
        for task in args.tasks:
            config, key = TASKS[task]
            figures = {}
            for start in STARTS:
                print(f'seed {seed}: {task} from {start}', flush=True)
                extra = [f'--config.model.init_checkpoint={pre_dir}'] if start == 'pretrained' else []
                workdir = os.path.join(args.workdir, f'{task}_{start}_seed{seed}')
                config_arg = f'{config}:tiny,steps={args.task_steps}'
                read = args.collect or start not in args.starts or (start == 'pretrained' and pretrain is None)
                figures[start] = run(config_arg, workdir, args.task_steps, seed, [*extra, *args.extra], key, read)
                if figures[start] is not None:
                    results['minutes'][f'{task}_{start}_seed{seed}'] = run_minutes(workdir)
            if all(figures[start] is not None for start in STARTS):  # only paired seeds enter the table
                runs = results['tasks'].setdefault(task, {'seeds': [], 'chance': [], **{s: [] for s in STARTS}})
                runs['seeds'].append(seed)
                runs['chance'].append(chance(task, seed, workdir))
                for start in STARTS:
                    runs[start].append(float(figures[start][key]))
        if not args.collect:
            print(write(results, args), flush=True)
    if args.collect:
        print(write(results, args), flush=True)


if __name__ == '__main__':
    main()
