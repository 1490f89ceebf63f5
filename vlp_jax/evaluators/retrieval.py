"""Zero-shot image<->text retrieval recall@k, COCO-style, plus ground-truth semantic recall.

Several captions per image: image->text is a hit if ANY of the image's captions is in
the top k; text->image is a hit if the caption's own image is. Semantic recall counts
a hit when a retrieved item is true of the query by ground truth (synthetic data).
"""

from __future__ import annotations

import numpy as np

from vlp_jax.data.eval_sets import source_retrieval_set
from vlp_jax.data.sources import Source
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.registry import EVALUATORS

RECALL_AT = (1, 5, 10)


def top_k(scores: np.ndarray, k: int, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the k largest entries per row, best first.

    Ties are broken by `tie_break` (same shape, larger first) when given, then by the
    lower column index (stable).
    """
    if tie_break is None:
        return np.argsort(-scores, axis=1, kind='stable')[:, :k]
    return np.lexsort((-np.asarray(tie_break), -np.asarray(scores)), axis=-1)[:, :k]


def retrieval_metrics(
    image_embed: np.ndarray,
    text_embed: np.ndarray,
    text_image: np.ndarray,
    truth: np.ndarray | None = None,
    ks: tuple[int, ...] = RECALL_AT,
) -> dict[str, float]:
    """Recall@k in both directions by embedding cosine. `text_image[t]` is the image caption t
    was written for; `truth[t, i]` (optional) says whether caption t is true of image i."""
    similarity = itc_similarity(image_embed, text_embed)
    return retrieval_metrics_from_scores(similarity, similarity.T, text_image, truth, ks)


def itc_similarity(image_embed: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
    """[Nt, Ni] float32 cosines of unit-norm embeddings: the score ITC retrieval ranks by."""
    return np.asarray(text_embed, np.float32) @ np.asarray(image_embed, np.float32).T


def retrieval_metrics_from_scores(
    t2i_scores: np.ndarray,
    i2t_scores: np.ndarray,
    text_image: np.ndarray,
    truth: np.ndarray | None = None,
    ks: tuple[int, ...] = RECALL_AT,
    tie_break: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k from any scores: `t2i_scores` [Nt, Ni] ranks images for each text, `i2t_scores`
    [Ni, Nt] texts for each image (the two need not be transposes, e.g. after re-ranking each
    direction's own top k). `tie_break` [Nt, Ni] (optional) orders candidates whose scores tie
    in both directions (e.g. the ITC cosine under re-ranked scores); then the lower index wins."""
    t2i_scores = np.asarray(t2i_scores, np.float32)
    i2t_scores = np.asarray(i2t_scores, np.float32)
    text_image = np.asarray(text_image)
    num_texts, num_images = t2i_scores.shape
    assert i2t_scores.shape == (num_images, num_texts) and text_image.shape == (num_texts,)
    kmax = min(max(ks), num_texts, num_images)
    t2i_top = top_k(t2i_scores, kmax, tie_break)  # [Nt, k] image ids
    i2t_top = top_k(i2t_scores, kmax, None if tie_break is None else np.asarray(tie_break).T)  # [Ni, k] text ids
    image_ids = np.arange(num_images)
    metrics = {}
    for k in ks:
        kk = min(k, kmax)
        metrics[f't2i_r{k}'] = float(np.mean(np.any(t2i_top[:, :kk] == text_image[:, None], axis=1)))
        metrics[f'i2t_r{k}'] = float(np.mean(np.any(text_image[i2t_top[:, :kk]] == image_ids[:, None], axis=1)))
        if truth is not None:
            text_ids = np.arange(num_texts)
            metrics[f't2i_semantic_r{k}'] = float(np.mean(np.any(truth[text_ids[:, None], t2i_top[:, :kk]], axis=1)))
            metrics[f'i2t_semantic_r{k}'] = float(np.mean(np.any(truth[i2t_top[:, :kk], image_ids[:, None]], axis=1)))
    return metrics


@EVALUATORS.register('retrieval')
class RetrievalEvaluator(Evaluator):
    """Image<->text recall@1/5/10 (+ semantic recall where the set knows the truth) by ITC cosine, and
    re-ranked by ITM (eval/retrieval_itm/...) when the model comes with a re-ranker."""

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        self.data = source_retrieval_set(
            source, context.settings.retrieval_size, context.image_size, context.max_text_len, spec.name
        )

    def __call__(self, model: EvalModel) -> dict[str, float]:
        data = self.data
        prefix = f'{data.name}/' if data.name else ''
        image_embed = embed_in_batches(model.encode_images, (data.images,), model.batch_size, model.mesh)
        text_embed = embed_in_batches(model.encode_texts, (data.text_ids, data.text_mask), model.batch_size, model.mesh)
        similarity = itc_similarity(image_embed, text_embed)
        args = (data.text_image, data.truth)
        metrics = {
            f'eval/retrieval/{prefix}{key}': value
            for key, value in retrieval_metrics_from_scores(similarity, similarity.T, *args).items()
        }
        if model.rerank is not None:
            scores = model.rerank(data, similarity)
            for key, value in retrieval_metrics_from_scores(
                scores.t2i, scores.i2t, *args, tie_break=similarity
            ).items():
                metrics[f'eval/retrieval_itm/{prefix}{key}'] = value
        return metrics
