"""Zero-shot classification: class embedding = mean of its prompt-template embeddings."""

from __future__ import annotations

import numpy as np


def class_embeddings(prompt_embed: np.ndarray) -> np.ndarray:
    """[C, T, E] prompt embeddings -> [C, E] L2-normalised template means."""
    mean = np.asarray(prompt_embed, np.float32).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def zero_shot_accuracy(image_embed: np.ndarray, class_embed: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of predicting the class whose embedding is most similar to the image's."""
    predictions = np.argmax(np.asarray(image_embed, np.float32) @ class_embed.T, axis=1)
    return float(np.mean(predictions == np.asarray(labels)))
