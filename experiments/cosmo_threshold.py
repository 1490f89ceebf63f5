"""Calibrates COSMO's cosine threshold on Fashion-MNIST from the reference model alone, and says what it catches.

    .venv/bin/python experiments/cosmo_threshold.py --reference WORKDIR [--quantile 50] [--size 2048]

COSMO converts an anchor's hardest in-batch negative into a positive when the frozen reference scores
it above `loss.cosmo.high`. The default 0.8 is a CLIP-scale cosine; a small model trained for minutes
puts its matched pairs near 0.6 and converted nothing on Fashion-MNIST (precision and recall 0/0). The
rule here needs no labels: `high` = the `--quantile` percentile of the reference's cosines of matched
(image, caption) training pairs, i.e. a negative is converted when the reference scores it as high as a
typical true pair. With the ground truth this source knows (each caption's class), it also prints how
many of the reference's hardest negatives are false negatives and the conversion precision and recall
that threshold would give, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from common import REPO


def calibrate(reference: str, quantile: float = 50.0, size: int = 2048) -> dict[str, float]:
    """The label-free threshold and, from the ground truth, what it would convert in the run's batches (the
    reference's own config.json gives the data folder, granularity, training-set size and batch size)."""
    sys.path.insert(0, REPO)  # the training CLI runs as a module from REPO; this imports the package directly
    import vlp_jax
    from vlp_jax.data import fashion_mnist_source as source

    with open(os.path.join(reference, 'config.json')) as handle:
        config = json.load(handle)
    data, batch = config['data']['fashion_mnist'], int(config['batch_size'])
    granularity, size = data['granularity'], min(size, int(data['train_size']))
    size -= size % batch
    assert size > 0, f'the reference trained on fewer than one batch ({batch}) of images'
    model = vlp_jax.load(reference)
    images, labels = source.load_split(data['directory'], 'train', size)
    groups = source.group_of(labels, granularity)
    rng = np.random.default_rng(0)
    captions = [source.captions_for(int(g), granularity, source.TRAIN_TEMPLATES, 1, rng)[0] for g in groups]
    image_embed = model.encode_images(np.repeat(images[..., None], 3, axis=-1))
    text_embed = model.encode_texts(captions)
    positives, hardest, false_negative = [], [], []
    for start in range(0, size, batch):
        rows = slice(start, start + batch)
        cosine = image_embed[rows] @ text_embed[rows].T
        positives.append(np.diag(cosine).copy())
        np.fill_diagonal(cosine, -np.inf)
        column = cosine.argmax(axis=1)
        hardest.append(cosine[np.arange(batch), column])
        false_negative.append(groups[rows] == groups[rows][column])
    positives, hardest, false_negative = map(np.concatenate, (positives, hardest, false_negative))
    high = float(np.percentile(positives, quantile))
    converted = hardest > high
    hits = int(np.sum(converted & false_negative))
    return {
        'high': round(high, 4),
        'quantile': quantile,
        'positive_cosine_median': float(np.median(positives)),
        'hardest_false_negative_share': float(np.mean(false_negative)),
        'converted_share': float(np.mean(converted)),
        'precision': hits / max(int(np.sum(converted)), 1),
        'recall': hits / max(int(np.sum(false_negative)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reference', required=True, help='a trained fashion_mnist workdir (the frozen reference)')
    parser.add_argument('--quantile', type=float, default=50.0)
    parser.add_argument('--size', type=int, default=2048, help='training images scored')
    args = parser.parse_args()
    print(json.dumps(calibrate(args.reference, args.quantile, args.size)))


if __name__ == '__main__':
    main()
