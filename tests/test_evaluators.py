"""Retrieval recall and zero-shot accuracy against plain-loop references."""

import numpy as np

from vlp_jax.evaluators.classification import class_embeddings, zero_shot_accuracy
from vlp_jax.evaluators.retrieval import retrieval_metrics


def _loop_reference(image_embed, text_embed, text_image, truth, k):
    sim = text_embed @ image_embed.T
    t2i = i2t = t2i_sem = i2t_sem = 0
    for t in range(sim.shape[0]):
        top = sorted(range(sim.shape[1]), key=lambda i: (-sim[t, i], i))[:k]
        t2i += text_image[t] in top
        t2i_sem += any(truth[t, i] for i in top)
    for i in range(sim.shape[1]):
        top = sorted(range(sim.shape[0]), key=lambda t: (-sim[t, i], t))[:k]
        i2t += any(text_image[t] == i for t in top)
        i2t_sem += any(truth[t, i] for t in top)
    return t2i / sim.shape[0], i2t / sim.shape[1], t2i_sem / sim.shape[0], i2t_sem / sim.shape[1]


def test_recall_matches_loop_reference():
    rng = np.random.default_rng(0)
    images, per_image = 30, 3
    image_embed = rng.normal(size=(images, 8)).astype(np.float32)
    text_image = np.repeat(np.arange(images), per_image)
    text_embed = (image_embed[text_image] + 1.5 * rng.normal(size=(images * per_image, 8))).astype(np.float32)
    truth = rng.random((images * per_image, images)) < 0.1
    truth[np.arange(len(text_image)), text_image] = True
    metrics = retrieval_metrics(image_embed, text_embed, text_image, truth)
    for k in (1, 5, 10):
        t2i, i2t, t2i_sem, i2t_sem = _loop_reference(image_embed, text_embed, text_image, truth, k)
        assert np.isclose(metrics[f't2i_r{k}'], t2i) and np.isclose(metrics[f'i2t_r{k}'], i2t)
        assert np.isclose(metrics[f't2i_semantic_r{k}'], t2i_sem) and np.isclose(metrics[f'i2t_semantic_r{k}'], i2t_sem)
    assert metrics['t2i_r1'] <= metrics['t2i_r5'] <= metrics['t2i_r10']
    assert metrics['t2i_r1'] <= metrics['t2i_semantic_r1']


def test_perfect_and_random_embeddings():
    rng = np.random.default_rng(1)
    image_embed = np.eye(20, dtype=np.float32)
    text_image = np.repeat(np.arange(20), 2)
    perfect = retrieval_metrics(image_embed, image_embed[text_image], text_image)
    assert perfect['t2i_r1'] == 1.0 and perfect['i2t_r1'] == 1.0
    random = retrieval_metrics(rng.normal(size=(200, 16)), rng.normal(size=(400, 16)), np.repeat(np.arange(200), 2))
    chance = 1 / 200  # a random ranking's text->image R@1: 1 / number of images
    assert random['t2i_r1'] < 10 * chance


def test_zero_shot_accuracy():
    prompts = np.zeros((3, 2, 3), np.float32)
    for c in range(3):
        prompts[c, :, c] = 1.0
        prompts[c, 1, (c + 1) % 3] = 0.2
    classes = class_embeddings(prompts)
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, rtol=1e-6)
    images = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    assert zero_shot_accuracy(images, classes, np.array([0, 1, 2, 0])) == 0.75
