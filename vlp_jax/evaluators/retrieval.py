"""Zero-shot image<->text retrieval recall@k, COCO-style, plus ground-truth semantic recall.

Several captions per image: image->text is a hit if ANY of the image's captions is in
the top k; text->image is a hit if the caption's own image is. Semantic recall counts
a hit when a retrieved item is true of the query by ground truth (synthetic data).
"""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10)


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries per row, best first (stable on ties)."""
    return np.argsort(-similarity, axis=1, kind='stable')[:, :k]


def retrieval_metrics(
    image_embed: np.ndarray,
    text_embed: np.ndarray,
    text_image: np.ndarray,
    truth: np.ndarray | None = None,
    ks: tuple[int, ...] = RECALL_AT,
) -> dict[str, float]:
    """Recall@k in both directions. `text_image[t]` is the image caption t was written for;
    `truth[t, i]` (optional) says whether caption t is true of image i."""
    image_embed = np.asarray(image_embed, np.float32)
    text_embed = np.asarray(text_embed, np.float32)
    text_image = np.asarray(text_image)
    assert text_embed.shape[0] == text_image.shape[0]
    similarity = text_embed @ image_embed.T  # [Nt, Ni]
    kmax = min(max(ks), similarity.shape[0], similarity.shape[1])
    t2i_top = _top_k(similarity, kmax)  # [Nt, k] image ids
    i2t_top = _top_k(similarity.T, kmax)  # [Ni, k] text ids
    image_ids = np.arange(image_embed.shape[0])
    metrics = {}
    for k in ks:
        kk = min(k, kmax)
        metrics[f't2i_r{k}'] = float(np.mean(np.any(t2i_top[:, :kk] == text_image[:, None], axis=1)))
        metrics[f'i2t_r{k}'] = float(np.mean(np.any(text_image[i2t_top[:, :kk]] == image_ids[:, None], axis=1)))
        if truth is not None:
            text_ids = np.arange(text_embed.shape[0])
            metrics[f't2i_semantic_r{k}'] = float(np.mean(np.any(truth[text_ids[:, None], t2i_top[:, :kk]], axis=1)))
            metrics[f'i2t_semantic_r{k}'] = float(np.mean(np.any(truth[i2t_top[:, :kk], image_ids[:, None]], axis=1)))
    return metrics


def chance_recall_at_1(num_images: int, captions_per_image: int) -> dict[str, float]:
    """What a random ranking scores: the yardstick for 'beats chance'."""
    num_texts = num_images * captions_per_image
    return {'t2i_r1': 1.0 / num_images, 'i2t_r1': captions_per_image / num_texts}
