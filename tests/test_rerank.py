"""ITM re-ranking of ITC retrieval (ALBEF k_test): against a pair-by-pair reference, top k, 1 vs 8 devices, CLI."""

import json
import textwrap
import types

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_cli, run_on_devices

from vlp_jax import setup as setup_lib
from vlp_jax.data.eval_sets import source_retrieval_set
from vlp_jax.derived import source_plugin
from vlp_jax.evaluators.rerank import make_reranker
from vlp_jax.evaluators.retrieval import RECALL_AT, retrieval_metrics, retrieval_metrics_from_scores, top_k
from vlp_jax.evaluators.suite import make_evaluator

FUSION = ('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1')
# 8 images x their captions; eval batches of 16 (8 devices divide it) leave a padded last chunk.
SMALL = ('--config.data.shapes.test_size=8', '--config.eval.batch_size=16', '--config.eval.classification_size=16')
K = 3


def _config(*overrides):
    return make_config(*FUSION, *SMALL, *overrides, devices=1)


def retrieval_set(config):
    """The run's own retrieval set: the shapes world's test split, as the retrieval evaluator loads it."""
    source = source_plugin(config, 'shapes').open('test')
    return source_retrieval_set(source, config.eval.retrieval_size, config.model.image_size, config.model.max_text_len)


@pytest.fixture(scope='module')
def fusion():
    """A fresh tiny fusion model, its retrieval set, the ITC cosines and every pair's ITM match
    logit, each pair fused on its own (batch of 1) from the tokens of a plain `model.apply`."""
    config = _config(f'--config.eval.rerank_k={K}')
    run_setup = setup_lib.build(config, jax.devices()[:1])
    params = run_setup.init_state()['params']
    model, data = run_setup.model, retrieval_set(config)
    out = model.apply({'params': params}, data.images, data.text_ids, data.text_mask)
    similarity = np.asarray(out['text_embed']) @ np.asarray(out['image_embed']).T
    text_tokens, image_tokens = np.asarray(out['text_tokens']), np.asarray(out['image_tokens'])
    one_pair = jax.jit(
        lambda t, m, i: model.apply(
            {'params': params}, t, m, i, method=lambda v, t, m, i: v.itm_logits(v.fuse(t, m, i))
        )
    )
    num_texts, num_images = similarity.shape
    itm = np.zeros((num_texts, num_images), np.float32)  # [t, i]: ITM match logit of caption t with image i
    for t in range(num_texts):
        for i in range(num_images):
            itm[t, i] = one_pair(text_tokens[t : t + 1], data.text_mask[t : t + 1], image_tokens[i : i + 1])[0, 1]
    metrics = make_evaluator(run_setup)(params)
    return types.SimpleNamespace(
        config=config, setup=run_setup, params=params, data=data, similarity=similarity, itm=itm, metrics=metrics
    )


def _reference_scores(f, k):
    """Numpy: ITC's top k per query, scored by the pair-by-pair ITM logits, -inf elsewhere."""
    num_texts, num_images = f.similarity.shape
    t2i, i2t = np.full((num_texts, num_images), -np.inf), np.full((num_images, num_texts), -np.inf)
    for t in range(num_texts):
        for i in np.argsort(-f.similarity[t], kind='stable')[:k]:
            t2i[t, i] = f.itm[t, i]
    for i in range(num_images):
        for t in np.argsort(-f.similarity[:, i], kind='stable')[:k]:
            i2t[i, t] = f.itm[t, i]
    return t2i, i2t


def _reference_recalls(f, t2i, i2t):
    """Recall@k by plain sorting: score, then ITC cosine, then index (k clipped to min(Nt, Ni), as the metric code)."""
    sim, text_image = f.similarity, f.data.text_image
    metrics = {}
    for key_k in RECALL_AT:
        k = min(key_k, *sim.shape)
        hits = [
            text_image[t] in sorted(range(len(row)), key=lambda i: (-row[i], -sim[t, i], i))[:k]
            for t, row in enumerate(t2i)
        ]
        metrics[f't2i_r{key_k}'] = float(np.mean(hits))
        hits = [
            any(text_image[t] == i for t in sorted(range(len(row)), key=lambda t: (-row[t], -sim[t, i], t))[:k])
            for i, row in enumerate(i2t)
        ]
        metrics[f'i2t_r{key_k}'] = float(np.mean(hits))
    return metrics


def test_reranked_scores_and_metrics_match_a_pair_by_pair_reference(fusion):
    f = fusion
    scores = make_reranker(f.setup, K)(f.params, f.data, f.similarity)
    t2i, i2t = _reference_scores(f, K)
    np.testing.assert_allclose(scores.t2i, t2i, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.i2t, i2t, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(scores.t2i).sum(1) == K) and np.all(np.isfinite(scores.i2t).sum(1) == K)
    # The evaluator reports ITC metrics unchanged and the re-ranked ones beside them, from the same metric code.
    metrics = f.metrics
    for key, value in _reference_recalls(f, t2i, i2t).items():
        assert metrics[f'eval/retrieval_itm/{key}'] == pytest.approx(value), key
    expected_itc = retrieval_metrics(
        f.setup.model.apply({'params': f.params}, f.data.images, method='encode_images'),
        f.setup.model.apply({'params': f.params}, f.data.text_ids, f.data.text_mask, method='encode_texts'),
        f.data.text_image,
        f.data.truth,
    )
    for key, value in expected_itc.items():
        assert metrics[f'eval/retrieval/{key}'] == pytest.approx(value), key
        assert f'eval/retrieval_itm/{key}' in metrics


def test_k_covering_every_candidate_is_a_pure_itm_ranking(fusion):
    f = fusion
    scores = make_reranker(f.setup, 1000)(f.params, f.data, f.similarity)
    np.testing.assert_allclose(scores.t2i, f.itm, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(scores.i2t, scores.t2i.T)  # each pair fused once, for both directions
    args = (f.data.text_image, f.data.truth)
    assert retrieval_metrics_from_scores(scores.t2i, scores.i2t, *args, tie_break=f.similarity) == (
        retrieval_metrics_from_scores(f.itm, f.itm.T, *args, tie_break=f.similarity)
    )


def test_only_itc_top_k_candidates_can_rank_first(fusion):
    f, k = fusion, 2
    scores = make_reranker(f.setup, k)(f.params, f.data, f.similarity)
    for reranked, itc, itm in ((scores.t2i, f.similarity, f.itm), (scores.i2t, f.similarity.T, f.itm.T)):
        first = top_k(reranked, 1, itc)[:, 0]
        itc_top = top_k(itc, k)  # [queries, k]
        best_of_top = np.argmax(np.take_along_axis(itm, itc_top, 1), 1)
        np.testing.assert_array_equal(first, itc_top[np.arange(len(itc_top)), best_of_top])
        # The test has teeth: a pure ITM ranking would put something outside ITC's top k first.
        assert not np.all(np.any(itc_top == itm.argmax(1)[:, None], axis=1))


def test_scores_tie_break_orders_tied_candidates():
    t2i = np.array([[1.0, 1.0, -np.inf], [-np.inf, -np.inf, -np.inf]], np.float32)  # 2 texts x 3 images
    tie_break = np.array([[0.1, 0.2, 0.9], [0.1, 0.2, 0.3]], np.float32)
    assert top_k(t2i, 3, tie_break).tolist() == [[1, 0, 2], [2, 1, 0]]
    assert top_k(t2i, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    metrics = retrieval_metrics_from_scores(t2i, t2i.T, np.array([1, 2]), ks=(1,), tie_break=tie_break)
    assert metrics['t2i_r1'] == 1.0


@pytest.mark.slow  # CI time: the reranked scores and metrics are checked against a reference by default
def test_train_and_evaluate_cli_print_itc_and_reranked_metrics(tmp_path):
    common = [*FAST_OVERRIDES, *FUSION, *SMALL, '--config.eval.rerank_k=4']
    train = run_cli('vlp_jax.train', ['--config', f'{TINY_CONFIG}:steps=2', '--workdir', str(tmp_path), *common])
    evaluated = run_cli('vlp_jax.evaluate', ['--config', TINY_CONFIG, '--workdir', str(tmp_path), *common])
    last_line = lambda result: json.loads(result.stdout.strip().splitlines()[-1])
    printed_by_train, printed_by_evaluate = last_line(train), last_line(evaluated)
    for printed in (printed_by_train, printed_by_evaluate):
        itc = {key.split('/', 2)[2] for key in printed if key.startswith('eval/retrieval/')}
        itm = {key.split('/', 2)[2] for key in printed if key.startswith('eval/retrieval_itm/')}
        assert {'t2i_r1', 'i2t_r1', 't2i_r10', 'i2t_semantic_r5'} <= itc and itc == itm, printed
    assert printed_by_evaluate == pytest.approx(printed_by_train)  # the final checkpoint re-evaluates to the last eval


EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from vlp_jax import setup as setup_lib
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    from vlp_jax.data.eval_sets import source_retrieval_set
    from vlp_jax.derived import source_plugin
    from vlp_jax.evaluators.rerank import make_reranker
    from vlp_jax.evaluators.suite import make_evaluator
    assert jax.device_count() == 8
    folder, k = sys.argv[1], int(sys.argv[2])
    config = load_config_file(sys.argv[3])
    apply_overrides(config, split_overrides(sys.argv[4:])[1])
    run_setup = setup_lib.build(config)
    assert run_setup.mesh.size == 8
    params = run_setup.init_state()['params']
    model = config.model
    data = source_retrieval_set(
        source_plugin(config, 'shapes').open('test'), config.eval.retrieval_size, model.image_size, model.max_text_len
    )
    scores = make_reranker(run_setup, k)(params, data, np.load(folder + '/similarity.npy'))
    np.savez(folder + '/scores.npz', t2i=scores.t2i, i2t=scores.i2t)
    with open(folder + '/metrics.json', 'w') as handle:
        json.dump(make_evaluator(run_setup)(params), handle)
""")


def test_one_and_eight_devices_give_the_same_reranked_scores_and_metrics(fusion, tmp_path):
    f = fusion
    np.save(tmp_path / 'similarity.npy', f.similarity)
    overrides = [*FAST_OVERRIDES, *FUSION, *SMALL, f'--config.eval.rerank_k={K}']
    result = run_on_devices(EIGHT_DEVICE_SCRIPT, tmp_path, K, TINY_CONFIG, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    eight = np.load(tmp_path / 'scores.npz')
    one = make_reranker(f.setup, K)(f.params, f.data, f.similarity)
    np.testing.assert_allclose(eight['t2i'], one.t2i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight['i2t'], one.i2t, rtol=1e-5, atol=1e-6)
    with open(tmp_path / 'metrics.json') as handle:
        assert json.load(handle) == pytest.approx(f.metrics)
