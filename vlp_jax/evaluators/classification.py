"""Zero-shot classification: class embedding = mean of its prompt-template embeddings."""

from __future__ import annotations

import numpy as np

from vlp_jax.data.eval_sets import source_classification_set
from vlp_jax.data.sources import Source
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.registry import EVALUATORS


def class_embeddings(prompt_embed: np.ndarray) -> np.ndarray:
    """[C, T, E] prompt embeddings -> [C, E] L2-normalised template means."""
    mean = np.asarray(prompt_embed, np.float32).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def zero_shot_accuracy(image_embed: np.ndarray, class_embed: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of predicting the class whose embedding is most similar to the image's."""
    predictions = np.argmax(np.asarray(image_embed, np.float32) @ class_embed.T, axis=1)
    return float(np.mean(predictions == np.asarray(labels)))


@EVALUATORS.register('classification')
class ClassificationEvaluator(Evaluator):
    """Zero-shot top-1 on a labelled set (eval/zeroshot/NAME/top1), prompts from the set or eval.prompt_templates."""

    reads_captions = False
    reads_labels = True

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        settings = context.settings
        self.data = source_classification_set(
            source,
            settings.classification_size,
            context.image_size,
            context.max_text_len,
            settings.prompt_templates,
            spec.name,
        )

    def __call__(self, model: EvalModel) -> dict[str, float]:
        task = self.data
        classes, templates, length = task.prompt_ids.shape
        prompts = embed_in_batches(
            model.encode_texts,
            (task.prompt_ids.reshape(-1, length), task.prompt_mask.reshape(-1, length)),
            model.batch_size,
            model.mesh,
        )
        class_embed = class_embeddings(prompts.reshape(classes, templates, -1))
        images = embed_in_batches(model.encode_images, (task.images,), model.batch_size, model.mesh)
        return {f'eval/zeroshot/{task.name}/top1': zero_shot_accuracy(images, class_embed, task.labels)}
