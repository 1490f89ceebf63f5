"""BLEU-4 and CIDEr-D (evaluators/caption_metrics.py) against published worked examples (Papineni et al. 2002 as
quoted in nltk's bleu_score docstrings) and a dense numpy CIDEr-D written from Vedantam et al. 2015 and
coco-caption's cider_scorer.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from vlp_jax.evaluators.caption_metrics import bleu, caption_scores, cider_d, tokenize

HYP1 = 'It is a guide to action which ensures that the military always obeys the commands of the party'.split()
HYP2 = 'It is to insure the troops forever hearing the activity guidebook that party direct'.split()
REF1A = 'It is a guide to action that ensures that the military will forever heed Party commands'.split()
REF1B = 'It is the guiding principle which guarantees the military forces always being under the command of the Party'
REF1C = 'It is the practical guide for the army always to heed the directions of the party'.split()
REFS1 = [REF1A, REF1B.split(), REF1C]


def _precision(hyp, refs, n):
    """p_n of one candidate: BLEU-n / BLEU-(n-1) powers undo the geometric mean (brevity penalty 1 here)."""
    scores = bleu([hyp], [refs], n)
    return scores[n - 1] ** n / (scores[n - 2] ** (n - 1) if n > 1 else 1.0)


def test_bleu_modified_precisions_are_papinenis_examples():
    # Papineni et al. 2002, section 2.1: candidate 1 17/18 and 10/17, candidate 2 8/14 and 1/13.
    assert _precision(HYP1, REFS1, 1) == pytest.approx(17 / 18)
    assert _precision(HYP1, REFS1, 2) == pytest.approx(10 / 17)
    # candidate 2 is shorter than its closest reference (14 vs 16): divide the brevity penalty out
    penalty = math.exp(1 - 16 / 14)
    assert bleu([HYP2], [REFS1], 1)[0] / penalty == pytest.approx(8 / 14)
    assert (bleu([HYP2], [REFS1], 2)[1] / penalty) ** 2 / (8 / 14) == pytest.approx(1 / 13)
    # "the the the the the the the": modified unigram precision 2/7
    refs = ['the cat is on the mat'.split(), 'there is a cat on the mat'.split()]
    assert bleu([['the'] * 7], [refs], 1)[0] == pytest.approx(2 / 7)


def test_corpus_bleu4_is_nltks_documented_value():
    hyp2 = 'he read the book because he was interested in world history'.split()
    ref2 = 'he was interested in world history because he read the book'.split()
    assert bleu([HYP1, hyp2], [REFS1, [ref2]])[3] == pytest.approx(0.5920778868801042, rel=1e-9)
    # brevity penalty from the closest reference length (nltk's mteval-v13a example: c = 7, r = 8)
    assert bleu([['a'] * 7], [[['a'] * 11, ['a'] * 8]])[0] == pytest.approx(0.8668778997501817, rel=1e-9)


def _np_cider_d(cands, refs, sigma=6.0):
    """CIDEr-D with dense numpy tf-idf matrices over an explicit n-gram vocabulary."""

    def grams(words, n):
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]

    total = np.zeros(len(cands))
    for n in range(1, 5):
        vocab = sorted({g for rs in refs for r in rs for g in grams(r, n)} | {g for c in cands for g in grams(c, n)})
        index = {g: i for i, g in enumerate(vocab)}

        def tf(words):
            v = np.zeros(len(vocab))
            for g in grams(words, n):
                v[index[g]] += 1
            return v

        present = np.array([np.any([tf(r) > 0 for r in rs], axis=0) for rs in refs])  # [images, vocab]
        idf = np.log(len(refs)) - np.log(np.maximum(1.0, present.sum(0)))
        for i, (cand, rs) in enumerate(zip(cands, refs)):
            c = tf(cand) * idf
            for r_words in rs:
                r = tf(r_words) * idf
                denom = np.linalg.norm(c) * np.linalg.norm(r)
                delta = (len(cand) - 1) - (len(r_words) - 1)  # coco-caption's length: the bigram count
                if denom > 0:
                    total[i] += (np.minimum(c, r) @ r) / denom * np.exp(-(delta**2) / (2 * sigma**2)) / len(rs)
    return 10 * total / 4


def test_cider_d_matches_a_dense_numpy_cider_d():
    rng = np.random.default_rng(0)
    words = 'a red blue circle square small large on left of the'.split()
    refs = [[list(rng.choice(words, size=rng.integers(3, 9))) for _ in range(rng.integers(1, 5))] for _ in range(6)]
    cands = [list(rng.choice(words, size=rng.integers(2, 10))) for _ in range(6)]
    cands[0] = list(refs[0][0])  # one candidate equal to one of its references
    score, per_image = cider_d(cands, refs)
    want = _np_cider_d(cands, refs)
    np.testing.assert_allclose(per_image, want, rtol=1e-9)
    assert score == pytest.approx(want.mean())
    assert per_image[0] > np.median(per_image)


def test_a_caption_equal_to_its_only_reference_scores_10_when_its_ngrams_are_rare():
    refs = [['a big red circle'], ['the small blue square'], ['one dark green star']]
    # every n-gram of each caption is in one image's references only: idf equal within n, cosine 1 per n
    got = caption_scores(['A big red circle.', 'the small blue square', 'one dark green star'], refs)
    assert got['cider'] == pytest.approx(10.0)
    assert got['bleu4'] == pytest.approx(1.0)
    short = caption_scores(['a big red'], [['a big red']])  # no 4-gram: that n scores 0 (coco-caption's mean)
    assert short['cider'] == pytest.approx(0.0)  # one image: every idf is log(1) - log(1) = 0
    constant = caption_scores(['a big red circle'] * 3, refs)
    assert constant['cider'] < 4 and constant['bleu4'] < 0.5


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize('A red, "big" circle -- on the LEFT.') == ['a', 'red', 'big', 'circle', 'on', 'the', 'left']
    assert list(itertools.chain(tokenize(''))) == []
