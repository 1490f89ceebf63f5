"""Fashion-MNIST -> PNG files + a captions CSV, the input of `python -m vlp_jax.data.prepare`.

    python -m vlp_jax.data.fashion_mnist OUTPUT_DIR [--split train|test] [--limit N]

Reads the idx files of the Debian package dataset-fashion-mnist (70,000 real 28x28 greyscale
photos of 10 clothing classes, MIT licence) and writes

    OUTPUT_DIR/<split>/<index>.png   greyscale PNG, pixels exactly as stored
    OUTPUT_DIR/<split>.csv           columns image (path relative to the CSV), caption, label
    OUTPUT_DIR/classes.txt           the 10 class names, one per line, in label order

Captions are class-name templates (TRAIN_TEMPLATES). EVAL_TEMPLATES are a disjoint, held-out
set never written into a caption: the prompts of a zero-shot benchmark that must not have been
seen in training. The idx parser is written here from the format spec (gzip; a 4-byte magic
0x00 0x00 <type> <ndim>, ndim big-endian uint32 sizes, then the data), no dependency needed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import struct
import sys
from collections.abc import Sequence

import numpy as np

DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
SPLIT_FILES = {  # split -> (images, labels)
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
CLASS_NAMES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
# Training captions: image i's k-th caption uses TRAIN_TEMPLATES[(i + k) % len], so every template is used.
TRAIN_TEMPLATES = (
    'a photo of a {}.',
    'a picture of a {}.',
    'a product photo of a {}.',
    'a {} on a plain background.',
    'a close-up photo of a {}.',
    'an image of a {}.',
)
# Held out: never in a caption (none is a training template); the prompts of a zero-shot benchmark.
EVAL_TEMPLATES = (
    'a black and white photo of the {}.',
    'a low resolution photo of the {}.',
    'a grayscale image showing one {}.',
    'itap of the {}.',
)
CLASSES_FILE = 'classes.txt'
CSV_COLUMNS = ('image', 'caption', 'label')

IDX_UBYTE = 0x08  # the idx type code of unsigned bytes: the only one these files use
IDX_IMAGES_NDIM, IDX_LABELS_NDIM = 3, 1
EXIT_USER_ERROR = 2


class FashionMnistError(ValueError):
    """Missing or unreadable input files, or bad arguments; one sentence naming the thing."""


def read_idx(path: str) -> np.ndarray:
    """A gzipped idx file of unsigned bytes -> uint8 array of its stored shape."""
    with gzip.open(path, 'rb') as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise FashionMnistError(f'{path} is not an idx file (its magic number does not start with two zero bytes).')
    type_code, ndim = data[2], data[3]
    if type_code != IDX_UBYTE:
        raise FashionMnistError(f'{path} holds idx type 0x{type_code:02x}; only unsigned bytes (0x08) are supported.')
    header = 4 + 4 * ndim
    shape = struct.unpack(f'>{ndim}I', data[4:header])
    count = int(np.prod(shape))
    if len(data) != header + count:
        raise FashionMnistError(f'{path} holds {len(data) - header} data bytes but its header says {count}.')
    return np.frombuffer(data, np.uint8, count, header).reshape(shape)


def load_split(split: str, source_dir: str = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of 'train' or 'test'."""
    image_file, label_file = (os.path.join(source_dir, name) for name in SPLIT_FILES[split])
    for path in (image_file, label_file):
        if not os.path.isfile(path):
            raise FashionMnistError(
                f'{path} does not exist; install the Debian package {DEBIAN_PACKAGE} '
                f'(apt-get install {DEBIAN_PACKAGE}) or pass --source_dir DIR holding the idx files.'
            )
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != IDX_IMAGES_NDIM or labels.ndim != IDX_LABELS_NDIM or len(images) != len(labels):
        raise FashionMnistError(
            f'{image_file} ({images.shape}) and {label_file} ({labels.shape}) are not N images and N labels.'
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise FashionMnistError(f'{label_file} has label {labels.max()}; Fashion-MNIST has {len(CLASS_NAMES)} classes.')
    return images, labels


def captions(index: int, label: int, per_image: int) -> list[str]:
    """The captions of image `index`: `per_image` distinct training templates, rotating with the index."""
    chosen = (TRAIN_TEMPLATES[(index + k) % len(TRAIN_TEMPLATES)] for k in range(per_image))
    return [template.format(CLASS_NAMES[label]) for template in chosen]


def convert(
    output_dir: str,
    split: str = 'train',
    limit: int | None = None,
    source_dir: str = DEBIAN_DIR,
    captions_per_image: int = 1,
) -> str:
    """Writes the PNGs, classes.txt and the split's CSV (last, via a rename: a CSV never names a missing
    PNG); returns the CSV's path. Each caption is one row, so an image appears `captions_per_image` times."""
    if limit is not None and limit < 1:
        raise FashionMnistError(f'--limit must be a positive number of images, got {limit}.')
    if not 1 <= captions_per_image <= len(TRAIN_TEMPLATES):
        raise FashionMnistError(
            f'--captions_per_image must be in [1, {len(TRAIN_TEMPLATES)}] (one per template), got {captions_per_image}.'
        )
    from PIL import Image

    images, labels = load_split(split, source_dir)
    images, labels = images[:limit], labels[:limit]
    os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    with open(os.path.join(output_dir, CLASSES_FILE), 'w') as handle:
        handle.write(''.join(f'{name}\n' for name in CLASS_NAMES))
    digits = len(str(len(images) - 1))
    rows = []
    for index, (image, label) in enumerate(zip(images, labels)):
        relative = f'{split}/{index:0{digits}d}.png'
        Image.fromarray(image).save(os.path.join(output_dir, relative))
        rows.extend((relative, caption, int(label)) for caption in captions(index, int(label), captions_per_image))
    csv_path = os.path.join(output_dir, f'{split}.csv')
    with open(csv_path + '.tmp', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    os.replace(csv_path + '.tmp', csv_path)
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output_dir', help='folder for <split>/*.png, <split>.csv and classes.txt')
    parser.add_argument('--split', choices=tuple(SPLIT_FILES), default='train')
    parser.add_argument('--limit', type=int, default=None, help='convert only the first N images')
    parser.add_argument('--captions_per_image', type=int, default=1, help='CSV rows (distinct templates) per image')
    parser.add_argument('--source_dir', default=DEBIAN_DIR, help=f'the idx .gz files (default: {DEBIAN_PACKAGE})')
    args = parser.parse_args(argv)
    try:
        path = convert(args.output_dir, args.split, args.limit, args.source_dir, args.captions_per_image)
    except FashionMnistError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    print(f'wrote {path} and {os.path.join(args.output_dir, CLASSES_FILE)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
