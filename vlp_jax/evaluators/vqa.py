"""The 'vqa' evaluator: answers each question of a VQA set (data/tasks/vqa_fields.py) two ways and scores both
with the official VQA accuracy (evaluators/vqa_metrics.py: normalised answer, min(#humans agreeing / 3, 1)):

- `eval/vqa/accuracy`: ALBEF's ranking over the source's answer list (decoding.rank_answers: every candidate's
  first token scored, the top `eval.vqa.k` re-scored by their whole log-likelihood; ALBEF's k_test is 128);
- `eval/vqa/accuracy_generate`: free generation (greedy, or beam search with `eval.vqa.beam` > 1), up to
  `loss.vqa.answer_len` - 1 tokens ([SEP] counted).

A named set reports `eval/vqa/<name>/...`. With `eval.vqa.output` (`output_generate`) set, each evaluation
writes the ranked (generated) answers there as JSON lines {"question_id": ..., "answer": ...}; questions
without human answers (a test split kept for a server) are answered and written but not scored.

    --config.eval.sets='(vqa:shapes_vqa,)'
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from vlp_jax.config import at_least, key, settings_of
from vlp_jax.data.batch import normalise_images
from vlp_jax.data.eval_sets import LOAD_CHUNK, spread_indices
from vlp_jax.data.sources import Source
from vlp_jax.data.tasks.vqa_fields import HUMAN_ANSWERS, QUESTION_ID
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.decoding import DecodeSettings, decode, rank_answers
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.captioning import caption_texts
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.evaluators.vqa_metrics import vqa_accuracy
from vlp_jax.objectives.vqa import VqaSettings, fused_questions
from vlp_jax.registry import EVALUATORS

# Answer rows one ranking call decodes (questions x k): their word logits [rows, answer_len, 30,522] float32 are
# materialised, ~1 GB at 1,024 rows of 8 tokens.
RANK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class VqaEvalSettings:
    """How the 'vqa' evaluator (and `vlp_jax.generate` on a VQA run) answers."""

    k: int = key(128, "ranking: candidates kept by their first token and re-scored whole (0: all; ALBEF's 128)",
                 check=at_least(0))  # fmt: skip
    beam: int = key(1, 'free generation: beam width (1: greedy)', check=at_least(1))
    size: int = key(0, 'questions evaluated, spread over the set (0: all)', check=at_least(0))
    output: str = key('', 'a file the ranked answers are written to as JSON lines at each evaluation ("": none)')
    output_generate: str = key('', 'the same for the generated answers ("": none)')


@dataclasses.dataclass
class VqaSet:
    """Questions with their images, ready for the model."""

    images: np.ndarray  # [Q, H, W, 3] normalised
    ids: np.ndarray  # [Q, L] the questions' tokens
    mask: np.ndarray
    question_ids: list[int]
    humans: list[list[str]]  # each question's human answers ([] : none)
    dropped: int = 0


def load_vqa_set(source: Source, indices: np.ndarray, image_size: int, max_text_len: int) -> VqaSet:
    """The questions at `indices` (encoded images decoded and centre-cropped; records that fail are dropped)."""
    parts = [source.batch(indices[start : start + LOAD_CHUNK]) for start in range(0, len(indices), LOAD_CHUNK)]
    captions = [c for part in parts for c in part['captions']]
    fields: dict[str, list] = {QUESTION_ID: [], HUMAN_ANSWERS: []}
    for part in parts:
        n = len(part['captions'])
        fields[QUESTION_ID] += [int(q) for q in np.asarray(part['fields'].get(QUESTION_ID, np.full(n, -1)))]
        fields[HUMAN_ANSWERS] += [list(h) for h in part['fields'].get(HUMAN_ANSWERS, [[]] * n)]
    if source.encoded:
        from vlp_jax.data.tf_augment import eval_images  # TensorFlow stays out of the core

        images, kept = eval_images([data for part in parts for data in part['image_bytes']], image_size)
    else:
        images, kept = np.concatenate([part['image'] for part in parts]), np.arange(len(captions))
    keep = [row for row, k in enumerate(kept) if captions[k]]
    kept = [int(kept[row]) for row in keep]
    tokens = shared_tokenizer(max_text_len)([captions[k][0] for k in kept])
    return VqaSet(
        images=normalise_images(np.asarray(images)[keep]),
        ids=tokens['text_ids'],
        mask=tokens['text_mask'],
        question_ids=[fields[QUESTION_ID][k] for k in kept],
        humans=[fields[HUMAN_ANSWERS][k] for k in kept],
        dropped=len(indices) - len(kept),
    )


class VqaAnswerer:
    """The model's answers to questions, by ranking an answer list or by free generation, jit-compiled once per
    model on fixed-size padded batches."""

    def __init__(self, module: Any, max_text_len: int, answer_len: int, batch_size: int):
        self.module, self.max_text_len, self.answer_len, self.batch_size = module, max_text_len, answer_len, batch_size

        def apply(params, *args, method, rng=None):
            return module.apply({'params': params}, *args, method=method)

        self._fuse = jax.jit(lambda params, image, ids, mask: fused_questions(apply, params, image, ids, mask))

    def _batches(self, data: VqaSet):
        """(padded images, ids, mask, real rows) of each batch of `data`."""
        for start in range(0, len(data.ids), self.batch_size):
            chunk = [x[start : start + self.batch_size] for x in (data.images, data.ids, data.mask)]
            real = len(chunk[0])
            if real < self.batch_size:
                chunk = [np.concatenate([x, np.repeat(x[-1:], self.batch_size - real, axis=0)]) for x in chunk]
            yield (*chunk, real)

    def rank(self, params: Any, data: VqaSet, answer_list: Sequence[str], k: int) -> list[str]:
        """ALBEF's ranking over `answer_list` (k <= 0 or more than the list: every candidate)."""
        tokens = shared_tokenizer(self.max_text_len)(list(answer_list))
        ids, mask = tokens['text_ids'][:, : self.answer_len], tokens['text_mask'][:, : self.answer_len]
        k = len(answer_list) if k <= 0 else min(k, len(answer_list))
        chunk = max(1, min(self.batch_size, RANK_ROWS // k))  # questions per ranking call: k answer rows each
        out = []
        for images, q_ids, q_mask, real in self._batches(data):
            fused = self._fuse(params, images, q_ids, q_mask)
            best = []
            for start in range(0, real, chunk):
                rows = np.minimum(np.arange(start, start + chunk), real - 1)  # fixed size: one compilation
                found, _ = rank_answers(self.module, params, fused[rows], q_mask[rows], ids, mask, k)
                best += [int(i) for i in np.asarray(found)[: min(chunk, real - start)]]
            out += [answer_list[i] for i in best]
        return out

    def generate(self, params: Any, data: VqaSet, beam: int) -> list[str]:
        """Free generation: greedy (beam 1) or beam search, at most answer_len - 1 tokens."""
        settings = DecodeSettings(max_len=self.answer_len - 1, min_len=1, beam=beam)
        out = []
        for images, q_ids, q_mask, real in self._batches(data):
            fused = self._fuse(params, images, q_ids, q_mask)
            tokens, _ = decode(self.module, params, fused, q_mask, settings)
            out += caption_texts(np.asarray(tokens)[:real], '', self.max_text_len)
        return out


def write_answers(path: str, question_ids: Sequence[int], answers: Sequence[str]) -> None:
    """JSON lines {"question_id", "answer"} (the VQA challenge's result format, one line each)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        for question_id, answer in zip(question_ids, answers, strict=True):
            f.write(json.dumps({'question_id': int(question_id), 'answer': answer}) + '\n')


def mean_accuracy(answers: Sequence[str], humans: Sequence[Sequence[str]]) -> float | None:
    """The official VQA accuracy averaged over the questions that have human answers (None: none has)."""
    scores = [vqa_accuracy(answer, h) for answer, h in zip(answers, humans, strict=True) if h]
    return float(np.mean(scores)) if scores else None


@EVALUATORS.register('vqa', groups={'eval.vqa': VqaEvalSettings})
class VqaEvaluator(Evaluator):
    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        config = context.config
        self.settings = settings_of(config, VqaEvalSettings)
        self.answer_len = int(settings_of(config, VqaSettings).answer_len)
        self.answer_list = tuple(getattr(source, 'answer_list', ()))
        if not self.answer_list:
            from vlp_jax.data.errors import DataError

            raise DataError(f'evaluation set {spec.name or spec.source!r} has no answer list: it is not a VQA set.')
        size = self.settings.size or len(source)
        indices = spread_indices(len(source), size)
        self.data = load_vqa_set(source, indices, context.image_size, context.max_text_len)
        self.dropped = self.data.dropped
        self._answerer: VqaAnswerer | None = None

    def __call__(self, model: EvalModel) -> dict[str, float]:
        if self._answerer is None or self._answerer.module is not model.module:
            self._answerer = VqaAnswerer(model.module, self.context.max_text_len, self.answer_len, model.batch_size)
        named = self.spec.where and self.spec.name
        prefix = f'eval/vqa/{self.spec.name}/' if named else 'eval/vqa/'
        metrics = {}
        runs = (
            ('accuracy', self.settings.output, lambda: self._answerer.rank(model.params, self.data, self.answer_list,
                                                                           self.settings.k)),
            ('accuracy_generate', self.settings.output_generate,
             lambda: self._answerer.generate(model.params, self.data, self.settings.beam)),
        )  # fmt: skip
        for name, output, answer in runs:
            answers = answer()
            if output and jax.process_index() == 0:
                write_answers(output, self.data.question_ids, answers)
            score = mean_accuracy(answers, self.data.humans)
            if score is not None:
                metrics[prefix + name] = score
        return metrics
