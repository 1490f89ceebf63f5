"""Fashion-MNIST as an in-memory source (vlp_jax/data/fashion_mnist_source.py), on idx files written here
by hand from the format spec (test_fashion_mnist._write_idx).

The super-classes are checked against the false-negative shares worked out by hand from Fashion-MNIST's
class list (10 balanced classes): 'class' 10 x 0.1^2 = 0.10; 'group5' = light tops {T-shirt, Shirt},
long garments {Trouser, Dress}, warm tops {Pullover, Coat}, footwear {Sandal, Sneaker, Ankle boot},
bags {Bag}: 3 x 0.2^2 + 0.3^2 + 0.1^2 = 0.22; 'group2' = clothing (6 classes) vs accessories
(Sandal, Sneaker, Bag, Ankle boot): 0.6^2 + 0.4^2 = 0.52.
"""

import numpy as np
import pytest
from conftest import make_config, train_batches
from test_fashion_mnist import _write_idx

from vlp_jax.data import fashion_mnist_source as fms
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import SourceContext

ACCESSORY_CLASSES = {'Sandal', 'Sneaker', 'Bag', 'Ankle boot'}  # read off the class list by hand


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (('train', 40), ('t10k', 20)):
        _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.arange(count, dtype=np.uint8) % 10)
    return tmp_path


def _plugin(directory, **settings):
    settings = {'train_size': 40, 'test_size': 20, **settings}
    return fms.FashionMnistPlugin(
        fms.FashionMnistSettings(directory=str(directory), **settings), SourceContext(seed=3, image_size=28)
    )


@pytest.mark.parametrize('granularity, share', [('class', 0.10), ('group5', 0.22), ('group2', 0.52)])
def test_the_share_of_false_negatives_is_the_hand_worked_one(granularity, share):
    groups = fms.group_of(np.arange(10), granularity)
    same = groups[:, None] == groups[None, :]
    assert same.mean() == pytest.approx(share)


def test_group2_splits_clothing_from_accessories():
    from vlp_jax.data.fashion_mnist import CLASS_NAMES

    groups = fms.group_of(np.arange(10), 'group2')
    accessory = groups[[CLASS_NAMES.index(name) for name in ACCESSORY_CLASSES]]
    clothing = groups[[i for i, name in enumerate(CLASS_NAMES) if name not in ACCESSORY_CLASSES]]
    assert len(set(accessory)) == 1 and len(set(clothing)) == 1 and accessory[0] != clothing[0]


def test_batches_hold_the_idx_pixels_and_captions_of_their_group(idx_dir):
    from vlp_jax.data.fashion_mnist import read_idx

    pixels = read_idx(str(idx_dir / 'train-images-idx3-ubyte.gz'))
    source = _plugin(idx_dir, granularity='group2', captions_per_image=3).open('train')
    batch = source.batch(np.array([5, 0, 8]))
    assert batch['image'].shape == (3, 28, 28, 3) and batch['image'].dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(batch['image'][..., channel], pixels[[5, 0, 8]])
    assert list(batch['label']) == [1, 0, 1]  # classes 5 (Sandal), 0 (T-shirt), 8 (Bag)
    words = {0: ('clothing', 'garment'), 1: ('accessory', 'shoe or bag')}
    for captions, label in zip(batch['captions'], batch['label']):
        assert len(set(captions)) == 3
        assert all(any(word in caption for word in words[label]) for caption in captions), captions
    again = _plugin(idx_dir, granularity='group2', captions_per_image=3).open('train').batch(np.array([5]))
    assert again['captions'][0] == batch['captions'][0]  # a pure function of (seed, split, index)


def test_test_captions_use_only_held_out_templates_with_the_right_article(idx_dir):
    source = _plugin(idx_dir).open('test')
    captions = [c for row in source.batch(np.arange(20))['captions'] for c in row]
    train_prefixes = {t.split('{}')[0] for t in fms.TRAIN_TEMPLATES if t.split('{}')[0]}
    assert not any(caption.startswith(prefix) for caption in captions for prefix in train_prefixes)
    assert not any(' a ankle' in c or ' a overcoat' in c or ' a item' in c for c in captions)
    assert source.class_names[9] == 'ankle boot' and len(source.class_names) == 10


def test_caption_truth_is_same_group(idx_dir):
    source = _plugin(idx_dir, granularity='group5').open('test')
    examples = source.batch(np.arange(10))
    truth = source.caption_truth(examples)
    assert truth.shape == (20, 10)  # 2 test captions per image, image-major
    groups = fms.group_of(np.arange(10), 'group5')
    expected = np.repeat(groups, 2)[:, None] == groups[None, :]
    np.testing.assert_array_equal(truth, expected)


def test_bad_folders_and_sizes_are_one_line_errors(idx_dir, tmp_path):
    assert 'is not a folder' in _plugin(tmp_path / 'nowhere').check()
    with pytest.raises(DataError, match='asks 41 train images; the split has 40'):
        _plugin(idx_dir, train_size=41).open('train')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='dataset-fashion-mnist'):
        _plugin(tmp_path / 'empty').open('train')


def test_the_pipeline_serves_it(idx_dir):
    config = make_config(
        '--config.data.name=fashion_mnist',
        f'--config.data.fashion_mnist.directory={idx_dir}',
        '--config.data.fashion_mnist.train_size=40',
        '--config.model.image_size=28',
        '--config.model.vision.patch_size=4',
        '--config.batch_size=8',
    )
    (batch,) = train_batches(config)
    assert batch['image'].shape == (8, 28, 28, 3) and batch['text_ids'].shape[0] == 8


def test_the_probe_counts_same_group_pairs_as_false_negatives(idx_dir):
    """The in-step probe against the groups written out by hand: classes 0..9 at 'group2' are
    clothing except Sandal (5), Sneaker (7), Bag (8) and Ankle boot (9)."""
    source = _plugin(idx_dir, granularity='group2', captions_per_image=2).open('train')
    batch = source.batch(np.arange(10))
    assert batch['fields']['sem'].shape == (10, 2)
    accessory = np.isin(np.arange(10), [5, 7, 8, 9])
    expected = (accessory[:, None] == accessory[None, :]) & ~np.eye(10, dtype=bool)
    mask = source.ground_truth_probe().false_negatives({'sem': batch['fields']['sem'][:, 0]})
    np.testing.assert_array_equal(np.asarray(mask), expected)
