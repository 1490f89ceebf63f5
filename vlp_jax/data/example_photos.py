"""Real photos for tests and examples: scikit-image's CC0 / public-domain photos with our own captions.

`python -m vlp_jax.data.example_photos OUT.csv` writes a table that `vlp_jax.data.prepare`
reads: one row per caption, image paths pointing into the installed `skimage/data`
folder. The captions (3-5 per photo, written by looking at each photo) and each photo's
licence are in `photos/captions.jsonl`, which ships with the package.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence

CAPTIONS_FILE = os.path.join(os.path.dirname(__file__), 'photos', 'captions.jsonl')


def photo_captions() -> list[dict]:
    """[{'image': file name in skimage/data, 'licence': ..., 'captions': [...]}, ...] in file order."""
    with open(CAPTIONS_FILE, encoding='utf-8') as handle:
        return [json.loads(line) for line in handle if line.strip()]


def skimage_data_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), 'data')


def write_csv(path: str) -> int:
    """Writes the prepare-ready CSV (image,caption; absolute image paths); returns the number of photos."""
    photos = photo_captions()
    folder = skimage_data_dir()
    with open(path, 'w', encoding='utf-8', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['image', 'caption'])
        for photo in photos:
            for caption in photo['captions']:
                writer.writerow([os.path.join(folder, photo['image']), caption])
    return len(photos)


def main(argv: Sequence[str] | None = None) -> int:
    """argparse, so `--help` is help and never a file name."""
    parser = argparse.ArgumentParser(prog='python -m vlp_jax.data.example_photos', description=__doc__.split('\n')[0])
    parser.add_argument('out_csv', help='the table to write (image,caption rows), e.g. photos.csv')
    args = parser.parse_args(argv)
    count = write_csv(args.out_csv)
    print(f'wrote {args.out_csv}: {count} photos; next: python -m vlp_jax.data.prepare {args.out_csv} OUTPUT_DIR')
    return 0


if __name__ == '__main__':
    sys.exit(main())
