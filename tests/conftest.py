"""Shared fixtures: the tiny config, a runner for the CLI in a subprocess, and the training pipeline's
batches as a train step takes them.

Subprocesses keep JAX's device count per test (XLA_FLAGS must be set before jax is
imported) and exercise the exact commands users run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, 'configs', 'shapes_tiny.py')
# A model and data small enough for CI: a few seconds per run on 2 cores.
FAST_OVERRIDES = (
    '--config.batch_size=32',
    '--config.log_every=5',
    '--config.eval_every=1000',
    '--config.checkpoint_every=10',
    '--config.optim.warmup_steps=5',
    '--config.model.vision.width=32',
    '--config.model.vision.depth=1',
    '--config.model.vision.num_heads=2',
    '--config.model.vision.mlp_dim=64',
    '--config.model.text.width=32',
    '--config.model.text.depth=1',
    '--config.model.text.num_heads=2',
    '--config.model.text.mlp_dim=64',
    '--config.model.embed_dim=32',
    '--config.data.shapes.test_size=64',
    '--config.eval.batch_size=64',
    '--config.eval.classification_size=64',
    '--config.data.shapes.classification_size=64',
    '--config.data.shapes.train_size=2000',
)

# SRCL + COSMO with thresholds that convert some pairs, for in-process tests that pass the frozen
# reference's params themselves (the checkpoint paths are never read).
REGULATED_IN_PROCESS = (
    '--config.loss.regulators=srcl,cosmo',
    '--config.loss.srcl.reference_checkpoint=unused-in-process',
    '--config.loss.cosmo.reference_checkpoint=unused-in-process',
    '--config.loss.cosmo.high=0.1',
    '--config.loss.cosmo.low=0.0',
    '--config.loss.cosmo.smoothing_start_step=0',
)


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
    """Every CLI run of the session shares JAX's persistent compilation cache: the tests train the same
    tiny models again and again, so only the first run of each program compiles it (CI time). The
    cache returns the very programs a run would compile, so no result depends on it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'jax_cache'))
        patch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
        patch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
        yield


def run_cli(module, args, devices=1, timeout=600, check=True):
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['PYTHONPATH'] = REPO
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    result = subprocess.run(
        [sys.executable, '-m', module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f'{module} {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}')
    return result


def make_config(*overrides, devices=None):
    """configs/shapes_tiny.py with FAST_OVERRIDES, then `overrides` (`--config.key=value` flags); when `devices` is
    given, checked as a run on that many devices would be (checks.validate)."""
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file

    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, split_overrides([*FAST_OVERRIDES, *overrides])[1])
    if devices:
        from vlp_jax.checks import validate

        validate(config, devices)
    return config


def train_source(config):
    """The training split of `config`'s data source."""
    from vlp_jax.derived import source_plugin

    return source_plugin(config, str(config.data.name)).open('train')


def train_pipeline(config, source=None, process_index=0, process_count=1):
    """`config`'s training pipeline (its sampler's order) over `source` (default: the config's own)."""
    from vlp_jax import setup

    source = source if source is not None else train_source(config)
    return setup.pipeline(config, source, setup.make_sampler(config, source), process_index, process_count)


def train_batches(config, count=1, *, probe_keys=(), source=None, as_jax=False):
    """The first `count` batches of `config`'s training pipeline, model-ready: raw batch -> the step's keys
    (the required ones plus `probe_keys`, any declared fields) -> images normalised to the model's range
    (no augmentation).

    `source`: the train source when the caller needs it too (default: built from the config).
    Host numpy arrays, or jax arrays with `as_jax`.
    """
    from vlp_jax.data import batch as batch_spec

    pipeline = train_pipeline(config, source)
    batches = []
    for step in range(count):
        raw = pipeline.raw_batch(step)
        batch = batch_spec.select(raw, batch_spec.step_keys(probe_keys))
        for key in batch_spec.image_keys(batch):
            batch[key] = batch_spec.normalise_images(raw[key])
        if as_jax:
            import jax.numpy as jnp

            batch = {key: jnp.asarray(value) for key, value in batch.items()}
        batches.append(batch)
    return batches


def run_on_devices(code, *args, devices=8, timeout=300):
    """`python -c code *args` in a fresh process with `devices` fake CPU devices (XLA_FLAGS counts only
    before jax is imported, hence the process); the repository and tests/ are importable there.
    The CompletedProcess, text output captured; the caller asserts on it."""
    env = dict(
        os.environ,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
        JAX_PLATFORMS='cpu',
        PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.path.join(REPO, 'tests'), os.environ.get('PYTHONPATH')])),
    )
    return subprocess.run(
        [sys.executable, '-c', code, *map(str, args)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_after_checkpoint(args, workdir, step, devices=1, timeout=300):
    """Starts `vlp_jax.train args`, SIGKILLs it a little after checkpoint `step` is committed."""
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', PYTHONPATH=REPO)
    process = subprocess.Popen(
        [sys.executable, '-m', 'vlp_jax.train', *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not (workdir / 'checkpoints' / str(step)).exists():  # committed step dirs appear atomically
        assert process.poll() is None and time.monotonic() < deadline, 'run ended before the checkpoint'
        time.sleep(0.05)
    time.sleep(0.3)  # a little way into the steps after it
    process.send_signal(signal.SIGKILL)
    process.wait()


def read_metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope='session')
def tiny_config():
    from vlp_jax.config_files import load_config_file

    return load_config_file(TINY_CONFIG)
