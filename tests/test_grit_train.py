"""GRIT in the training loop: config errors, the grouped order takes over, exact resume, 1 vs 8 devices."""

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, read_metrics, run_cli

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, apply_overrides
from vlp_jax.config_files import load_config_file

STEPS = 30  # 3 epochs of 10 steps
GRIT = (
    '--config.sampling.name=grit',
    '--config.data.shapes.train_size=320',
    '--config.sampling.grit.queue_size=192',
    '--config.sampling.grit.search_space=64',
    '--config.checkpoint_every=5',
)


def _args(workdir, extra=()):
    return ['--config', f'{TINY_CONFIG}:steps={STEPS}', '--workdir', str(workdir), *FAST_OVERRIDES, *GRIT, *extra]


@pytest.mark.parametrize(
    'queue, space, message',
    [
        (200, 64, 'queue_size'),  # not a multiple of the search space
        (192, 48, 'search_space'),  # not a multiple of the batch (32)
    ],
)
def test_bad_grit_sizes_are_config_errors(queue, space, message):
    config = load_config_file(TINY_CONFIG)
    apply_overrides(
        config,
        [
            ('batch_size', '32'),
            ('sampling.name', 'grit'),
            ('sampling.grit.queue_size', str(queue)),
            ('sampling.grit.search_space', str(space)),
        ],
    )
    with pytest.raises(ConfigError, match=message):
        validate(config, 1)


@pytest.fixture(scope='module')
def grit_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('grit')
    run_cli('vlp_jax.train', _args(workdir))
    return workdir


TRAINED_STEPS = 120  # 12 epochs: the last epoch's order is grouped from epoch 11's embeddings


@pytest.fixture(scope='module')
def trained_grit_run(tmp_path_factory):
    """GRIT long enough for the model to align images and captions (an untrained model's cross-modal
    cosines are noise, and grouping by noise makes no batch harder). The cosine schedule leaves the
    model nearly still over the last epoch, so its final params can judge the last grouping."""
    workdir = tmp_path_factory.mktemp('trained_grit')
    # keep_checkpoints=3 with checkpoint_every=5 keeps step 110 (the last epoch's start) to replay from.
    run_cli(
        'vlp_jax.train',
        _args(
            workdir, ('--config.optim.lr=2e-3', f'--config.total_steps={TRAINED_STEPS}', '--config.keep_checkpoints=3')
        ),
    )
    return workdir


def _negative_cosines(run_dir, order_of_epoch):
    """Mean cosine between the images and the non-matching captions of each batch of the last epoch, for the order
    `order_of_epoch(saved)` gives (saved = GRIT's order in the final checkpoint), judged by the final params.

    GRIT grouped that order from the previous epoch's embeddings, so each example is shown to the judge
    exactly as that epoch trained on it (its caption and augmentation, replayed from the checkpoint at the
    epoch's start): the comparison is then between orders alone.
    """
    import pathlib

    import jax
    import orbax.checkpoint as ocp

    from vlp_jax import parallel
    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import restore_params_from
    from vlp_jax.config import split_overrides

    config = load_config_file(f'{TINY_CONFIG}:steps={TRAINED_STEPS}')
    apply_overrides(config, split_overrides([*FAST_OVERRIDES, *GRIT])[1])
    judge = setup_lib.build(config, jax.devices()[:1])
    params = restore_params_from(run_dir, judge.abstract_state['params'])
    sampler_at = lambda step: ocp.StandardCheckpointer().restore(
        pathlib.Path(run_dir) / 'checkpoints' / str(step) / 'state'
    )['sampler']
    inputs = judge.train_inputs()  # the run's GRIT sampler and the pipeline over its orders
    pipeline = inputs.pipeline
    last_epoch = TRAINED_STEPS // pipeline.steps_per_epoch
    previous_start = (last_epoch - 1) * pipeline.steps_per_epoch
    saved_previous, saved_last = sampler_at(previous_start), sampler_at(TRAINED_STEPS)
    assert int(saved_previous['epoch']) == last_epoch - 1 and int(saved_last['epoch']) == last_epoch
    inputs.sampler.load({key: np.asarray(value) for key, value in saved_previous.items()})  # epoch last - 1's order
    seen = {}  # dataset index -> (image, ids, mask) as the previous epoch trained on it
    for batch in pipeline.iterate(previous_start, TRAINED_STEPS):
        for row, index in enumerate(batch['index']):
            seen[int(index)] = (batch['image'][row], batch['text_ids'][row], batch['text_mask'][row])
    encode_images, encode_texts = judge.encoders()
    put = lambda x: jax.device_put(x, parallel.batch_sharding(judge.mesh, x.ndim))
    order, size = order_of_epoch(np.asarray(saved_last['order'])), config.batch_size
    out = []
    for start in range(0, pipeline.steps_per_epoch * size, size):
        images, ids, mask = (np.stack(column) for column in zip(*(seen[int(i)] for i in order[start : start + size])))
        image_embed = parallel.to_host(encode_images(params, put(images)))
        text_embed = parallel.to_host(encode_texts(params, put(ids), put(mask)))
        sims = image_embed @ text_embed.T
        out.append(float(sims[~np.eye(len(sims), dtype=bool)].mean()))
    return np.array(out)


@pytest.mark.slow  # CI budget: ~30-60 s of 2-core CPU; run with -m slow
def test_grouped_batches_are_harder_than_random_for_a_fixed_model(trained_grit_run):
    """GRIT's order against a random permutation of the same examples, both judged by one model on the
    same inputs: grouped batches hold more similar negatives.

    (The mean over negatives, not the hardest one: in this small world a random batch of 32 already
    holds a near-duplicate for every anchor, so the maximum saturates at the same value for both.)
    """
    grit = _negative_cosines(trained_grit_run, lambda saved: saved)
    rng = np.random.default_rng(0)
    random = _negative_cosines(trained_grit_run, lambda saved: rng.permutation(saved))
    assert len(grit) == len(random) == 10
    # On average by a clear margin (several times the spread of the random batches).
    assert grit.mean() - random.mean() > 3 * random.std(), (grit, random)


@pytest.mark.slow  # CI budget: ~30-60 s of 2-core CPU; run with -m slow
def test_grit_resume_mid_epoch_after_a_queue_fill(grit_run, tmp_path):
    workdir = tmp_path / 'resumed'
    run_cli('vlp_jax.train', _args(workdir, ('--stop_at_step=17',)))  # epoch 1, after its first queue fill (step 16)
    second = run_cli('vlp_jax.train', _args(workdir))
    assert 'resumed from checkpoint at step 17' in second.stdout
    straight, resumed = read_metrics(grit_run), read_metrics(workdir)
    assert [r['step'] for r in straight] == [r['step'] for r in resumed]
    from vlp_jax.metrics import SPEED_KEYS as timing

    for a, b in zip(straight, resumed):
        for key in a:
            if key not in timing:
                np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=f'step {a["step"]} {key}')


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_grit_local_scope_and_local_negatives_one_and_eight_devices_agree(tmp_path):
    """GRIT-VLP's per-device setting: groups and negatives within each of 8 shards, on 8 devices and
    emulated on 1 (mesh.local_shards=8), give the same losses. (Were local_shards ignored on one
    device, its loss would be the global-negatives loss, and differ.)"""
    local = (
        '--config.sampling.grit.scope=local',
        '--config.loss.negatives=local',
        '--config.mesh.local_shards=8',
        '--config.total_steps=20',
    )
    run_cli('vlp_jax.train', _args(tmp_path / 'eight', local), devices=8)
    run_cli('vlp_jax.train', _args(tmp_path / 'one', local), devices=1)
    eight, one = read_metrics(tmp_path / 'eight'), read_metrics(tmp_path / 'one')
    assert [r['step'] for r in one] == [5, 10, 15, 20]
    np.testing.assert_allclose([r['train/loss'] for r in eight], [r['train/loss'] for r in one], rtol=1e-3)


def test_grit_one_and_eight_devices_agree(grit_run, tmp_path):
    eight = tmp_path / 'eight'
    run_cli('vlp_jax.train', _args(eight), devices=8)
    np.testing.assert_allclose(
        [r['train/loss'] for r in read_metrics(eight)], [r['train/loss'] for r in read_metrics(grit_run)], rtol=1e-3
    )
