"""Fashion-MNIST conversion (vlp_jax/data/fashion_mnist.py), checked against idx files written here by
hand from the format spec, and, where the Debian package is installed, against its counts and the
first label of each split (read by hand from the files: 9, Ankle boot, in both)."""

import csv
import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from vlp_jax.data import fashion_mnist as fm

IMAGES, LABELS = 'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'


def _write_idx(path, array):
    """idx by the spec: bytes 0, 0, type 0x08 (unsigned byte), ndim; each size big-endian uint32; the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(struct.pack('>I', size) for size in array.shape)
    with gzip.open(path, 'wb') as handle:
        handle.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture
def tiny_source(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3, 8, 1, 5], np.uint8)
    source = tmp_path / 'source'
    source.mkdir()
    _write_idx(source / IMAGES, images)
    _write_idx(source / LABELS, labels)
    return source, images, labels


def _rows(csv_path):
    with open(csv_path, newline='') as handle:
        return list(csv.DictReader(handle))


def test_pngs_and_csv_decode_back_to_the_idx_pixels_and_labels(tiny_source, tmp_path):
    source, images, labels = tiny_source
    out = tmp_path / 'out'
    assert fm.main([str(out), '--split', 'train', '--source_dir', str(source), '--captions_per_image', '2']) == 0
    rows = _rows(out / 'train.csv')
    assert list(rows[0]) == ['image', 'caption', 'label'] and len(rows) == 2 * len(images)
    for i, (image, label) in enumerate(zip(images, labels)):
        mine = rows[2 * i : 2 * i + 2]
        assert {row['image'] for row in mine} == {f'train/{i}.png'}
        assert [int(row['label']) for row in mine] == [label, label]
        decoded = np.asarray(Image.open(out / mine[0]['image']))  # the path is relative to the CSV
        np.testing.assert_array_equal(decoded, image)
        name = fm.CLASS_NAMES[label]
        assert mine[0]['caption'] != mine[1]['caption']
        for row in mine:
            assert row['caption'] in {t.format(name) for t in fm.TRAIN_TEMPLATES}
    assert (out / 'classes.txt').read_text().splitlines() == [
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'
    ]  # fmt: skip


def test_limit_keeps_the_first_images(tiny_source, tmp_path):
    source, _, labels = tiny_source
    assert fm.main([str(tmp_path / 'out'), '--limit', '3', '--source_dir', str(source)]) == 0
    rows = _rows(tmp_path / 'out' / 'train.csv')
    assert [int(row['label']) for row in rows] == list(labels[:3])
    assert sorted(os.listdir(tmp_path / 'out' / 'train')) == ['0.png', '1.png', '2.png']


def test_eval_templates_are_held_out_of_every_caption():
    assert not set(fm.EVAL_TEMPLATES) & set(fm.TRAIN_TEMPLATES)
    written = {c for i in range(12) for label in range(10) for c in fm.captions(i, label, len(fm.TRAIN_TEMPLATES))}
    held_out = {t.format(name) for t in fm.EVAL_TEMPLATES for name in fm.CLASS_NAMES}
    assert written and not written & held_out


def test_user_errors_are_one_line_with_exit_status_2(tiny_source, tmp_path, capsys):
    source, images, _ = tiny_source
    assert fm.main([str(tmp_path / 'a'), '--source_dir', str(tmp_path / 'nowhere')]) == 2
    message = capsys.readouterr().err.strip()
    assert 'apt-get install dataset-fashion-mnist' in message and '\n' not in message
    _write_idx(source / LABELS, np.zeros(3, np.uint8))  # 7 images, 3 labels
    assert fm.main([str(tmp_path / 'b'), '--source_dir', str(source)]) == 2
    assert 'are not N images and N labels' in capsys.readouterr().err
    with gzip.open(source / IMAGES, 'wb') as handle:
        handle.write(b'\x12\x34\x08\x03' + b'\x00' * 12)
    assert fm.main([str(tmp_path / 'c'), '--source_dir', str(source)]) == 2
    assert 'is not an idx file' in capsys.readouterr().err
    assert fm.main([str(tmp_path / 'd'), '--limit', '0', '--source_dir', str(source)]) == 2
    assert not os.path.exists(tmp_path / 'd' / 'train.csv')


@pytest.mark.skipif(not os.path.isdir(fm.DEBIAN_DIR), reason='Debian package dataset-fashion-mnist not installed')
def test_debian_files_counts_and_first_labels(tmp_path):
    for split, count in (('train', 60_000), ('test', 10_000)):
        images, labels = fm.load_split(split)
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert labels[0] == 9 and fm.CLASS_NAMES[labels[0]] == 'Ankle boot'
        assert np.bincount(labels).tolist() == [count // 10] * 10  # balanced: count / 10 per class
    assert fm.main([str(tmp_path), '--split', 'test', '--limit', '2']) == 0
    rows = _rows(tmp_path / 'test.csv')
    assert [row['caption'] for row in rows] == ['a photo of a Ankle boot.', 'a picture of a Pullover.']
