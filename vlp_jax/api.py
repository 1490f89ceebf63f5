"""The library API: `vlp_jax.load(path)` -> a model that embeds images and texts and classifies zero-shot.

    import vlp_jax
    model = vlp_jax.load('workdirs/shapes_tiny')           # a workdir (newest checkpoint) or a step dir
    image_embed = model.encode_images(images)              # uint8 [N, H, W, 3] / [H, W, 3] / PIL images
    text_embed = model.encode_texts(['a red circle'])      # [N, E] unit-norm float32
    classifier = model.zero_shot_classifier(['circle', 'square'], ['a photo of a {}.'])
    labels = classifier.classify(images)

The run's own config (its workdir's config.json, else the model config saved beside every
checkpoint) builds the model, so no config file is needed. Embeddings come from the same jitted
encoders and batching the evaluator uses (steps.make_encoders, evaluators.embedding.embed_in_batches).
Images get the eval preprocessing:
aspect-preserving resize of the shorter side to the model's image size (PIL bilinear, antialiased)
and a centre crop, in PIL/numpy so this module works without TensorFlow.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from vlp_jax import parallel, steps
from vlp_jax import state as state_lib
from vlp_jax.checkpointing import CheckpointError, resolve_step_dir, restore_params_from
from vlp_jax.config_files import model_config_of
from vlp_jax.data.batch import normalise_images
from vlp_jax.evaluators.classification import class_embeddings
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.models.vlp import VLPModel, model_config_from_dict

DEFAULT_BATCH_SIZE = 64  # rows per encoder call (rounded up to a multiple of the local device count)
CLASS_PLACEHOLDER = '{}'

Images = Any  # uint8 array [N, H, W, 3] or [H, W, 3], a PIL image, or a sequence of PIL images / arrays


def _centre_crop_resize(image: Any, size: int) -> np.ndarray:
    """A PIL image -> uint8 [size, size, 3]: shorter side resized to `size` (bilinear), centre crop."""
    from PIL import Image

    image = image.convert('RGB')
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BILINEAR)
        left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, np.uint8)


def preprocess_images(images: Images, size: int) -> np.ndarray:
    """Any accepted image input -> uint8 [N, size, size, 3] (an image already size x size is kept as is)."""
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f'images must be uint8 arrays [N, H, W, 3] or [H, W, 3] (or PIL images), got {images.dtype} '
                f'{images.shape}.'
            )
        if images.shape[1:3] == (size, size):
            return images
    out = []
    for image in images:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(f'each image array must be uint8 [H, W, 3], got {image.dtype} {image.shape}.')
            image = Image.fromarray(image)
        out.append(_centre_crop_resize(image, size))
    if not out:
        raise ValueError('no images given; pass at least one.')
    return np.stack(out)


class ZeroShotClassifier:
    """Classes as the L2-normalised mean embedding of their prompts (CLIP; as the evaluator does)."""

    def __init__(self, model: LoadedModel, class_names: Sequence[str], class_embed: np.ndarray):
        self.model = model
        self.class_names = list(class_names)
        self.class_embeddings = class_embed  # [C, E] unit-norm float32

    def logits(self, images: Images) -> np.ndarray:
        """[N, C] float32: cosine(image, class) times the model's learned logit scale (1 / temperature)."""
        return self.model.logit_scale * (self.model.encode_images(images) @ self.class_embeddings.T)

    def classify(self, images: Images) -> np.ndarray:
        """[N] int: the index (into class_names) of each image's most similar class."""
        return np.argmax(self.logits(images), axis=1)


class LoadedModel:
    """A trained model's encoders: host numpy in, unit-norm float32 numpy embeddings out."""

    def __init__(self, step_dir: pathlib.Path, batch_size: int = DEFAULT_BATCH_SIZE):
        model_config = model_config_of(step_dir)
        if model_config is None:
            raise CheckpointError(
                f'checkpoint {step_dir} records no model config (written by an older vlp_jax); '
                'load it with `python -m vlp_jax.evaluate --config ... --checkpoint PATH` instead.'
            )
        self.path, self.step = step_dir, int(step_dir.name)
        self.model = VLPModel(model_config_from_dict(model_config))
        self.image_size = self.model.config.vision.image_size
        self.max_text_len = self.model.config.text.max_len
        devices = jax.local_devices()
        self.mesh = parallel.make_mesh({'data': len(devices), 'fsdp': 1, 'model': 1}, devices)
        rules = ()  # params replicated, inputs split over the batch: inference needs no other layout
        abstract = state_lib.abstract_params(self.model, self.mesh, rules)
        self.params = restore_params_from(step_dir, abstract)
        self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
        self._encode_images, self._encode_texts = steps.make_encoders(
            self.model, self.mesh, rules, jax.tree.map(lambda leaf: leaf.sharding, abstract)
        )
        with jax.set_mesh(self.mesh):
            scale = self.model.apply({'params': self.params}, method=VLPModel.logit_scale)
        self.logit_scale = float(scale)

    def encode_images(self, images: Images) -> np.ndarray:
        """[N, E] unit-norm float32 embeddings of images, after the eval resize + centre crop."""
        pixels = normalise_images(preprocess_images(images, self.image_size))
        encode = lambda x: self._encode_images(self.params, x)
        return embed_in_batches(encode, (pixels,), self.batch_size, self.mesh)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[N, E] unit-norm float32 embeddings of texts, tokenised as in training (truncated to max_text_len)."""
        from vlp_jax.data.tokenizer import SHIPPED_VOCAB_DIR, shared_tokenizer

        if isinstance(texts, str) or not len(texts) or not all(isinstance(text, str) for text in texts):
            raise ValueError('texts must be a non-empty list of strings (wrap a single text in a list).')
        tokens = shared_tokenizer(self.max_text_len, SHIPPED_VOCAB_DIR)(texts)
        encode = lambda ids, mask: self._encode_texts(self.params, ids, mask)
        return embed_in_batches(encode, (tokens['text_ids'], tokens['text_mask']), self.batch_size, self.mesh)

    def zero_shot_classifier(self, class_names: Sequence[str], templates: Sequence[str]) -> ZeroShotClassifier:
        """A classifier over `class_names` whose prompts are each template with '{}' filled by the name."""
        if not class_names or not templates:
            raise ValueError('zero_shot_classifier needs at least one class name and one template.')
        for template in templates:
            if CLASS_PLACEHOLDER not in template:
                raise ValueError(f"template {template!r} has no '{{}}' where the class name goes.")
        prompts = [template.format(name) for name in class_names for template in templates]
        embed = self.encode_texts(prompts).reshape(len(class_names), len(templates), -1)
        return ZeroShotClassifier(self, class_names, class_embeddings(embed))


def load(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE) -> LoadedModel:
    """The model in a workdir (its newest checkpoint), its checkpoints/ folder, or one step folder.

    Raises CheckpointError (one sentence) when `path` is missing or holds no vlp_jax checkpoint.
    """
    absolute = pathlib.Path(path).absolute()
    if not absolute.exists():
        raise CheckpointError(f'{path} does not exist; pass a workdir, its checkpoints/ folder or a step folder.')
    return LoadedModel(resolve_step_dir(absolute), batch_size)
