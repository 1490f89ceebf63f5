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

flags.DEFINE_string('checkpoint', None, 'A checkpoints/ dir, one step dir inside it, or a workdir (default: --workdir).')


def main() -> None:
    config = parse_command_line(sys.argv, need_workdir=False)
    path = FLAGS.checkpoint or FLAGS.workdir
    if not path:
        fail('pass --workdir DIR or --checkpoint PATH: the checkpoint to evaluate.')
    if not os.path.exists(path):
        fail(f'checkpoint path {path!r} does not exist.')

    import jax

    from vlp_jax import config as config_lib
    from vlp_jax import optim, parallel, state as state_lib, steps
    from vlp_jax.checkpointing import CheckpointError, resolve_step_dir, restore_params_from
    from vlp_jax.data.eval_sets import classification_sets, retrieval_set
    from vlp_jax.evaluators.suite import run_zero_shot

    mesh = parallel.make_mesh(config_lib.mesh_shape(config, jax.device_count()))
    rules = parallel.logical_rules(config.mesh.rules)
    model = state_lib.create_model(config)
    abstract_state, shardings = state_lib.state_shardings(config, model, optim.make_optimizer(config), mesh, rules)
    try:
        step = int(resolve_step_dir(pathlib.Path(path).absolute()).name)
        params = restore_params_from(path, abstract_state['params'])
    except CheckpointError as error:
        fail(str(error))
    encode_images, encode_texts = steps.make_encoders(model, mesh, rules, shardings['params'])
    metrics = run_zero_shot(lambda x: encode_images(params, x), lambda i, m: encode_texts(params, i, m),
                            retrieval_set(config, 'test'), classification_sets(config), config.eval.batch_size, mesh)
    print(json.dumps({'step': step, **metrics}), flush=True)


if __name__ == '__main__':
    main()
