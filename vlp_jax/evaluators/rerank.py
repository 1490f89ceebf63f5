"""ALBEF-style retrieval re-ranking: each query's top-k ITC candidates re-scored by the fusion model's ITM head.

ALBEF's k_test. For each text, the k images of highest ITC cosine are each fused with the
text and scored by the ITM head; likewise for each image, its k texts of highest cosine.
The exact rule, per direction and per query:

- candidates: the k highest ITC cosines (ITC ties: the lower index, as ITC retrieval ranks);
  k is clipped to the number of candidates, so k >= that number re-scores them all;
- score of a candidate in the top k: the ITM head's *match logit* (class 1 of the 2-way head,
  ALBEF's `itm_head(...)[:, 1]`, no ITC term added; `score='itm'`), or BLIP's "score + topk_sim"
  (`score='itm_itc'`: the match logit plus the candidate's ITC cosine); every other candidate
  scores -inf, so it ranks below all top-k candidates;
- ranking: by that score, ties by the ITC cosine, then by the lower index (so candidates
  outside the top k keep their ITC order below the re-ranked ones).

The scores come back as two matrices, t2i [Nt, Ni] and i2t [Ni, Nt] (each direction has its
own top k, so they are not transposes), and the same metric code as ITC retrieval ranks them
(`retrieval_metrics_from_scores` with the ITC cosines as tie-break).

A (text, image) pair in both directions' top k is fused once. Everything runs in fixed-size
jitted batches over the mesh (batch-sharded inputs, replicated outputs, the last chunk
padded), so one device, many devices and many processes give the same scores. The image
and text tokens of the whole eval set are kept on the host between the two passes
([Ni, N, width_v] + [Nt, L, width]), as ALBEF keeps its image features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.evaluators.retrieval import top_k
from vlp_jax.models.vlp import VLPModel

ITM_MATCH = 1  # the ITM head's 'match' class
SCORES = ('itm', 'itm_itc')  # eval.rerank_score


@dataclasses.dataclass
class RerankedScores:
    t2i: np.ndarray  # [Nt, Ni] float32: each text's top-k images scored by ITM, -inf elsewhere
    i2t: np.ndarray  # [Ni, Nt] float32: each image's top-k texts scored by ITM, -inf elsewhere


def _match_logit(model: VLPModel, text_tokens, text_mask, image_tokens):
    return model.itm_logits(model.fuse(text_tokens, text_mask, image_tokens))[:, ITM_MATCH]


def make_itm_functions(model: VLPModel, mesh: Mesh, rules, params_shardings: Any) -> tuple[Callable, ...]:
    """(image_tokens(params, images), text_tokens(params, ids, mask), match(params, text_tokens,
    text_mask, image_tokens) -> [B] ITM match logits), jitted: batch-sharded in, replicated out."""
    out = parallel.replicated(mesh)

    def batch(ndim: int):
        return parallel.batch_sharding(mesh, ndim)

    def apply(method):
        def fn(params, *args):
            with nn.logical_axis_rules(rules):
                return model.apply({'params': params}, *args, method=method)

        return fn

    def jitted(method, ndims):
        fn = jax.jit(apply(method), in_shardings=(params_shardings, *map(batch, ndims)), out_shardings=out)

        def call(*args):
            with jax.set_mesh(mesh):
                return fn(*args)

        return call

    return (
        jitted(VLPModel.image_tokens, (4,)),
        jitted(VLPModel.text_tokens, (2, 2)),
        jitted(_match_logit, (3, 2, 3)),
    )


def candidate_pairs(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t2i_top [Nt, k_i], i2t_top [Ni, k_t], pair_text [P], pair_image [P]): ITC's top k per query in
    both directions and the distinct (text, image) pairs they name, text-major."""
    num_texts, num_images = similarity.shape
    t2i_top = top_k(similarity, min(k, num_images))
    i2t_top = top_k(similarity.T, min(k, num_texts))
    flat = np.concatenate(
        [
            (np.arange(num_texts)[:, None] * num_images + t2i_top).ravel(),
            (i2t_top * num_images + np.arange(num_images)[:, None]).ravel(),
        ]
    )
    pairs = np.unique(flat)
    return t2i_top, i2t_top, pairs // num_images, pairs % num_images


def rerank_scores(
    functions: tuple[Callable, ...],
    params: Any,
    retrieval: Any,
    similarity: np.ndarray,
    k: int,
    batch_size: int,
    mesh: Mesh,
    score: str = 'itm',
) -> RerankedScores:
    """The re-ranked score matrices (see the module docstring) of a retrieval set (images,
    text_ids, text_mask) given its ITC cosines `similarity` [Nt, Ni]."""
    image_tokens_fn, text_tokens_fn, match_fn = functions
    similarity = np.asarray(similarity, np.float32)
    num_texts, num_images = similarity.shape
    t2i_top, i2t_top, pair_text, pair_image = candidate_pairs(similarity, k)
    image_tokens = embed_in_batches(lambda x: image_tokens_fn(params, x), (retrieval.images,), batch_size, mesh)
    text_tokens = embed_in_batches(
        lambda i, m: text_tokens_fn(params, i, m), (retrieval.text_ids, retrieval.text_mask), batch_size, mesh
    )
    text_mask = np.asarray(retrieval.text_mask)
    match = lambda t, m, i: match_fn(params, t, m, i)
    logits = []
    for start in range(0, pair_text.shape[0], batch_size):  # gather one batch of pairs at a time
        texts, images = pair_text[start : start + batch_size], pair_image[start : start + batch_size]
        chunk = (text_tokens[texts], text_mask[texts], image_tokens[images])
        logits.append(embed_in_batches(match, chunk, batch_size, mesh))
    pair_logit = np.full((num_texts, num_images), np.nan, np.float32)
    pair_logit[pair_text, pair_image] = np.concatenate(logits).astype(np.float32)
    assert score in SCORES, score
    if score == 'itm_itc':  # BLIP (models/blip_retrieval.py evaluation): "score + topk_sim"
        pair_logit = pair_logit + similarity
    t2i = np.full((num_texts, num_images), -np.inf, np.float32)
    rows = np.arange(num_texts)[:, None]
    t2i[rows, t2i_top] = pair_logit[rows, t2i_top]
    i2t = np.full((num_images, num_texts), -np.inf, np.float32)
    cols = np.arange(num_images)[:, None]
    i2t[cols, i2t_top] = pair_logit[i2t_top, cols]
    return RerankedScores(t2i=t2i, i2t=i2t)


def make_reranker(setup: Any, k: int, score: str = 'itm') -> Callable[[Any, Any, np.ndarray], RerankedScores]:
    """(params, retrieval set, ITC similarity [Nt, Ni]) -> RerankedScores, for a fusion model's setup."""
    if setup.model.config.kind != 'fusion':
        raise ValueError(f"re-ranking needs the ITM head of model.kind='fusion', not {setup.model.config.kind!r}")
    functions = make_itm_functions(setup.model, setup.mesh, setup.rules, setup.shardings['params'])
    batch_size = int(setup.config.eval.batch_size)

    def rerank(params, retrieval, similarity: np.ndarray) -> RerankedScores:
        return rerank_scores(functions, params, retrieval, similarity, k, batch_size, setup.mesh, score)

    return rerank
