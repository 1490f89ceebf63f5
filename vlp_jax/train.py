"""Train a vision-language model: `python -m vlp_jax.train --config configs/NAME.py[:ARG] --workdir DIR`.

Re-running the same command resumes from the newest complete checkpoint in DIR; with no
--config it resumes with the run's own DIR/config.json. Config errors exit with status 2 and
one line before anything is compiled or written. `--config_help[=GROUP]` lists every config key.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

from absl import flags

from vlp_jax import config_files
from vlp_jax.config import ConfigError, help_text, split_overrides

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'config',
    None,
    'Config file `path/to/config.py[:ARG]` (ARG: comma-separated key=value or flags); override any key with '
    '--config.KEY=VALUE. Optional when --workdir holds a run: its config.json is used.',
)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, config.json, metrics.jsonl and TensorBoard files.')
flags.DEFINE_integer(
    'stop_at_step',
    None,
    'Checkpoint and exit at this step (e.g. before a pre-emption); '
    're-running without it continues exactly where it stopped.',
)
flags.DEFINE_string(
    'config_help', None, "Print every config key (or one group's: --config_help=optim) with type, default and help."
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0 for a multi-process run started by hand '
    '(default: JAX_COORDINATOR_ADDRESS, or found from SLURM / Cloud TPU).',
)
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run (default: JAX_NUM_PROCESSES, or found).')
flags.DEFINE_integer(
    'process_id', None, "This process's index in [0, num_processes) (default: JAX_PROCESS_ID, or found)."
)

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')


def fail(message: str) -> None:
    """One line on stderr, non-zero exit: for mistakes the user can fix."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def print_usage(doc: str, hidden: tuple[str, ...] = ()) -> None:
    """The module's docstring and its flags (but `hidden`), for --help."""
    lines = [doc.strip(), '', 'flags:']
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module.startswith('absl'):  # absl's own logging flags
            continue
        for flag in module_flags:
            if flag.name in hidden:
                continue
            default = '' if flag.default is None else f' (default: {flag.default!r})'
            lines.append(f'  --{flag.name}: {flag.help}{default}')
    lines.append('  --config.KEY=VALUE: set any config key (python -m vlp_jax.train --config_help lists them)')
    print('\n'.join(lines), flush=True)


def parse_flags(
    argv: list[str], doc: str, hidden: tuple[str, ...] = (), list_flag: str | None = None
) -> list[tuple[str, str]]:
    """absl flags (exits 0 after --help / --config_help) -> the config overrides; exits 2 on a bad flag.

    absl leaves words that follow a flag's value (`--images a.png b.png`: b.png) as positional arguments, which
    no command takes; they extend `list_flag` when it was given (so a shell glob works), else they are refused
    rather than silently dropped."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print_usage(doc, hidden)
        sys.exit(0)
    argv = [f'{arg}=' if arg == '--config_help' else arg for arg in argv]
    try:
        rest, overrides = split_overrides(argv)
        positional = FLAGS(rest)[1:]
    except (ConfigError, flags.Error) as error:
        fail(str(error).splitlines()[0])
    if positional and list_flag is not None and FLAGS[list_flag].value:
        FLAGS[list_flag].value = [*FLAGS[list_flag].value, *(v for word in positional for v in word.split(',') if v)]
    elif positional:
        fail(
            f'unexpected argument {positional[0]!r}: every value follows its flag (--flag=VALUE)'
            + (f', and --{list_flag} takes one or more files' if list_flag else '')
            + '.'
        )
    if FLAGS.config_help is not None:
        from vlp_jax import builtin_plugins  # noqa: F401  (their groups are part of the schema)

        try:
            print(help_text(FLAGS.config_help), end='', flush=True)
        except ConfigError as error:
            fail(str(error))
        sys.exit(0)
    return overrides


def load_config(overrides: list[tuple[str, str]], workdir: str | None):
    """The config of --config (+ overrides), else the workdir's own config.json (+ overrides)."""
    if FLAGS.config:
        return config_files.load_config_file(FLAGS.config, overrides)
    if workdir and config_files.has_saved_config(workdir):
        return config_files.saved_config(workdir, overrides)
    fail('--config is required (or a --workdir holding a run), e.g. --config configs/shapes_tiny.py.')


def initialize_and_check(config):
    """Starts multi-process JAX if the environment says so, then runs the config checks (exit 2 on a problem)."""
    import jax  # after flag parsing: a typo must not wait for backend start-up

    from vlp_jax import checks, parallel

    parallel.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    return checks.check_config(config, jax.device_count())


def resume_changes(config, workdir: str) -> list[str]:
    """Keys a re-run changes: refused (exit 2, nothing written) unless the schema lets them change on resume."""
    from vlp_jax.checkpointing import Checkpointer
    from vlp_jax.paths import as_path

    if (
        not config_files.has_saved_config(workdir)
        or Checkpointer(as_path(workdir) / 'checkpoints', 1).latest_step() is None
    ):
        return []
    saved = config_files.saved_config(workdir)
    refused, allowed = config_files.conflicts(saved, config)
    if refused:
        fail(
            f'{workdir} holds a run whose config.json differs in {config_files.describe(saved, refused)} '
            f'(given: {config_files.describe(config, refused)}); these cannot change on resume: drop the overrides '
            'or start a fresh --workdir.'
        )
    return allowed


def parse_command_line(argv: list[str], need_workdir: bool = True, doc: str = __doc__):
    """Flags + config (file or the workdir's config.json) + overrides -> (checked config, derived values)."""
    overrides = parse_flags(argv, doc)
    if need_workdir and not FLAGS.workdir:
        fail('--workdir is required: the directory for checkpoints and metrics.')
    try:
        config = load_config(overrides, FLAGS.workdir)
        derived = initialize_and_check(config)
    except ConfigError as error:
        fail(str(error))
    return config, derived


def run(config, workdir: str, stop_at_step: int | None = None, derived=None, changed: tuple[str, ...] = ()) -> dict:
    """Trains to config.total_steps (resuming if possible); returns the final metrics.

    `changed`: keys that differ from the workdir's config.json and may (resume_changes); they are
    recorded in config_changes.jsonl when the run resumes.
    """
    import jax

    from vlp_jax import metrics as metrics_lib
    from vlp_jax import mfu, parallel, steps
    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import Checkpointer, CheckpointError
    from vlp_jax.data import batch as batch_spec
    from vlp_jax.evaluators.suite import make_evaluator
    from vlp_jax.guards import Diverged, NonFiniteGuard, StopSignals
    from vlp_jax.objectives.frozen import FrozenModelError
    from vlp_jax.paths import as_path
    from vlp_jax.start_warnings import start_lines

    try:
        run_setup = setup_lib.build(config, derived=derived)
        inputs = run_setup.train_inputs(jax.process_index(), jax.process_count())
        evaluate = make_evaluator(run_setup)
    except ConfigError as error:
        fail(str(error))
    mesh, sampler, pipeline = run_setup.mesh, inputs.sampler, inputs.pipeline
    probe = inputs.source.ground_truth_probe()
    is_main = jax.process_index() == 0
    say = (lambda text: print(text, flush=True)) if is_main else (lambda text: None)

    try:  # before anything is written, like restore: a bad path leaves the workdir as it was
        frozen = run_setup.load_frozen()
    except FrozenModelError as error:
        fail(str(error))
    checkpointer = Checkpointer(as_path(workdir) / 'checkpoints', keep=config.keep_checkpoints)
    try:  # before anything is written: a mismatching config must leave the workdir as it was
        restored = checkpointer.restore(run_setup.checkpoint_target(sampler))
    except CheckpointError as error:
        fail(str(error))
    warm = None
    if restored is None and config.model.init_checkpoint:
        from vlp_jax.warm_start import WarmStartError

        try:  # also before anything is written
            warm = run_setup.load_warm_start()
        except WarmStartError as error:
            fail(str(error))
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    skipped_before = 0
    bad_records = [0]  # records replaced because they failed to load, up to the last step taken (train/bad_records)
    if restored is None:
        if is_main:
            config_files.write_config(workdir, config)
        state, start_step = run_setup.init_state(), 0
        say(f'starting a new run in {workdir} on {jax.device_count()} device(s), mesh {dict(mesh.shape)}')
        if warm is not None:
            state = run_setup.warm_started(state, warm.arrays)
            say(warm.summary())
    else:
        start_step, state, extra = restored
        state = run_setup.restored_state(state, sampler)
        assert extra['pipeline']['next_step'] == start_step, extra
        skipped_before = int(extra['pipeline'].get('skipped_steps', 0))
        bad_records[0] = int(extra['pipeline'].get('bad_records', 0))
        if changed and is_main:
            saved = config_files.saved_config(workdir)
            config_files.record_changes(workdir, start_step, saved, config, changed)
            say(
                f'config changed on resume: {config_files.describe(config, changed)} (recorded in config_changes.jsonl)'
            )
        say(f'resumed from checkpoint at step {start_step} in {workdir}/checkpoints')
    if is_main:
        metrics_lib.truncate_after(workdir, start_step)
    for line in start_lines(config, run_setup.derived, getattr(evaluate, 'evaluators', ())):
        say(line)
    if pipeline.backend == 'numpy':  # the tf.data path, the default where TF is installed, goes unsaid
        say(f'input pipeline: numpy, without TensorFlow ({pipeline.backend_reason})')

    train_step = run_setup.train_step(probe=probe, keep_feedback=sampler.needs_feedback)
    # Saved beside every state: the pipeline's position, and the architecture, so this run can serve
    # as another run's frozen model (objectives/frozen.py) whatever that run trains.
    guard = NonFiniteGuard(int(config.nonfinite_patience), skipped_before)
    checkpoint_extra = lambda done: {
        'pipeline': {
            'next_step': done,
            'seed': int(config.seed),
            'skipped_steps': guard.total,
            'bad_records': bad_records[0],
        },
        'model': config.model.to_dict(),
    }
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)

    total = config.total_steps
    # Everything built so far (TF, JAX, the model) lives for the whole run: freezing it keeps
    # Python's full garbage collections, which stop every thread, from rescanning it mid-loop.
    gc.collect()
    gc.freeze()
    end = total if stop_at_step is None else min(max(stop_at_step, start_step), total)
    final: dict[str, Any] = {}
    peak_flops = mfu.peak_flops_per_device(float(config.peak_flops_per_device))  # train/mfu's denominator
    model_flops = mfu.model_flops_per_step(config, run_setup.derived)  # its numerator's FLOPs (traced, not compiled)
    throughput = metrics_lib.Throughput(config.batch_size, total, start_step)
    batches = pipeline.iterate(start_step, end)
    in_flight = None
    unseen: list[tuple[int, Any]] = []  # (step, device feedback) the sampler has not seen yet

    def feed_sampler(upto: int) -> None:
        """Hands the sampler the feedback of every step <= upto (a device->host copy of [B, E] each)."""
        while unseen and unseen[0][0] <= upto:
            step_done, feedback = unseen.pop(0)
            sampler.observe(step_done, jax.device_get(feedback))

    signals = StopSignals()
    stopped_by: str | None = None
    with signals:
        for step in range(start_step, end):
            wait_start = time.perf_counter()
            local = next(batches)
            bad_records[0] += int(local['replaced'].sum())  # this process's rows
            throughput.add_data_wait(time.perf_counter() - wait_start)
            batch = parallel.global_batch(batch_spec.select(local, train_step.batch_keys), mesh)
            state, step_metrics, feedback = train_step(state, batch, frozen)
            # At most one step queued behind the running one: the host cannot run ahead, drain
            # the prefetch buffer and then count its own idle time as 'waiting for data'.
            jax.block_until_ready(in_flight)
            try:
                if in_flight is not None:  # the previous step is done: was it skipped?
                    guard.observe(step, int(in_flight[steps.SKIPPED]))
                in_flight = step_metrics
                throughput.step_done()
                done = step + 1
                if sampler.needs_feedback:  # the one place the sampler hears from the step
                    unseen.append((done, feedback))
                    at_boundary = (
                        done % pipeline.steps_per_epoch == 0
                        or done % config.checkpoint_every == 0
                        or done in (total, end)
                    )
                    feed_sampler(done if at_boundary else done - 1)  # the previous step's copy overlaps this step
                stop = signals.requested()
                record: dict[str, Any] = {}
                if done % config.log_every == 0 or done == total:
                    record.update(steps.scalar_metrics(step_metrics))
                    guard.observe(done, int(record.pop(steps.SKIPPED)))
                    record['train/skipped_steps'] = guard.total
                    if pipeline.encoded:  # real data: records that failed to load and were replaced
                        record['train/bad_records'] = bad_records[0]
                    record.update(throughput.window(done))
                    record.update(
                        mfu.utilisation(
                            model_flops, record['train/steps_per_sec'], peak_flops, mesh.devices.size, config.batch_size
                        )
                    )
                    say(metrics_lib.console_line(done, total, record))
                if done % config.eval_every == 0 or done == total:
                    paused = throughput.pause()
                    eval_metrics = evaluate(state['params'])
                    record.update(eval_metrics)
                    say(eval_line(done, eval_metrics))
                    throughput.resume(paused)
                if record:
                    record.pop('eta_seconds', None)
                    writer.write(done, record)
                    final.update(record)
                if done % config.checkpoint_every == 0 or done in (total, end) or stop:
                    paused = throughput.pause()
                    guard.observe(done, int(jax.device_get(step_metrics[steps.SKIPPED])))
                    checkpointer.save(done, run_setup.checkpoint_state(state, sampler), extra=checkpoint_extra(done))
                    throughput.resume(paused)
            except Diverged as error:
                checkpointer.close()
                writer.close()
                print(f'error: {error}', file=sys.stderr, flush=True)
                sys.exit(EXIT_DIVERGED)
            if stop:
                stopped_by, end = signals.received or 'a stop signal on another process', done
                break
    if start_step >= total:
        say(f'already trained to step {total}; evaluating the final checkpoint')
        final = {'step': total, **evaluate(state['params'])}
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    if stopped_by is not None:
        say(f'received {stopped_by}: checkpointed step {end}; re-run the same command to continue to {total}')
        return {}
    if end < total:
        say(f'stopped at step {end} as asked; re-run the same command to continue to {total}')
        return {}
    final['step'] = total
    return final


def eval_line(step: int, metrics: dict[str, float]) -> str:
    """The console line of one evaluation: its R@1, top-1 and task-accuracy figures."""
    shown = '  '.join(
        f'{key.split("/", 1)[1]} {value:.3f}'
        for key, value in metrics.items()
        if key.endswith(('_r1', 'top1', 'accuracy'))
    )
    return f'eval at step {step}: {shown}'


def main() -> None:
    config, derived = parse_command_line(sys.argv)
    changed = tuple(resume_changes(config, FLAGS.workdir))
    final = run(config, FLAGS.workdir, FLAGS.stop_at_step, derived, changed)
    import jax

    if final and jax.process_index() == 0:  # one summary line per run, not one per process
        print(json.dumps({key: value for key, value in final.items() if key.startswith(('eval/', 'step'))}), flush=True)


if __name__ == '__main__':
    main()
