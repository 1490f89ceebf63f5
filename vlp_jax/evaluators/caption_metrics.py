"""Captioning metrics: corpus BLEU-4 and CIDEr-D as the COCO caption evaluation (coco-caption / pycocoevalcap)
computes them, written in plain Python from the papers and that code's definitions.

pycocoevalcap is not used: its scores need its PTBTokenizer, which runs Stanford CoreNLP under Java. Its BLEU and
CIDEr scorers themselves are pure Python; this module follows them:

- BLEU-4 (Papineni et al., ACL 2002; coco-caption bleu_scorer.py, option 'closest'): modified (clipped) n-gram
  precisions p_1..p_4 summed over the corpus (micro-average), their geometric mean, times the brevity penalty
  exp(1 - r / c) when the candidates' total length c is below r, the sum of each candidate's closest reference
  length (ties: the shorter). coco-caption adds 1e-15 / 1e-9 to each precision's numerator / denominator, which
  only matters where a precision is 0 (then BLEU-4 is ~0 here and exactly 0 in nltk).
- CIDEr-D (Vedantam et al., CVPR 2015; coco-caption cider_scorer.py): per n = 1..4, tf-idf vectors of n-gram
  counts, idf = log(#images) - log(max(1, #images whose references contain the n-gram)) over the evaluated
  set's references; per reference the cosine with the candidate's vector where the candidate's weights are
  clipped to the reference's (min(w_c, w_r) * w_r), times the Gaussian length penalty exp(-delta^2 / (2 * 6^2))
  (delta: the difference of the two sentences' bigram counts, as the code counts length); the mean over n, the
  mean over the references, times 10; the corpus score is the mean over images. A zero-norm vector (every n-gram
  of it in every image's references) scores 0 where coco-caption would divide by zero.

Tokenisation (`tokenize`): lower case, punctuation removed as the PTB tokenizer's output is filtered in
coco-caption (". , ? ! : ; - ' \" ( )" and the like), split on white space. Contractions stay one token where
Stanford's tokenizer splits them ("it's" -> "it 's"); the synthetic captions have none.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MAX_N = 4
CIDER_SIGMA = 6.0
_PUNCTUATION = re.compile(r"[.,?!:;\-\"'`()\[\]{}]+")


def tokenize(text: str) -> list[str]:
    return _PUNCTUATION.sub(' ', text.lower()).split()


def ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = MAX_N):
    """Corpus BLEU-1..max_n (a list) of tokenised candidates, each with its tokenised references."""
    correct, guess = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        cand_len += len(cand)
        ref_len += min((len(r) for r in refs), key=lambda n: (abs(n - len(cand)), n))
        for n in range(1, max_n + 1):
            counts = ngrams(cand, n)
            most = Counter()
            for ref in refs:
                most |= ngrams(ref, n)  # the per-n-gram maximum over the references
            correct[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            guess[n - 1] += max(0, len(cand) - n + 1)
    tiny, small = 1e-15, 1e-9
    penalty = 1.0 if cand_len >= ref_len else math.exp(1 - (ref_len + small) / (cand_len + tiny))
    scores, product = [], 1.0
    for n in range(max_n):
        product *= (correct[n] + tiny) / (guess[n] + small)
        scores.append(penalty * product ** (1.0 / (n + 1)))
    return scores


def _tfidf(counts: Counter, df: Counter, log_images: float):
    """-> (per n: {ngram: weight}, per n: norm, length = the bigram count)."""
    vec = [{} for _ in range(MAX_N)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
    norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
    return vec, norms, sum(counts[g] for g in vec[1])


def cider_d(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> tuple[float, list]:
    """(corpus CIDEr-D, per-image scores) of tokenised candidates and their references; idf from these references."""
    count = lambda words: sum((ngrams(words, n) for n in range(1, MAX_N + 1)), Counter())
    ref_counts = [[count(r) for r in refs] for refs in references]
    df = Counter(g for refs in ref_counts for g in set().union(*refs))
    log_images = math.log(len(references))
    scores = []
    for cand, refs in zip(candidates, ref_counts, strict=True):
        vec, norm, length = _tfidf(count(cand), df, log_images)
        total = [0.0] * MAX_N
        for ref in refs:
            rvec, rnorm, rlength = _tfidf(ref, df, log_images)
            penalty = math.exp(-((length - rlength) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(MAX_N):
                if norm[n] and rnorm[n]:
                    dot = sum(min(w, rvec[n].get(g, 0.0)) * rvec[n].get(g, 0.0) for g, w in vec[n].items())
                    total[n] += dot / (norm[n] * rnorm[n]) * penalty
        scores.append(10.0 * sum(total) / MAX_N / len(refs))
    return sum(scores) / len(scores), scores


def caption_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{'bleu4', 'cider'} of caption strings, each with its reference strings (tokenised by `tokenize`)."""
    cands = [tokenize(c) for c in candidates]
    refs = [[tokenize(r) for r in rs] for rs in references]
    return {'bleu4': bleu(cands, refs)[MAX_N - 1], 'cider': cider_d(cands, refs)[0]}
