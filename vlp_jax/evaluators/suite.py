"""Zero-shot evaluation wired once: eval sets from the config, encoders from the setup, metrics for params.

train.py (every eval_every steps) and evaluate.py (a checkpoint) both call
`make_zero_shot_evaluator`, so the two report the same metrics from the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.evaluators.classification import class_embeddings, zero_shot_accuracy
from vlp_jax.evaluators.retrieval import itc_similarity, retrieval_metrics_from_scores


def embed_in_batches(encode: Callable, arrays: tuple[np.ndarray, ...], batch_size: int, mesh: Mesh) -> np.ndarray:
    """Encodes host arrays in fixed-size batches (last one padded) sharded over the mesh's batch axes.

    Every process holds the whole eval set and gets every embedding back, also when the
    mesh spans several processes.
    """
    count = arrays[0].shape[0]
    outputs = []
    for start in range(0, count, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        real = chunk[0].shape[0]
        if real < batch_size:  # pad so every call has one static shape (one compilation)
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - real, axis=0)]) for c in chunk]
        sharded = [parallel.host_to_global(c, parallel.batch_sharding(mesh, c.ndim)) for c in chunk]
        outputs.append(parallel.to_host(encode(*sharded))[:real])
    return np.concatenate(outputs)


def run_zero_shot(
    encode_images: Callable,
    encode_texts: Callable,
    retrieval,
    classification,
    batch_size: int,
    mesh: Mesh,
    rerank: Callable | None = None,
) -> dict[str, float]:
    """All eval metrics as a flat dict with keys like 'eval/retrieval/i2t_r1'.

    `retrieval` is one retrieval set or a list of them; a set with a name reports
    'eval/retrieval/<name>/<key>'. With `rerank` ((retrieval set, ITC similarity [Nt, Ni]) ->
    rerank.RerankedScores), every retrieval metric is also reported re-ranked by ITM, as
    'eval/retrieval_itm/<same key>'.
    """
    metrics = {}
    for data in retrieval if isinstance(retrieval, (list, tuple)) else [retrieval]:
        prefix = f'{data.name}/' if getattr(data, 'name', '') else ''
        image_embed = embed_in_batches(encode_images, (data.images,), batch_size, mesh)
        text_embed = embed_in_batches(encode_texts, (data.text_ids, data.text_mask), batch_size, mesh)
        similarity = itc_similarity(image_embed, text_embed)
        args = (data.text_image, data.truth)
        for key, value in retrieval_metrics_from_scores(similarity, similarity.T, *args).items():
            metrics[f'eval/retrieval/{prefix}{key}'] = value
        if rerank is not None:
            scores = rerank(data, similarity)
            for key, value in retrieval_metrics_from_scores(
                scores.t2i, scores.i2t, *args, tie_break=similarity
            ).items():
                metrics[f'eval/retrieval_itm/{prefix}{key}'] = value
    for task in classification:
        classes, templates, length = task.prompt_ids.shape
        prompts = embed_in_batches(
            encode_texts, (task.prompt_ids.reshape(-1, length), task.prompt_mask.reshape(-1, length)), batch_size, mesh
        )
        class_embed = class_embeddings(prompts.reshape(classes, templates, -1))
        images = embed_in_batches(encode_images, (task.images,), batch_size, mesh)
        metrics[f'eval/zeroshot/{task.name}/top1'] = zero_shot_accuracy(images, class_embed, task.labels)
    return metrics


def make_zero_shot_evaluator(setup: Any) -> Callable[[Any], dict[str, float]]:
    """params -> eval metrics, for the config's eval sets (eval.sets, built once, here) and the setup's
    encoders; with eval.rerank_k > 0 (fusion models) also the retrieval metrics re-ranked by ITM."""
    from vlp_jax.data import eval_specs
    from vlp_jax.evaluators.rerank import make_reranker

    config = setup.config
    retrieval, classification = eval_specs.build(config)
    encode_images, encode_texts = setup.encoders()
    rerank_k = int(config.eval.get('rerank_k', 0))
    reranker = make_reranker(setup, rerank_k) if rerank_k > 0 else None

    def evaluate(params) -> dict[str, float]:
        return run_zero_shot(
            lambda x: encode_images(params, x),
            lambda i, m: encode_texts(params, i, m),
            retrieval,
            classification,
            int(config.eval.batch_size),
            setup.mesh,
            None if reranker is None else lambda data, similarity: reranker(params, data, similarity),
        )

    return evaluate


def markdown_table(metrics: dict[str, float], step: int) -> str:
    """The metrics of one evaluation as a markdown table: one row per set and metric."""
    lines = [f'# Evaluation at step {step}', '', '| set | metric | value |', '|---|---|---|']
    for key, value in metrics.items():
        parts = key.split('/')[1:]  # drop 'eval'
        task, rest = parts[0], parts[1:]
        set_name = '/'.join([task, *rest[:-1]]) if len(rest) > 1 or task == 'zeroshot' else task
        lines.append(f'| {set_name} | {rest[-1]} | {value:.4f} |')
    return '\n'.join(lines) + '\n'
