"""Plug-ins from outside the package: a regulator, a sampler, a source and an evaluator registered by
tests/plugin_toys.py (no file under vlp_jax/ names them) train and evaluate through the one CLI.

- The toy regulator's row statistic and tile rule give the same weights through the dense (one-tile)
  and the chunked loss, checked against numpy: one implementation serves both.
- Two training steps on 1 and on 8 fake devices agree; the toy sampler's state rides in the checkpoint
  and is restored on resume; the toy evaluator reports through `evaluate --workdir` with no --config
  (the run's config.json names the plug-in module in `plugins`).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import plugin_toys
import pytest
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, read_metrics

from vlp_jax.objectives.chunked import chunked_contrastive_loss
from vlp_jax.objectives.contrastive import contrastive_loss
from vlp_jax.objectives.regulators import RegulatorChain, RegulatorContext

B, E, WEIGHT = 16, 8, 0.25
TESTS = os.path.join(REPO, 'tests')
PLUGIN_ARGS = (
    '--config.plugins=(plugin_toys,)',
    '--config.data.name=toy_colours',
    '--config.loss.regulators=(toy_close,)',
    f'--config.loss.toy_close.weight={WEIGHT}',
    '--config.sampling.name=toy_reverse',
    '--config.model.image_size=32',
    '--config.batch_size=16',
    '--config.log_every=1',
    '--config.eval_every=2',
    '--config.checkpoint_every=2',
)


def _embeddings(seed=0):
    rng = np.random.default_rng(seed)
    v, t = rng.normal(size=(2, B, E)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return v, t


def _numpy_log_w(sim):
    """The toy rule from its definition: log(weight) on negatives above the row's mean negative cosine."""
    off = ~np.eye(len(sim), dtype=bool)
    mean = np.where(off, sim, 0.0).sum(1) / off.sum(1)
    return np.where(off & (sim > mean[:, None]), np.log(WEIGHT), 0.0)


def test_toy_regulator_is_one_implementation_for_the_dense_and_the_chunked_loss():
    v, t = _embeddings()
    context = RegulatorContext(batch_size=B, total_steps=1, steps_per_epoch=1, loss_form='softmax', model_kind='dual')
    chain = RegulatorChain([plugin_toys.ToyClose(plugin_toys.ToyCloseSettings(weight=WEIGHT), context)])
    sim = v @ t.T
    (i2t, t2i), aux = chain.dense(jnp.asarray(sim), {}, step=0)
    np.testing.assert_allclose(i2t.log_w, _numpy_log_w(sim), atol=1e-6)
    np.testing.assert_allclose(t2i.log_w, _numpy_log_w(sim.T), atol=1e-6)
    assert i2t.y is None and set(aux) == {'toy_close'}

    scale = jnp.float32(10.0)
    dense = lambda a, b: contrastive_loss(a, b, scale, i2t=i2t, t2i=t2i)[0]
    chunked = lambda a, b: chunked_contrastive_loss(a, b, scale, regulators=chain, block_size=4)[0]
    dense_value, dense_grads = jax.value_and_grad(dense, argnums=(0, 1))(jnp.asarray(v), jnp.asarray(t))
    chunked_value, chunked_grads = jax.value_and_grad(chunked, argnums=(0, 1))(jnp.asarray(v), jnp.asarray(t))
    np.testing.assert_allclose(chunked_value, dense_value, rtol=1e-5)
    for got, want in zip(chunked_grads, dense_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # ... and the weights change the loss (a rule the loss ignored would pass the equality above).
    assert abs(float(dense_value) - float(contrastive_loss(jnp.asarray(v), jnp.asarray(t), scale)[0])) > 1e-3


def _run(module, args, devices):
    env = dict(
        os.environ,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
        PYTHONPATH=os.pathsep.join([REPO, TESTS]),
        TF_CPP_MIN_LOG_LEVEL='2',
    )
    result = subprocess.run(
        [sys.executable, '-m', module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f'{module} {args}:\n{result.stdout}\n{result.stderr}'
    return json.loads(result.stdout.strip().splitlines()[-1])


def _sampler_state(workdir, step):
    """The sampler's part of a 1-device run's checkpoint (host numpy arrays)."""
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(workdir / 'checkpoints' / str(step) / 'state')
    return state['sampler']


@pytest.fixture(scope='module')
def plugin_runs(tmp_path_factory):
    """Two steps with every toy plug-in, on 1 and on 8 devices."""
    runs = {}
    for devices in (1, 8):
        workdir = tmp_path_factory.mktemp(f'plugins{devices}')
        args = ['--config', f'{TINY_CONFIG}:steps=2', '--workdir', str(workdir), *FAST_OVERRIDES, *PLUGIN_ARGS]
        runs[devices] = (workdir, args, _run('vlp_jax.train', args, devices))
    return runs


def test_out_of_package_plugins_train_on_one_and_eight_devices_alike(plugin_runs):
    (one, _, final_one), (_, _, final_eight) = plugin_runs[1], plugin_runs[8]
    for final in (final_one, final_eight):
        assert final['step'] == 2
        assert final['eval/toy_count/colours/images'] == 32.0  # the toy source's test split, the toy evaluator
        assert final['eval/toy_count/colours/mean_norm'] == pytest.approx(1.0, abs=1e-3)
        assert 'eval/retrieval/i2t_r1' in final  # the built-in evaluator on the toy source
    metrics = {devices: read_metrics(workdir) for devices, (workdir, _, _) in plugin_runs.items()}
    for devices, records in metrics.items():
        assert [r['step'] for r in records if 'train/loss' in r] == [1, 2], devices
        assert all('train/toy_close/row_mean' in r for r in records if 'train/loss' in r)  # the regulator's metric
    for want, got in zip(metrics[1], metrics[8]):
        for key in ('train/loss', 'train/toy_close/row_mean', 'train/grad_norm'):
            if key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
    assert int(_sampler_state(one, 2)['observed']) == 2  # the toy sampler saw both steps, and was saved


def test_plugin_run_resumes_with_its_sampler_state_and_evaluates_from_its_own_config(plugin_runs):
    workdir, args, final = plugin_runs[1]
    evaluated = _run('vlp_jax.evaluate', ['--workdir', str(workdir)], 1)  # no --config, no plugins flag
    assert {k: v for k, v in evaluated.items() if k.startswith('eval/')} == {
        k: v for k, v in final.items() if k.startswith('eval/')
    }
    _run('vlp_jax.train', ['--workdir', str(workdir), '--config.total_steps=4'], 1)  # resumes from config.json
    assert int(_sampler_state(workdir, 4)['observed']) == 4  # 2 restored + 2 seen after the resume
