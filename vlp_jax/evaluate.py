"""Evaluate a checkpoint zero-shot: `python -m vlp_jax.evaluate --config ... --workdir DIR` (or --checkpoint PATH).

Prints the metrics as one JSON object on the last stdout line; on the final checkpoint
of a run they equal the run's last eval (same sets, same code, same params).
"""

from __future__ import annotations

import json
import os
import pathlib
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
    if not os.path.exists(path):
        fail(f'checkpoint path {path!r} does not exist.')

    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import CheckpointError, resolve_step_dir, restore_params_from
    from vlp_jax.evaluators.suite import make_zero_shot_evaluator

    run_setup = setup_lib.build(config)
    try:
        step = int(resolve_step_dir(pathlib.Path(path).absolute()).name)
        params = restore_params_from(path, run_setup.abstract_state['params'])
    except CheckpointError as error:
        fail(str(error))
    metrics = make_zero_shot_evaluator(run_setup)(params)
    import jax

    if jax.process_index() == 0:
        print(json.dumps({'step': step, **metrics}), flush=True)


if __name__ == '__main__':
    main()
