"""Greedy and beam search (vlp_jax/decoding.py): beam width 1 is greedy, the key/value cache changes no token and no
log-probability (to 1e-5), and both searches equal plain-python references written from HF's rules over the
model's uncached logits (tokens and scores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decoder import BATCH, MODELS, SEQ, VOCAB, Models, inputs

from vlp_jax.decoding import DecodeSettings, beam_search, best_token, greedy, rank_answers, top_log_probs

EOS, PAD, BOS = 3, 0, 1


@pytest.fixture(scope='module')
def setup():
    model, params = MODELS['shared', True]
    Models.model = model
    image, _, _ = inputs(7)
    context = jax.jit(lambda p, x: model.apply({'params': p}, x, method='image_tokens'))(params, image)
    # A random decoder rarely ends: raise [SEP]'s bias so that some sequences end early and some run out.
    params = jax.tree_util.tree_map(lambda x: x, params)
    params['mlm_bias'] = params['mlm_bias'].at[EOS].add(2.5)
    return model, params, context


def _settings(**kw):
    base = dict(max_len=5, min_len=2, eos_id=EOS, pad_id=PAD, bos_id=BOS, prompt=(5, 9))
    return DecodeSettings(**{**base, **kw})


@jax.jit
def _whole_run_logits(params, context, ids):
    model = Models.model
    hidden = model.apply({'params': params}, ids, jnp.ones_like(ids), context, None, method='decode')
    return model.apply({'params': params}, hidden, method='lm_logits')[..., :VOCAB]


def _np_logits(params, context, seq):
    """The next-token logits [vocab] after a python list `seq` of one item (context [1, N, D]): the whole prefix
    run through the decoder, no cache (padded to SEQ: causal, the padding changes nothing before it)."""
    ids = jnp.asarray([seq + [PAD] * (SEQ - len(seq))], jnp.int32)
    return np.asarray(_whole_run_logits(params, context, ids), np.float64)[0, len(seq) - 1]


def _np_penalise(z, seq, generated, s):
    z = z.copy()
    for t in set(seq):
        z[t] = z[t] / s.repetition_penalty if z[t] > 0 else z[t] * s.repetition_penalty
    z[s.pad_id] = -np.inf
    if generated < s.min_len:
        z[s.eos_id] = -np.inf
    return z


def _np_log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def np_greedy(logits_fn, s):
    """-> (the greedy tokens, padded, and their summed log-probabilities under the penalised distributions)."""
    seq = [s.bos_id, *s.prompt]
    out, score = [], 0.0
    for i in range(s.max_len):
        z = _np_penalise(logits_fn(seq), seq, i, s)
        token = int(np.argmax(z))
        score += _np_log_softmax(z)[token]
        seq.append(token)
        out.append(token)
        if token == s.eos_id:
            break
    return out + [s.pad_id] * (s.max_len - len(out)), score


def np_beam(logits_fn, s):
    """HF's beam search (BeamSearchScorer) in plain python: lists of (logprob, tokens)."""
    start = [s.bos_id, *s.prompt]
    alive = [(0.0, [])]
    hyps = []  # (score, tokens)
    for i in range(s.max_len):
        cands = []
        for logp, toks in alive:
            lp = _np_log_softmax(_np_penalise(logits_fn(start + toks), start + toks, i, s))
            cands += [(logp + lp[t], toks + [t]) for t in range(len(lp)) if np.isfinite(lp[t])]
        cands.sort(key=lambda c: -c[0])
        alive = []
        for rank, (logp, toks) in enumerate(cands):
            if toks[-1] == s.eos_id:
                if rank < s.beam:
                    hyps.append((logp / len(toks) ** s.length_penalty, toks))
            else:
                alive.append((logp, toks))
            if len(alive) == s.beam:
                break
        hyps = sorted(hyps, key=lambda h: -h[0])[: s.beam]
    hyps += [(logp / s.max_len**s.length_penalty, toks) for logp, toks in alive]
    best = max(hyps, key=lambda h: h[0])
    return best[1] + [s.pad_id] * (s.max_len - len(best[1])), best[0]


def test_the_picks_equal_numpy_argmax_and_sorted_log_softmax_ties_to_the_lower_index():
    logits = np.random.default_rng(0).normal(size=(4, 40)).astype(np.float32)
    logits[1, [3, 17, 30]] = logits[1].max() + 1.0  # a three-way tie for the max: the first wins
    logits[2, [5, 6]] = -1e30  # banned
    token, logp = best_token(jnp.asarray(logits))
    log_softmax = np.stack([_np_log_softmax(row.astype(np.float64)) for row in logits])
    np.testing.assert_array_equal(np.asarray(token), np.argmax(logits, axis=-1))
    assert int(token[1]) == 3
    np.testing.assert_allclose(np.asarray(logp), log_softmax.max(axis=-1), rtol=1e-6, atol=1e-6)
    top, index = top_log_probs(jnp.asarray(logits), 5)
    order = np.argsort(-logits, axis=-1, kind='stable')[:, :5]
    np.testing.assert_array_equal(np.asarray(index), order)
    np.testing.assert_allclose(np.asarray(top), np.take_along_axis(log_softmax, order, -1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('repetition', [1.5, pytest.param(1.0, marks=pytest.mark.slow)])
def test_beam_width_one_is_greedy_and_the_cache_changes_no_token(setup, repetition):
    model, params, context = setup
    s = _settings(repetition_penalty=repetition, length_penalty=0.0)
    tokens, score = greedy(model, params, context, None, s)
    uncached, uncached_score = greedy(model, params, context, None, s, cache=False)
    beam1, _ = beam_search(model, params, context, None, s)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(uncached))
    np.testing.assert_allclose(np.asarray(score), np.asarray(uncached_score), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(beam1), np.asarray(tokens))
    ended = np.asarray(tokens == EOS).any(1)
    assert ended.any(), 'the test should see a sequence end at [SEP]'
    for b in range(BATCH):
        want, want_score = np_greedy(lambda seq: _np_logits(params, context[b : b + 1], seq), s)
        assert np.asarray(tokens[b]).tolist() == want
        np.testing.assert_allclose(float(score[b]), want_score, rtol=1e-4)


@pytest.mark.parametrize('beam, length_penalty', [(3, 1.0), pytest.param(2, 0.6, marks=pytest.mark.slow)])
def test_beam_search_equals_a_plain_python_hf_beam_search(setup, beam, length_penalty):
    model, params, context = setup
    s = _settings(beam=beam, length_penalty=length_penalty, repetition_penalty=1.3, max_len=4)
    tokens, scores = beam_search(model, params, context, None, s)
    uncached, uncached_scores = beam_search(model, params, context, None, s, cache=False)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(uncached))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(uncached_scores), rtol=0, atol=1e-5)
    for b in range(BATCH):
        want, score = np_beam(lambda seq: _np_logits(params, context[b : b + 1], seq), s)
        assert np.asarray(tokens[b]).tolist() == want
        np.testing.assert_allclose(float(scores[b]), score, rtol=1e-4)


def test_answer_ranking_with_k_all_is_the_brute_force_argmax_and_a_small_k_keeps_first_token_winners(setup):
    model, params, context = setup
    rng = np.random.default_rng(4)
    lengths = [1, 2, 3, 2, 1, 3, 2]  # answers of 1-3 words: [CLS] words [SEP] [PAD]... ([CLS] = 2 here)
    answers = np.zeros((len(lengths), 6), np.int32)
    for i, n in enumerate(lengths):
        answers[i, : n + 2] = [2, *rng.integers(5, VOCAB, size=n), EOS]
    mask = (answers > 0).astype(np.int32)
    # the same first word for two answers: the first-token stage cannot separate them
    answers[3, 1] = answers[1, 1]

    def brute(b):
        scores = []
        for ids, n in zip(answers, lengths):
            seq = [BOS, *ids[1 : n + 2]]  # [BOS] words [SEP]
            log_p = [_np_log_softmax(_np_logits(params, context[b : b + 1], seq[:t])) for t in range(1, len(seq))]
            scores.append(sum(lp[tok] for lp, tok in zip(log_p, seq[1:])))
        return np.asarray(scores)

    best, score = rank_answers(model, params, context, None, jnp.asarray(answers), jnp.asarray(mask), len(lengths))
    for b in range(BATCH):
        want = brute(b)
        assert int(best[b]) == int(np.argmax(want))
        np.testing.assert_allclose(float(score[b]), want.max(), rtol=1e-4)
        first = np.asarray(_np_log_softmax(_np_logits(params, context[b : b + 1], [BOS])))[answers[:, 1]]
        k2, _ = rank_answers(model, params, context[b : b + 1], None, jnp.asarray(answers), jnp.asarray(mask), 2)
        kept = np.argsort(-first, kind='stable')[:2]
        assert int(k2[0]) == kept[np.argmax(want[kept])]
