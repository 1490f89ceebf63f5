"""Fixed evaluation sets: retrieval (images x all their captions) and zero-shot classification.

Built once per run, un-augmented, tokenised, as host numpy arrays. On synthetic data
the retrieval set carries the ground truth of which caption is true of which image.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from vlp_jax.data.batch import normalise_images
from vlp_jax.data.sources import build_source, shapes_world_config
from vlp_jax.data.synthetic import CLASSIFICATION_TEMPLATES, classification_set
from vlp_jax.data.tokenizer import shared_tokenizer

CLASSIFICATION_ATTRIBUTES = ('shape', 'colour')
CLASSIFICATION_SEED_OFFSET = 7919  # keeps the classification images apart from every split's stream


@dataclasses.dataclass
class RetrievalSet:
    images: np.ndarray  # [Ni, H, W, 3] float32, normalised
    text_ids: np.ndarray  # [Nt, L] int32, captions of all images, image-major
    text_mask: np.ndarray  # [Nt, L] int32
    text_image: np.ndarray  # [Nt] int: the image each caption was written for
    truth: np.ndarray | None  # [Nt, Ni] bool: caption t is true of image i (synthetic data only)


@dataclasses.dataclass
class ClassificationSet:
    name: str
    images: np.ndarray  # [N, H, W, 3] float32, normalised
    labels: np.ndarray  # [N] int
    prompt_ids: np.ndarray  # [C, T, L] int32: class x template
    prompt_mask: np.ndarray  # [C, T, L] int32
    class_names: list[str]


def retrieval_set(config: ml_collections.ConfigDict, split: str = 'test') -> RetrievalSet:
    source = build_source(config, split)
    examples = source.batch(np.arange(len(source)))
    captions = [caption for per_image in examples['captions'] for caption in per_image]
    text_image = np.concatenate([np.full(len(per_image), i) for i, per_image in enumerate(examples['captions'])])
    tokens = shared_tokenizer(int(config.data.max_text_len))(captions)
    truth = source.caption_truth(examples) if hasattr(source, 'caption_truth') else None
    return RetrievalSet(
        images=normalise_images(examples['image']),
        text_ids=tokens['text_ids'],
        text_mask=tokens['text_mask'],
        text_image=text_image,
        truth=truth,
    )


def classification_sets(config: ml_collections.ConfigDict) -> list[ClassificationSet]:
    tokenizer = shared_tokenizer(int(config.data.max_text_len))
    world = shapes_world_config(config.data)
    sets = []
    for attribute in CLASSIFICATION_ATTRIBUTES:
        data = classification_set(
            world, int(config.seed) + CLASSIFICATION_SEED_OFFSET, int(config.eval.classification_size), attribute
        )
        templates = CLASSIFICATION_TEMPLATES[attribute]
        prompts = [template.format(name) for name in data['class_names'] for template in templates]
        tokens = tokenizer(prompts)
        shape = (len(data['class_names']), len(templates), tokenizer.max_len)
        sets.append(
            ClassificationSet(
                name=attribute,
                images=normalise_images(data['image']),
                labels=np.asarray(data['label']),
                prompt_ids=tokens['text_ids'].reshape(shape),
                prompt_mask=tokens['text_mask'].reshape(shape),
                class_names=list(data['class_names']),
            )
        )
    return sets
