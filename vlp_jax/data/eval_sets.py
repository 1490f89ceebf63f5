"""Fixed evaluation sets: retrieval (images x all their captions) and zero-shot classification.

Built once per run, un-augmented, tokenised, as host numpy arrays. On synthetic data
the retrieval set carries the ground truth of which caption is true of which image;
real sets carry none (`truth` None), so the semantic metrics are simply absent. Encoded
images are decoded, resized (shorter side) and centre-cropped to `model.image_size` by TF;
one that does not decode is left out of the set and counted in `dropped`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vlp_jax.data.backend import tensorflow_installed
from vlp_jax.data.batch import normalise_images
from vlp_jax.data.errors import DataError
from vlp_jax.data.sources import Source
from vlp_jax.data.tokenizer import shared_tokenizer

LOAD_CHUNK = 256  # examples read from a source at a time


@dataclasses.dataclass
class RetrievalSet:
    images: np.ndarray  # [Ni, H, W, 3] float32, normalised
    text_ids: np.ndarray  # [Nt, L] int32, captions of all images, image-major
    text_mask: np.ndarray  # [Nt, L] int32
    text_image: np.ndarray  # [Nt] int: the image each caption was written for
    truth: np.ndarray | None  # [Nt, Ni] bool: caption t is true of image i (synthetic data only)
    name: str = ''  # '' for the run's own set (keys eval/retrieval/*), else eval/retrieval/<name>/*
    dropped: int = 0  # records left out because their image did not decode


@dataclasses.dataclass
class ClassificationSet:
    name: str
    images: np.ndarray  # [N, H, W, 3] float32, normalised
    labels: np.ndarray  # [N] int
    prompt_ids: np.ndarray  # [C, T, L] int32: class x template
    prompt_mask: np.ndarray  # [C, T, L] int32
    class_names: list[str]
    dropped: int = 0


def spread_indices(total: int, limit: int) -> np.ndarray:
    """`limit` indices spread evenly over [0, total) (all when limit <= 0 or >= total): a fixed subset
    that does not favour the head of a set sorted by class."""
    if limit <= 0 or limit >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))


def _concatenate(parts: list) -> np.ndarray | list:
    """One field's values of several chunks: arrays joined, lists (texts) chained."""
    if isinstance(parts[0], list):
        return [value for part in parts for value in part]
    return np.concatenate(parts)


def load_examples(source: Source, indices: np.ndarray, image_size: int) -> tuple[dict, np.ndarray, int]:
    """(examples with 'image' uint8 [N, S, S, 3], kept positions into `indices`, dropped count)."""
    parts = [source.batch(indices[start : start + LOAD_CHUNK]) for start in range(0, len(indices), LOAD_CHUNK)]
    examples = {
        'captions': [c for part in parts for c in part['captions']],
        'label': np.concatenate([np.asarray(part.get('label', np.full(len(part['captions']), -1))) for part in parts]),
    }
    if not source.encoded:
        examples['image'] = np.concatenate([part['image'] for part in parts])
        examples['fields'] = {k: _concatenate([p['fields'][k] for p in parts]) for k in parts[0]['fields']}
        return examples, np.arange(len(indices)), 0
    if not tensorflow_installed():
        raise DataError(
            f'evaluation set {source.name or "?"!r} holds encoded images, which only TensorFlow decodes here; '
            'install tensorflow-cpu or leave the set out of eval.sets.'
        )
    from vlp_jax.data.tf_augment import eval_images  # TensorFlow stays out of the core

    encoded = [data for part in parts for data in part['image_bytes']]
    images, kept = eval_images(encoded, image_size)
    examples = {'image': images, 'captions': [examples['captions'][k] for k in kept], 'label': examples['label'][kept]}
    return examples, kept, len(indices) - len(kept)


def source_retrieval_set(source: Source, size: int, image_size: int, max_text_len: int, name: str = '') -> RetrievalSet:
    """`size` images spread over the set, each with all its captions."""
    indices = spread_indices(len(source), size)
    examples, kept, dropped = load_examples(source, indices, image_size)
    keep = [i for i, captions in enumerate(examples['captions']) if captions]
    if not keep:
        raise DataError(f'evaluation set {source.name or name!r} has no image with a caption to retrieve.')
    captions = [caption for i in keep for caption in examples['captions'][i]]
    text_image = np.concatenate([np.full(len(examples['captions'][i]), n) for n, i in enumerate(keep)])
    tokens = shared_tokenizer(max_text_len)(captions)
    truth = source.caption_truth(examples) if len(keep) == len(indices) else None
    return RetrievalSet(
        images=normalise_images(examples['image'][keep]),
        text_ids=tokens['text_ids'],
        text_mask=tokens['text_mask'],
        text_image=text_image,
        truth=truth,
        name=name,
        dropped=dropped + len(examples['captions']) - len(keep),
    )


def prompt_tokens(max_text_len: int, class_names: Sequence[str], templates: Sequence[str]):
    tokenizer = shared_tokenizer(max_text_len)
    tokens = tokenizer([template.format(name) for name in class_names for template in templates])
    shape = (len(class_names), len(templates), tokenizer.max_len)
    return tokens['text_ids'].reshape(shape), tokens['text_mask'].reshape(shape)


def source_classification_set(
    source: Source, size: int, image_size: int, max_text_len: int, templates: Sequence[str], name: str
) -> ClassificationSet:
    """`size` labelled images spread over the set; class prompts from the source's own templates, else `templates`."""
    class_names = source.class_names
    if not class_names:
        raise DataError(
            f'evaluation set {name!r} has no class names; prepare it with --class_names FILE or name a TFDS '
            'label feature (data.tfds.label_key).'
        )
    indices = spread_indices(len(source), size)
    examples, _, dropped = load_examples(source, indices, image_size)
    labelled = np.flatnonzero(examples['label'] >= 0)
    if not len(labelled):
        raise DataError(f'evaluation set {name!r} has no labelled image; give records a label column.')
    prompt_ids, prompt_mask = prompt_tokens(max_text_len, class_names, tuple(source.prompt_templates or templates))
    return ClassificationSet(
        name=name,
        images=normalise_images(examples['image'][labelled]),
        labels=examples['label'][labelled],
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        class_names=list(class_names),
        dropped=dropped + len(examples['label']) - len(labelled),
    )
