"""The numpy input path (data/np_augment.py, data.backend='numpy'): TF's augmentations redone in numpy,
the same batches as the tf.data path, determinism and resume, and a run on a machine without TensorFlow.

What is compared with TensorFlow: the crop box and the flip of every example are drawn once, by the
shared loader (TrainPipeline.raw_batch), so both paths receive the very same random parameters; what
differs is only the arithmetic after loading (crop_and_resize, flip, normalisation), compared here
pixel for pixel (tolerance 1e-6: float rounding; on the development machine they agree bit for bit).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, make_config, train_pipeline

from vlp_jax.config import ConfigError
from vlp_jax.data import backend as input_backend
from vlp_jax.data import batch as batch_spec
from vlp_jax.data import fashion_mnist_source as fms
from vlp_jax.data.errors import DataError
from vlp_jax.data.np_augment import crop_and_resize, numpy_batches
from vlp_jax.data.sources import Source

ATOL = 1e-6  # float rounding of the resized pixels in [0, 1] (or [-1, 1] after normalisation)


def _config():
    """The tiny shapes config at batch 16 over 100 images (6 steps an epoch), forced onto the numpy path."""
    return make_config('--config.batch_size=16', '--config.data.shapes.train_size=100', '--config.data.backend=numpy')


def _fashion_source(count=48, seed=0):
    """Fashion-MNIST's in-memory source over random 28-px grey images (no idx files needed)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    return fms.FashionMnistSource(images, labels, fms.FashionMnistSettings(), seed=0, split='train')


def test_crop_and_resize_by_hand():
    """An independent reference: a 2x2 image sampled at 3x3 over the whole image takes the corners, the
    edge midpoints and the centre; the full box at the image's own size is the identity; a box reaching
    outside the image samples 0 there; size 1 takes the box's centre."""
    image = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)[None, :, :, None]
    full = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    expected = np.array([[0.0, 0.5, 1.0], [1.0, 1.75, 2.5], [2.0, 3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(crop_and_resize(image, full, 3)[0, :, :, 0], expected)
    pixels = np.random.default_rng(0).uniform(size=(2, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(crop_and_resize(pixels, np.repeat(full, 2, 0), 5), pixels)
    left_half_outside = np.array([[0.0, -1.0, 1.0, 1.0]], np.float32)  # columns sample x = -1, -0.5, 0, 0.5, 1
    out = crop_and_resize(image, left_half_outside, 5)[0, :, :, 0]
    np.testing.assert_array_equal(out[:, :2], 0.0)
    np.testing.assert_array_equal(out[[0, -1], 2:], [[0.0, 0.5, 1.0], [2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(crop_and_resize(image, full, 1)[0, 0, 0, 0], 1.75)


@pytest.mark.parametrize(
    'height,width,size',
    [(28, 28, 28), (64, 64, 64), (30, 50, 17), (8, 8, 20), (5, 7, 1), (28, 28, 2)],
)
def test_crop_and_resize_matches_tensorflow(height, width, size):
    """The tf.data graph's ops (uint8 pixels cast and divided by 255, tf.image.crop_and_resize bilinear,
    tf.reverse of the flipped examples) and the numpy version on the same pixels, boxes and flips: boxes of
    the pipeline's kind, the full image, and boxes that reach outside the image (TF's extrapolation)."""
    tf = pytest.importorskip('tensorflow')
    rng = np.random.default_rng(height * 1000 + width * 10 + size)
    count = 12
    pixels = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    top, left = rng.uniform(-0.1, 0.6, count), rng.uniform(-0.1, 0.6, count)
    boxes = np.stack([top, left, top + rng.uniform(0.1, 0.6, count), left + rng.uniform(0.1, 0.6, count)], 1)
    boxes = boxes.astype(np.float32)
    boxes[0] = [0.0, 0.0, 1.0, 1.0]
    flips = rng.random(count) < 0.5
    flips[:2] = [False, True]
    scaled = tf.cast(pixels, tf.float32) / 255.0
    crops = tf.image.crop_and_resize(scaled, boxes, tf.range(count), [size, size], method='bilinear')
    expected = tf.where(flips[:, None, None, None], tf.reverse(crops, axis=[2]), crops).numpy()
    ours = crop_and_resize(pixels, boxes, size, divisor=255.0, flips=flips)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(crop_and_resize(pixels, boxes, size, divisor=255.0), crops.numpy(), rtol=0, atol=ATOL)


def _pipelines(config, source=None):
    numpy_path = train_pipeline(config, source=source)
    config.data.backend = 'tf'
    return numpy_path, train_pipeline(config, source=source)


@pytest.mark.parametrize('flip', ['auto', 'always'])
def test_shapes_batches_match_the_tf_data_path(flip):
    """The shapes world (64-px images, crop scale 0.5-1 so boxes differ visibly) through both paths: the
    same keys, dtypes and token ids, and the same pixels up to rounding."""
    pytest.importorskip('tensorflow')
    config = _config()
    config.data.flip, config.data.crop_scale = flip, (0.5, 1.0)
    numpy_path, tf_path = _pipelines(config)
    assert (numpy_path.backend, tf_path.backend) == ('numpy', 'tf')
    for ours, theirs in zip(numpy_path.iterate(0, 3), tf_path.iterate(0, 3), strict=True):
        assert set(ours) == set(theirs)
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
            if key == 'image':
                np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=ATOL)
            else:
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_fashion_mnist_batches_match_the_tf_data_path():
    """Fashion-MNIST's grey 28-px photos resized to 20 px (crop and resize both at work)."""
    pytest.importorskip('tensorflow')
    config = _config()
    config.model.image_size = 20
    config.data.flip = 'always'
    numpy_path, tf_path = _pipelines(config, source=_fashion_source())
    ours, theirs = next(numpy_path.iterate(1, 2)), next(tf_path.iterate(1, 2))
    assert ours['image'].shape == (16, 20, 20, 3)
    np.testing.assert_allclose(ours['image'], theirs['image'], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(ours['sem'], theirs['sem'])
    np.testing.assert_array_equal(ours['text_ids'], theirs['text_ids'])


def test_numpy_batches_have_the_batch_spec():
    """Every key the train step may read, with the spec's dtype and rank; augmentation keys consumed."""
    config = _config()
    pipeline = train_pipeline(config)
    batch = next(pipeline.iterate(0, 1))
    expected = set(pipeline.loaded_keys) - set(batch_spec.AUGMENT_KEYS)
    batch_spec.check(batch, tuple(expected))
    assert batch['image'].shape == (16, 64, 64, 3)
    assert batch['text_ids'].shape == (16, config.model.max_text_len)
    assert -1.0 - 1e-6 <= batch['image'].min() and batch['image'].max() <= 1.0 + 1e-6


def test_flip_mirrors_the_unflipped_crop():
    """With no crop (scale 1 and square boxes) an example flipped under flip='always' is the mirror image of
    the same example under flip='never'."""
    config = _config()
    config.data.crop_scale = (1.0, 1.0)
    config.data.flip = 'always'
    flipped_pipeline = train_pipeline(config)
    config.data.flip = 'never'
    plain = next(train_pipeline(config).iterate(0, 1))
    flipped = next(flipped_pipeline.iterate(0, 1))
    mirrored = flipped_pipeline.raw_batch(0)['flip']
    assert mirrored.any() and not mirrored.all()
    np.testing.assert_allclose(flipped['image'][mirrored], plain['image'][mirrored][:, :, ::-1], atol=1e-6)
    np.testing.assert_array_equal(flipped['image'][~mirrored], plain['image'][~mirrored])


def test_numpy_path_is_deterministic_and_resumes():
    """Batch k depends on (seed, k) only: a fresh pipeline started at step 6 (a restore) gives the batches of
    an uninterrupted one, through an epoch boundary (6 steps an epoch); another seed gives others."""
    config = _config()
    straight = list(train_pipeline(config).iterate(0, 9))
    resumed = list(train_pipeline(config).iterate(6, 9))
    assert train_pipeline(config).steps_per_epoch == 6
    for a, b in zip(straight[6:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(straight[0]['image'], straight[1]['image'])
    config.seed = 1
    other = next(train_pipeline(config).iterate(0, 1))
    assert not np.array_equal(other['index'], straight[0]['index'])


def test_numpy_process_slices_make_up_the_global_batch():
    """Each of 4 processes builds its quarter of every global batch; together they are one process's batch."""
    config = _config()
    whole = next(train_pipeline(config).iterate(4, 5))
    parts = [next(train_pipeline(config, process_index=p, process_count=4).iterate(4, 5)) for p in range(4)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key], err_msg=key)


def test_prefetch_keeps_order_with_more_workers_than_steps():
    """Four worker threads and eight steps ahead still hand the batches over in step order."""
    config = _config()
    config.data.workers, config.data.prefetch = 4, 4
    pipeline = train_pipeline(config)
    indices = [batch['index'] for batch in numpy_batches(pipeline, 2, 5)]
    for step, index in zip(range(2, 5), indices, strict=True):
        np.testing.assert_array_equal(index, pipeline.local_indices(step))


def test_an_order_known_only_at_its_epoch_is_asked_for_then():
    """A sampler like GRIT's (order_known_ahead False): the numpy path stops at the epoch's end and takes
    the next epoch's order when its first batch is loaded."""
    from test_pipeline import GivenOrders

    from vlp_jax import setup

    config = _config()
    source = setup.train_inputs(config).source
    random = setup.make_sampler(config, source)
    sampler = GivenOrders(random.settings, random.context)
    pipeline = setup.pipeline(config, source, sampler)
    end_of_epoch = pipeline.steps_per_epoch
    batches = pipeline.iterate(end_of_epoch - 1, end_of_epoch + 1)
    first = next(batches)
    sampler.given[1] = np.arange(100)[::-1].copy()  # decided after the epoch's last batch was loaded
    np.testing.assert_array_equal(first['index'], pipeline.global_indices(end_of_epoch - 1))
    np.testing.assert_array_equal(next(batches)['index'], np.arange(100)[::-1][:16])


class EncodedToy(Source):
    encoded = True

    def __len__(self):
        return 32


def test_encoded_source_on_the_numpy_path_is_one_line():
    config = _config()
    with pytest.raises(DataError, match="data.backend='numpy'") as error:
        train_pipeline(config, source=EncodedToy())
    assert '\n' not in str(error.value)


@pytest.mark.parametrize(
    'overrides,message',
    [
        (('--config.data.name=records', '--config.data.records.path=/nowhere'), "data.name='records' needs"),
        (('--config.eval.sets=default,retrieval:records:/nowhere',), 'eval.sets entry retrieval:records:/nowhere'),
    ],
)
def test_sources_that_need_tensorflow_are_refused_on_the_numpy_path(overrides, message):
    """One line, from the checks (before anything is built): the source, the backend, what to do."""
    config = make_config('--config.data.backend=numpy', *overrides)
    with pytest.raises(ConfigError, match=message) as error:
        from vlp_jax.checks import check_input_backend

        check_input_backend(config)
    assert '\n' not in str(error.value) and 'tensorflow-cpu' in str(error.value)


def test_auto_and_tf_backends_follow_whether_tensorflow_is_installed(monkeypatch):
    monkeypatch.setattr(input_backend, 'tensorflow_installed', lambda: False)
    assert input_backend.resolve('auto') == 'numpy'
    assert "data.backend='tf' needs TensorFlow" in input_backend.problem('tf')
    monkeypatch.setattr(input_backend, 'tensorflow_installed', lambda: True)
    assert input_backend.resolve('auto') == 'tf' and input_backend.problem('tf') is None
    assert input_backend.resolve('numpy') == 'numpy'


# The machine without TensorFlow, simulated: Python's own way to make a module unimportable (None in
# sys.modules: `import` raises ModuleNotFoundError, importlib.util.find_spec answers None, as for a
# package that is not installed), plus a hook that records every import statement naming it, so a
# `try: import tensorflow` that would load it where it is installed is caught too.
NO_TENSORFLOW = textwrap.dedent(
    """
    import builtins, runpy, sys
    BLOCKED = ('tensorflow', 'tensorflow_datasets')
    for name in BLOCKED:
        sys.modules[name] = None
    attempts, real_import = [], builtins.__import__

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split('.')[0] in BLOCKED:
            attempts.append(name)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = recording_import
    try:
        import tensorflow  # noqa: F401  the block itself works
        raise SystemExit('tensorflow imported despite the block')
    except ImportError:
        attempts.clear()
    sys.argv = ['vlp_jax.train', *sys.argv[1:]]
    try:
        runpy.run_module('vlp_jax.train', run_name='__main__', alter_sys=True)
    finally:
        loaded = [m for m, module in sys.modules.items() if m.startswith('tensorflow') and module is not None]
        print('tensorflow imports tried:', attempts, 'loaded:', loaded, flush=True)
    """
)


def _run_without_tensorflow(*args):
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1')
    return subprocess.run(
        [sys.executable, '-c', NO_TENSORFLOW, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_training_runs_and_resumes_without_tensorflow(tmp_path):
    """configs/shapes_tiny.py (tiny overrides) trains 2 steps, stops, resumes to 4 and evaluates with
    TensorFlow unimportable; nothing tries to import it; a records source is refused in one line."""
    workdir = tmp_path / 'run'
    args = [f'--config={TINY_CONFIG}:steps=4', f'--workdir={workdir}', *FAST_OVERRIDES, '--config.log_every=2']
    first = _run_without_tensorflow(*args, '--stop_at_step=2')
    assert first.returncode == 0, first.stdout + first.stderr
    assert "input pipeline: numpy, without TensorFlow (data.backend='auto' and TensorFlow is not installed)" in (
        first.stdout
    )
    second = _run_without_tensorflow(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'resumed from checkpoint at step 2' in second.stdout and '"step": 4' in second.stdout
    for result in (first, second):
        assert 'tensorflow imports tried: [] loaded: []' in result.stdout, result.stdout
    refused = _run_without_tensorflow(
        *args[:-1], f'--workdir={tmp_path / "records"}', '--config.data.name=records', '--config.data.records.path=x'
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: data.name='records' needs the tf.data input path")
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
