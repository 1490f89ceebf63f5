"""Evaluate a checkpoint zero-shot: `python -m vlp_jax.evaluate --config ... --workdir DIR` (or --checkpoint PATH).

Prints the metrics as one JSON object on the last stdout line; on the final checkpoint
of a run they equal the run's last eval (same sets, same code, same params). Which sets:
`eval.sets` (data/eval_specs.py: retrieval on any captioned set, classification on any
labelled one, from records, TFDS or the shapes world). The same metrics are written as a
markdown table to `eval_step<N>.md` in --workdir (or beside the checkpoint).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from vlp_jax.train import FLAGS, fail, parse_command_line

flags.DEFINE_string(
    'checkpoint', None, 'A checkpoints/ dir, one step dir inside it, or a workdir (default: --workdir).'
)


def main() -> None:
    config = parse_command_line(sys.argv, need_workdir=False)
    path = FLAGS.checkpoint or FLAGS.workdir
    if not path:
        fail('pass --workdir DIR or --checkpoint PATH: the checkpoint to evaluate.')
    from vlp_jax.paths import as_path

    if not as_path(path).exists():
        fail(f'checkpoint path {path!r} does not exist.')

    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import CheckpointError, resolve_step_dir, restore_params_from
    from vlp_jax.data.errors import DataError
    from vlp_jax.evaluators.suite import make_zero_shot_evaluator, markdown_table

    run_setup = setup_lib.build(config)
    try:
        step = int(resolve_step_dir(as_path(path)).name)
        params = restore_params_from(path, run_setup.abstract_state['params'])
    except CheckpointError as error:
        fail(str(error))
    try:
        evaluator = make_zero_shot_evaluator(run_setup)
    except DataError as error:
        fail(str(error))
    metrics = evaluator(params)
    import jax

    if jax.process_index() == 0:
        table_dir = as_path(FLAGS.workdir) if FLAGS.workdir else _run_dir(as_path(path))
        table = table_dir / f'eval_step{step}.md'
        table.write_text(markdown_table(metrics, step), encoding='utf-8')
        print(f'wrote {table}', flush=True)
        print(json.dumps({'step': step, **metrics}), flush=True)


def _run_dir(path):
    """The workdir a checkpoint path (an epath.Path) belongs to: WORKDIR, WORKDIR/checkpoints or .../STEP."""
    for candidate in (path, *path.parents):
        if candidate.name == 'checkpoints':
            return candidate.parent
    return path if path.is_dir() else path.parent


if __name__ == '__main__':
    main()
