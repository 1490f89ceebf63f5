"""Fine-tuning runs end to end through `python -m vlp_jax.train` (slow: several CLI runs)."""

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, kill_after_checkpoint, make_config, read_metrics, run_cli

from vlp_jax import setup as setup_lib
from vlp_jax.checkpointing import Checkpointer

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')
NLVR2 = (
    '--config.objective=nlvr2',
    '--config.model.kind=fusion',
    '--config.model.text.fusion_layers=1',
    '--config.model.text.fusion_images=2',
    '--config.model.head=mlp',
    '--config.model.head_classes=2',
    '--config.data.name=shapes_nlvr2',
    '--config.data.shapes_nlvr2.train_size=128',
    '--config.data.shapes_nlvr2.test_size=16',
    '--config.eval.batch_size=16',
)


@pytest.mark.slow
def test_nlvr2_from_a_pretrained_run_one_and_eight_devices_agree_and_resume_bit_exactly_after_sigkill(tmp_path):
    """NLVR2 (paired fusion layers, a second image in the batch, a new head) warm-started from a one-image fusion
    checkpoint: 8 devices equal 1, a run SIGKILLed after its step-5 checkpoint resumes to the straight run's
    every metric exactly, and `evaluate` on the workdir reproduces the final eval."""
    pretrained = tmp_path / 'pretrained'
    fusion_setup = setup_lib.build(make_config(*FUSION, devices=1), jax.devices()[:1])
    with Checkpointer(pretrained / 'checkpoints', keep=1) as checkpointer:
        checkpointer.save(1, fusion_setup.init_state(), {'pipeline': {'next_step': 1, 'seed': 0}})
    args = lambda workdir: [
        '--config',
        f'{TINY_CONFIG}:steps=10',
        '--workdir',
        str(workdir),
        *FAST_OVERRIDES,
        *NLVR2,
        '--config.log_every=1',
        '--config.checkpoint_every=5',
        '--config.eval_every=10',
        f'--config.model.init_checkpoint={pretrained}',
    ]
    run_cli('vlp_jax.train', args(tmp_path / 'eight'), devices=8)
    straight = run_cli('vlp_jax.train', args(tmp_path / 'one'))
    assert 'new: cls_head (4)' in straight.stdout and 'two-image fusion layers' in straight.stdout
    kill_after_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed', 5)
    resumed = run_cli('vlp_jax.train', args(tmp_path / 'killed'))
    assert 'resumed from checkpoint at step 5' in resumed.stdout
    eight, one, killed = (read_metrics(tmp_path / name) for name in ('eight', 'one', 'killed'))
    train = lambda records: [r for r in records if 'train/loss' in r]
    np.testing.assert_allclose(
        [r['train/loss'] for r in train(eight)], [r['train/loss'] for r in train(one)], rtol=1e-3
    )
    from vlp_jax.metrics import SPEED_KEYS as timing

    for a, b in zip(one, killed):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    final = [r for r in one if 'eval/nlvr2/accuracy' in r][-1]
    evaluated = run_cli('vlp_jax.evaluate', ['--workdir', str(tmp_path / 'one')])
    assert f'{final["eval/nlvr2/accuracy"]}' in evaluated.stdout or f'{final["eval/nlvr2/accuracy"]:.4f}' in (
        evaluated.stdout
    )


@pytest.mark.slow
def test_retrieval_with_the_momentum_queue_resumes_bit_exactly_after_sigkill(tmp_path):
    """Retrieval fine-tuning with ALBEF's momentum model (EMA params, a queue of embeddings and image ids in the
    objective's extra state): a run SIGKILLed after its step-4 checkpoint resumes to the straight run's every
    metric exactly, so the queue, its ids and the momentum params are all checkpointed."""
    args = lambda workdir: [
        '--config',
        f'{TINY_CONFIG}:steps=8',
        '--workdir',
        str(workdir),
        *FAST_OVERRIDES,
        '--config.objective=retrieval_ft',
        '--config.model.kind=fusion',
        '--config.model.text.fusion_layers=1',
        '--config.data.name=shapes_retrieval',
        '--config.data.shapes_retrieval.train_size=128',
        '--config.data.shapes_retrieval.test_size=16',
        '--config.eval.batch_size=16',
        '--config.loss.momentum.enabled=True',
        '--config.loss.momentum.queue_size=64',
        '--config.loss.momentum.alpha_ramp_steps=4',
        '--config.log_every=1',
        '--config.checkpoint_every=4',
        '--config.eval_every=8',
    ]
    straight = run_cli('vlp_jax.train', args(tmp_path / 'one'))
    assert 'eval/retrieval_ft/r_mean' in (tmp_path / 'one' / 'metrics.jsonl').read_text(), straight.stdout
    kill_after_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed', 4)
    resumed = run_cli('vlp_jax.train', args(tmp_path / 'killed'))
    assert 'resumed from checkpoint at step 4' in resumed.stdout
    one, killed = (read_metrics(tmp_path / name) for name in ('one', 'killed'))
    assert [r['train/momentum/alpha'] for r in one if 'train/momentum/alpha' in r][-1] == pytest.approx(0.4)
    from vlp_jax.metrics import SPEED_KEYS as timing

    for a, b in zip(one, killed):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
