"""What a VQA source gives, whatever its data: the batch fields the 'vqa' objective reads and the answers the
'vqa' evaluator scores against (objectives/vqa.py, evaluators/vqa.py).

A VQA source's `batch(indices)` returns, per example (one question about one image):

- 'image' (or 'image_bytes'), and 'captions': [[question]] (the question is the example's one caption);
- fields 'answers': the question's distinct answers, a list of `answer_slots` strings ('' pads), tokenised by
  the pipeline like the caption into [B, A, L]; 'answer_weight' [B, A]: each answer's share of the human
  answers (ALBEF's vqa_dataset: "answer_weight[answer] += 1/len(ann['answer'])"), 0 for a pad; 'question_id'
  [B] int64;
- 'human_answers' among the fields (not a batch field: evaluation reads it, the train step never does): the
  list of every human answer of the question, duplicates kept (the official accuracy counts them), [] where
  the set has none (a test split without answers).

and the source object has `answer_list`: the candidate answers the ranking evaluator scores (ALBEF's
answer_list.json). `weighted_answers` turns human answers into the first three fields' values, so a
records-backed source of ALBEF's JSON ({question_id, image, question, answer: [...]}) yields the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from vlp_jax.data import batch as batch_spec

ANSWERS, ANSWER_WEIGHT, QUESTION_ID, HUMAN_ANSWERS = 'answers', 'answer_weight', 'question_id', 'human_answers'
VQA_FIELDS = (ANSWERS, ANSWER_WEIGHT, QUESTION_ID)

batch_spec.declare_field(
    ANSWERS,
    batch_spec.Field(
        np.int32,
        3,
        batch_spec.TASK,
        "[B, A, L] WordPiece ids of the question's distinct answers (A slots, '' pads), tokenised like the caption",
        text=True,
    ),
)
batch_spec.declare_field(
    ANSWER_WEIGHT,
    batch_spec.Field(np.float32, 2, batch_spec.TASK, "[B, A] each answer's share of the human answers (0: a pad)"),
)
batch_spec.declare_field(
    QUESTION_ID, batch_spec.Field(np.int64, 1, batch_spec.TASK, '[B] the id of the question (VQA output lines)')
)


def weighted_answers(human_answers: Sequence[str], slots: int) -> tuple[list[str], list[float]]:
    """Human answers -> (the distinct answers, most given first, padded with '' to `slots`; their weights =
    count / number of humans, 0 for a pad). More distinct answers than slots: the rarest are dropped (their
    weight with them, so the weights then sum to less than 1)."""
    counts = Counter(human_answers)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:slots]
    total = max(len(human_answers), 1)
    answers = [answer for answer, _ in ranked] + [''] * (slots - len(ranked))
    weights = [count / total for _, count in ranked] + [0.0] * (slots - len(ranked))
    return answers, weights
