"""Evaluate a checkpoint: `python -m vlp_jax.evaluate --workdir DIR` (or --checkpoint PATH).

The run's own DIR/config.json says what to evaluate (the sets it trained with, its model), so
no --config is needed; --config.eval.* overrides choose other sets. A bare --checkpoint outside
a workdir needs --config. Prints the metrics as one JSON object on the last stdout line; on the
final checkpoint of a run they equal the run's last eval (same sets, same code, same params).
The same metrics are written as a markdown table to `eval_step<N>.md` in the workdir.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from vlp_jax import config_files
from vlp_jax.config import ConfigError
from vlp_jax.train import FLAGS, fail, initialize_and_check, parse_flags

flags.DEFINE_string(
    'checkpoint', None, 'A checkpoints/ dir, one step dir inside it, or a workdir (default: --workdir).'
)


def _run_dir(path):
    """The workdir a checkpoint path (an epath.Path) belongs to: WORKDIR, WORKDIR/checkpoints or .../STEP."""
    for candidate in (path, *path.parents):
        if candidate.name == 'checkpoints':
            return candidate.parent
    return path if path.is_dir() else path.parent


def main() -> None:
    overrides = parse_flags(sys.argv, __doc__, hidden=('stop_at_step',))
    path = FLAGS.checkpoint or FLAGS.workdir
    if not path:
        fail('pass --workdir DIR or --checkpoint PATH: the checkpoint to evaluate.')
    from vlp_jax.paths import as_path

    if not as_path(path).exists():
        fail(f'checkpoint path {path!r} does not exist.')
    run_dir = as_path(FLAGS.workdir) if FLAGS.workdir else _run_dir(as_path(path))
    try:
        if config_files.has_saved_config(run_dir):
            config = config_files.saved_config(run_dir, overrides)
            if FLAGS.config:  # the run's config is the truth: a --config that says otherwise is refused
                given = config_files.load_config_file(FLAGS.config, overrides)
                refused, _ = config_files.conflicts(config, given)
                if refused:
                    fail(
                        f"--config {FLAGS.config} differs from the run's {run_dir}/config.json in "
                        f"{config_files.describe(given, refused)}; drop --config (the run's own config is used)."
                    )
        elif FLAGS.config:
            config = config_files.load_config_file(FLAGS.config, overrides)
        else:
            fail(f'{run_dir} has no config.json (not a vlp_jax workdir); pass --config configs/NAME.py.')
        derived = initialize_and_check(config)
    except ConfigError as error:
        fail(str(error))

    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import CheckpointError, resolve_step_dir, restore_params_from
    from vlp_jax.data.errors import DataError
    from vlp_jax.evaluators.suite import make_evaluator, markdown_table

    try:
        run_setup = setup_lib.build(config, derived=derived)
        step = int(resolve_step_dir(as_path(path)).name)
        params = restore_params_from(path, run_setup.abstract_state['params'])
        evaluator = make_evaluator(run_setup)
    except (CheckpointError, ConfigError, DataError) as error:
        fail(str(error))
    metrics = evaluator(params)
    import jax

    if jax.process_index() == 0:
        table = run_dir / f'eval_step{step}.md'
        table.write_text(markdown_table(metrics, step), encoding='utf-8')
        print(f'wrote {table}', flush=True)
        print(json.dumps({'step': step, **metrics}), flush=True)


if __name__ == '__main__':
    main()
