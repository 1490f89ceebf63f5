"""Fashion-MNIST as an in-memory source, captioned at a chosen granularity: real photos whose
false negatives are known exactly (data/fashion_mnist.py reads the idx files; it also converts
them to prepare's CSV input, for the records path).

70,000 28-px grey photos of 10 kinds of clothing (Zalando, MIT licence; Debian's
`dataset-fashion-mnist` installs the original idx files). Each image gets captions drawn from
templates and synonyms of its label at a chosen granularity: the 10 classes, or 5 or 2
super-classes. A caption is true of every image with the same label at that granularity, so the
share of false negatives in a batch is set by construction: 10% of its pairs with the classes, 22%
with 5 groups, 52% with 2. Zero-shot classification prompts with held-out templates, so it
measures more than template recall.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlp_jax.config import key, positive_int
from vlp_jax.data import fashion_mnist
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import Source, SourceContext, SourcePlugin
from vlp_jax.probes import GroundTruthProbe
from vlp_jax.registry import SOURCES

# Each granularity: its group of every class, and the words a caption may use for each group.
GRANULARITIES: dict[str, tuple[tuple[int, ...], tuple[tuple[str, ...], ...]]] = {
    'class': (
        tuple(range(10)),
        (
            ('t-shirt', 'tee', 'short-sleeved top'),
            ('pair of trousers', 'pair of pants', 'pair of slacks'),
            ('pullover', 'sweater', 'jumper'),
            ('dress', 'frock', 'gown'),
            ('coat', 'jacket', 'overcoat'),
            ('sandal', 'open shoe', 'flip-flop'),
            ('shirt', 'button-up shirt', 'blouse'),
            ('sneaker', 'trainer', 'running shoe'),
            ('bag', 'handbag', 'purse'),
            ('ankle boot', 'boot', 'bootie'),
        ),
    ),
    'group5': (
        (0, 1, 2, 1, 2, 3, 0, 3, 4, 3),
        (
            ('light top', 'summer top', 'thin top'),
            ('long garment', 'full-length garment', 'long piece of clothing'),
            ('warm top', 'winter top', 'warm layer'),
            ('piece of footwear', 'shoe', 'item of footwear'),
            ('bag', 'handbag', 'purse'),
        ),
    ),
    'group2': (
        (0, 0, 0, 0, 0, 1, 0, 1, 1, 1),
        (
            ('piece of clothing', 'garment', 'item of clothing'),
            ('accessory', 'fashion accessory', 'shoe or bag'),
        ),
    ),
}
TRAIN_TEMPLATES = (
    'a photo of {}',
    '{}',
    'a picture of {}',
    'an image of {}',
    'a product photo of {}',
    '{} on a black background',
    'a grey photo of {}',
    'a small picture of {}',
)
HELD_OUT_TEMPLATES = ('this is {}', 'a catalogue image of {}', 'a low resolution photo of {}', 'an item: {}')


@dataclasses.dataclass(frozen=True)
class FashionMnistSettings:
    """Fashion-MNIST from its idx files, captioned at one granularity."""

    directory: str = key(
        fashion_mnist.DEBIAN_DIR, 'the folder of the four idx .gz files (apt-get install dataset-fashion-mnist)'
    )
    granularity: str = key(
        'class',
        "what a caption names: 'class' (10), 'group5' or 'group2' (super-classes: more false negatives per batch)",
        choices=tuple(GRANULARITIES),
    )
    captions_per_image: int = key(4, 'training captions per image (one drawn per epoch)', check=positive_int)
    train_size: int = key(60_000, 'training images used (the first N of the 60,000)', check=positive_int)
    test_size: int = key(10_000, 'test images used (the first N of the 10,000)', check=positive_int)


def with_article(noun: str) -> str:
    """'a coat', 'an overcoat', 'a pair of pants': the indefinite article English puts before `noun`."""
    return ('an ' if noun[0] in 'aeiou' else 'a ') + noun


def load_split(directory: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int labels [N] of the first `size` examples of `split`."""
    try:
        images, labels = fashion_mnist.load_split(split, directory)
    except (fashion_mnist.FashionMnistError, OSError, EOFError) as error:
        raise DataError(f'data.fashion_mnist: {error}') from None
    if size > len(images):
        raise DataError(f'data.fashion_mnist asks {size} {split} images; the split has {len(images)}.')
    return images[:size], labels[:size].astype(np.int64)


def group_of(labels: np.ndarray, granularity: str) -> np.ndarray:
    """Class labels -> group labels at `granularity`."""
    return np.asarray(GRANULARITIES[granularity][0], np.int64)[np.asarray(labels, np.int64)]


def group_names(granularity: str) -> tuple[str, ...]:
    """Each group's first word: its name in zero-shot prompts."""
    return tuple(words[0] for words in GRANULARITIES[granularity][1])


def captions_for(
    group: int, granularity: str, templates: Sequence[str], count: int, rng: np.random.Generator
) -> list[str]:
    """`count` distinct captions of one image of `group`: template x synonym pairs drawn without replacement."""
    words = GRANULARITIES[granularity][1][group]
    pairs = len(templates) * len(words)
    picks = rng.choice(pairs, size=min(count, pairs), replace=False)
    return [templates[p // len(words)].format(with_article(words[p % len(words)])) for p in picks]


class FashionMnistSource(Source):
    """One split: grey photos as RGB, captions of their (super-)class, labels at the caption granularity;
    probe 'sem' (each caption's group) lets the train step count false negatives exactly."""

    field_keys = ('sem',)

    def __init__(self, images: np.ndarray, labels: np.ndarray, settings: FashionMnistSettings, seed: int, split: str):
        self.images = images
        self.classes = labels
        self.granularity = settings.granularity
        self.labels = group_of(labels, settings.granularity)
        self.templates = TRAIN_TEMPLATES if split == 'train' else HELD_OUT_TEMPLATES
        self.captions_per_image = settings.captions_per_image if split == 'train' else 2
        self.seed = int(seed)
        self.split_id = 0 if split == 'train' else 1
        self.class_names = group_names(settings.granularity)
        self.prompt_templates = tuple(t.replace('{}', 'the {}') for t in HELD_OUT_TEMPLATES)
        self.name = f'fashion_mnist/{split}'

    def __len__(self) -> int:
        return len(self.labels)

    def captions(self, index: int) -> list[str]:
        """Image `index`'s captions: a pure function of (seed, split, index)."""
        rng = np.random.default_rng([self.seed, self.split_id, int(index)])
        return captions_for(int(self.labels[index]), self.granularity, self.templates, self.captions_per_image, rng)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, np.int64)
        grey = self.images[indices]
        return {
            'image': np.repeat(grey[..., None], 3, axis=-1),
            'captions': [self.captions(i) for i in indices],
            'label': self.labels[indices],
            'fields': {'sem': np.repeat(self.labels[indices, None], self.captions_per_image, axis=1)},
        }

    def caption_truth(self, examples: dict[str, Any]) -> np.ndarray:
        """bool [captions (image-major), images]: a caption is true of every image of its group."""
        labels = np.asarray(examples['label'])
        per_image = np.asarray([len(c) for c in examples['captions']])
        caption_labels = np.repeat(labels, per_image)
        return caption_labels[:, None] == labels[None, :]

    def ground_truth_probe(self) -> GroundTruthProbe:
        return GroundTruthProbe(batch_keys=('sem',), false_negatives=same_group_i2t)


def same_group_i2t(batch: Mapping[str, Any]):
    """bool [B, B] in the i2t layout: j != i and caption j names image i's group (every caption is true of its
    own image, so image i's group is its caption's). Runs inside the jitted step."""
    import jax.numpy as jnp

    sem = batch['sem']
    return (sem[:, None] == sem[None, :]) & ~jnp.eye(sem.shape[0], dtype=bool)


@SOURCES.register('fashion_mnist')
class FashionMnistPlugin(SourcePlugin):
    """Fashion-MNIST: splits 'train' and 'test' ('val' is the test split); `where` names nothing else."""

    Settings = FashionMnistSettings

    def __init__(self, settings: FashionMnistSettings, context: SourceContext):
        super().__init__(settings, context)
        self._splits: dict[str, FashionMnistSource] = {}

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        if where:
            raise DataError(f"fashion_mnist has no set {where!r}; leave 'where' empty.")
        split = 'train' if split == 'train' else 'test'
        if split not in self._splits:
            size = self.settings.train_size if split == 'train' else self.settings.test_size
            images, classes = load_split(self.settings.directory, split, size)
            self._splits[split] = FashionMnistSource(images, classes, self.settings, self.context.seed, split)
        return self._splits[split]

    def train_size(self) -> int:
        return self.settings.train_size

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('retrieval', '', ''), ('classification', '', self.settings.granularity))

    def check(self) -> str | None:
        if not os.path.isdir(self.settings.directory):
            return (
                f"data.fashion_mnist.directory {self.settings.directory!r} is not a folder; install Debian's "
                'dataset-fashion-mnist or point it at the idx files.'
            )
        return None
