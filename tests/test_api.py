"""The library API (vlp_jax/api.py): a CLI-trained checkpoint (the shared LiT run: 8 devices, FSDP)
loaded by path on this process's devices embeds as the evaluator does, its embeddings are unit-norm,
and zero-shot predictions are the numpy argmax of image x class-mean-prompt similarities; the eval
resize + centre crop is checked on stripe images."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG
from lit_workdir import OVERRIDES, STEPS, lit_workdir
from PIL import Image

import vlp_jax
from vlp_jax.api import preprocess_images
from vlp_jax.checkpointing import CheckpointError

pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

TEMPLATES = ('a photo of a {}.', 'a drawing of a {} shape.')
CLASSES = ('circle', 'square', 'triangle', 'star')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return lit_workdir(tmp_path_factory)


def _evaluator_embeddings(workdir, images_uint8, captions):
    """What the zero-shot evaluator computes: the setup's encoders through embed_in_batches."""
    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import restore_params_from
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    from vlp_jax.data.batch import normalise_images
    from vlp_jax.data.tokenizer import shared_tokenizer
    from vlp_jax.evaluators.embedding import embed_in_batches

    config = load_config_file(f'{TINY_CONFIG}:steps={STEPS}')
    apply_overrides(config, split_overrides(list(OVERRIDES))[1])
    run_setup = setup_lib.build(config)
    params = restore_params_from(workdir, run_setup.abstract_state['params'])
    encode_images, encode_texts = run_setup.encoders()
    batch, mesh = int(config.eval.batch_size), run_setup.mesh
    tokens = shared_tokenizer(int(config.model.max_text_len))(captions)
    images = embed_in_batches(lambda x: encode_images(params, x), (normalise_images(images_uint8),), batch, mesh)
    texts = embed_in_batches(
        lambda i, m: encode_texts(params, i, m), (tokens['text_ids'], tokens['text_mask']), batch, mesh
    )
    return images, texts


def _test_examples():
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    from vlp_jax.derived import source_plugin

    config = load_config_file(TINY_CONFIG)
    apply_overrides(config, split_overrides(list(OVERRIDES))[1])
    examples = source_plugin(config, 'shapes').open('test').batch(np.arange(40))
    return examples['image'], [caption for per_image in examples['captions'] for caption in per_image]


def test_loaded_model_embeds_like_the_evaluator_and_classifies_by_numpy_argmax(trained):
    images, captions = _test_examples()
    model = vlp_jax.load(trained)
    assert model.step == STEPS and model.image_size == images.shape[1]
    assert vlp_jax.load(trained / 'checkpoints' / str(STEPS)).step == STEPS
    image_embed, text_embed = model.encode_images(images), model.encode_texts(captions)
    want_images, want_texts = _evaluator_embeddings(trained, images, captions)
    np.testing.assert_allclose(image_embed, want_images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(text_embed, want_texts, rtol=0, atol=1e-6)
    for embed in (image_embed, text_embed):
        np.testing.assert_allclose(np.linalg.norm(embed, axis=1), 1.0, atol=1e-5)
    # One image, unbatched, and a PIL image give the same row as the batch.
    np.testing.assert_allclose(model.encode_images(images[3])[0], image_embed[3], atol=1e-6)
    np.testing.assert_allclose(model.encode_images([Image.fromarray(images[3])])[0], image_embed[3], atol=1e-6)

    classifier = model.zero_shot_classifier(CLASSES, TEMPLATES)
    prompts = model.encode_texts([t.format(name) for name in CLASSES for t in TEMPLATES])
    means = prompts.reshape(len(CLASSES), len(TEMPLATES), -1).astype(np.float64).mean(axis=1)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    scores = image_embed.astype(np.float64) @ means.T
    np.testing.assert_array_equal(classifier.classify(images), np.argmax(scores, axis=1))
    np.testing.assert_allclose(classifier.logits(images), model.logit_scale * scores, rtol=1e-5, atol=1e-5)


def test_paths_that_are_not_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist') as missing:
        vlp_jax.load(tmp_path / 'nope')
    (tmp_path / 'junk').mkdir()
    with pytest.raises(CheckpointError, match='is not a vlp_jax checkpoint') as junk:
        vlp_jax.load(tmp_path / 'junk')
    for error in (missing, junk):
        assert '\n' not in str(error.value)


def _stripes(height, width, horizontal):
    """Three equal bands, red | green | blue: top to bottom when `horizontal`, else left to right."""
    image = np.zeros((height, width, 3), np.uint8)
    span = (height if horizontal else width) // 3
    for band in range(3):
        rows_or_columns = slice(band * span, (band + 1) * span)
        if horizontal:
            image[rows_or_columns, :, band] = 255
        else:
            image[:, rows_or_columns, band] = 255
    return image


def test_eval_preprocessing_resizes_the_shorter_side_and_crops_the_centre():
    size = 64
    square = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_images(square, size), square)  # already the model's size: untouched
    green = np.array([0, 255, 0], np.uint8)
    for height, width, horizontal in ((150, 450, False), (450, 150, True), (30, 90, False)):
        out = preprocess_images(_stripes(height, width, horizontal), size)
        assert out.shape == (1, size, size, 3) and out.dtype == np.uint8
        # Shorter side -> 64, longer -> 192: the centre crop is the middle band; only the crop's outer
        # two pixels may blend with the neighbouring bands.
        inner = out[0, 2:-2] if horizontal else out[0, :, 2:-2]
        np.testing.assert_array_equal(inner, np.broadcast_to(green, inner.shape))
    grey = Image.fromarray(np.full((40, 40), 77, np.uint8))
    np.testing.assert_array_equal(preprocess_images(grey, size), np.full((1, size, size, 3), 77, np.uint8))
    with pytest.raises(ValueError, match='uint8'):
        preprocess_images(square.astype(np.float32), size)


NO_TENSORFLOW = """
import sys

# None in sys.modules is how Python spells 'not installed': imports fail, find_spec answers None.
sys.modules.update(tensorflow=None, tensorflow_datasets=None)
import numpy as np
import vlp_jax, vlp_jax.optim
model = vlp_jax.load(sys.argv[1])
print(model.encode_texts(['a red circle']).shape, model.encode_images(np.zeros((30, 50, 3), np.uint8)).shape)
"""


def test_library_api_and_optimizer_work_without_tensorflow(trained):
    """As on the GPU machines, which have no TensorFlow: importing it would fail there."""
    result = subprocess.run(
        [sys.executable, '-c', NO_TENSORFLOW, str(trained)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split('\n')[-2] == '(1, 32) (1, 32)'
