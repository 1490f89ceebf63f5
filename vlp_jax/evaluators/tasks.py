"""Evaluators of the fine-tuning tasks (objectives/finetune.py).

- 'retrieval_ft': ALBEF's retrieval evaluation (Retrieval.py `evaluation` + `itm_eval`): ITC cosines, each
  query's top `eval.rerank_k` (ALBEF's k_test) candidates re-scored by ITM (evaluators/rerank.py; the score
  ALBEF's ITM match logit or BLIP's ITM + ITC, `eval.rerank_score`), reported as ALBEF names them:
  eval/retrieval_ft/{tr,ir}_r{1,5,10} (tr = image -> text, ir = text -> image) and r_mean, their mean. With
  eval.rerank_k 0 (or a dual encoder) the ITC ranking is reported.
- 'accuracy': a classification task's accuracy (SNLI-VE, NLVR2): the run's task head on each test example,
  argmax against its 'label'; eval/<set name>/accuracy.
- 'text_assignment': NLVR2's text-assignment pre-stage (objective 'nlvr2_ta'): captioned images in fixed
  pairs, 3 classes (the caption's image is image 0 / image 1 / neither); eval/<set name>/accuracy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from vlp_jax.data.batch import normalise_images
from vlp_jax.data.eval_sets import load_examples, source_retrieval_set, spread_indices
from vlp_jax.data.sources import Source
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.evaluators.retrieval import RECALL_AT, itc_similarity, retrieval_metrics_from_scores
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.registry import EVALUATORS


def albef_recalls(metrics: dict[str, float]) -> dict[str, float]:
    """{i2t,t2i}_r{k} -> ALBEF's names: tr_r{k} (text retrieval: image -> text), ir_r{k}, and r_mean."""
    out = {}
    for k in RECALL_AT:
        out[f'tr_r{k}'] = 100.0 * metrics[f'i2t_r{k}']
        out[f'ir_r{k}'] = 100.0 * metrics[f't2i_r{k}']
    out['r_mean'] = float(np.mean(list(out.values())))
    return out


@EVALUATORS.register('retrieval_ft')
class RetrievalFinetuneEvaluator(Evaluator):
    """TR/IR R@1/5/10 (percent, as ALBEF prints them) and r_mean, ITM re-ranked when the model re-ranks."""

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        self.data = source_retrieval_set(
            source, context.settings.retrieval_size, context.image_size, context.max_text_len, spec.name
        )

    def __call__(self, model: EvalModel) -> dict[str, float]:
        data = self.data
        prefix = f'{data.name}/' if data.name else ''
        image_embed = embed_in_batches(model.encode_images, (data.images,), model.batch_size, model.mesh)
        text_embed = embed_in_batches(model.encode_texts, (data.text_ids, data.text_mask), model.batch_size, model.mesh)
        similarity = itc_similarity(image_embed, text_embed)
        if model.rerank is None:
            metrics = retrieval_metrics_from_scores(similarity, similarity.T, data.text_image)
        else:
            scores = model.rerank(data, similarity)
            metrics = retrieval_metrics_from_scores(scores.t2i, scores.i2t, data.text_image, tie_break=similarity)
        return {f'eval/retrieval_ft/{prefix}{key}': value for key, value in albef_recalls(metrics).items()}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax (ties: the lower class) is the label."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


@EVALUATORS.register('accuracy')
class TaskAccuracyEvaluator(Evaluator):
    """A classification task's accuracy on the set's examples (first caption = the text, 'label' its class)."""

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        indices = spread_indices(len(source), context.settings.classification_size)
        examples, _, _ = load_examples(source, indices, context.image_size)
        tokens = shared_tokenizer(context.max_text_len)([captions[0] for captions in examples['captions']])
        fields = examples['fields']
        self.arrays = {
            'image': normalise_images(examples['image']),
            'text_ids': tokens['text_ids'],
            'text_mask': tokens['text_mask'],
        }
        if 'image1' in fields:
            self.arrays['image1'] = normalise_images(np.asarray(fields['image1']))
        self.labels = np.asarray(fields['label']).reshape(len(indices), -1)[:, 0]  # the first caption's
        self.name = spec.name or 'accuracy'
        self._jitted = None  # compiled once, on the first call

    def _function(self, model: EvalModel):
        setup = model.setup
        if self._jitted is None:
            objective, keys = setup.objective, tuple(self.arrays)

            def logits(params, *arrays):
                with nn.logical_axis_rules(setup.rules):
                    return objective.logits(params, dict(zip(keys, arrays)))

            self._jitted = jax.jit(logits)

        def call(*arrays):
            with jax.set_mesh(setup.mesh):
                return self._jitted(model.params, *arrays)

        return call

    def __call__(self, model: EvalModel) -> dict[str, float]:
        assert model.setup is not None and hasattr(model.setup.objective, 'logits'), 'needs a task objective'
        logits = embed_in_batches(self._function(model), tuple(self.arrays.values()), model.batch_size, model.mesh)
        return {f'eval/{self.name}/accuracy': accuracy(logits, self.labels)}


def assignment_triples(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed text-assignment test triples over `count` captioned images: text i with j = i + 1 and k = i + 2
    (mod count) as (i, j) label 0, (j, i) label 1 or (j, k) label 2, by i mod 3: ([N] image 0, [N] image 1,
    [N] labels)."""
    i = np.arange(count)
    j, k, label = (i + 1) % count, (i + 2) % count, i % 3
    first = np.where(label == 0, i, j)
    second = np.where(label == 0, j, np.where(label == 1, i, k))
    return first, second, label.astype(np.int32)


@EVALUATORS.register('text_assignment')
class TextAssignmentEvaluator(TaskAccuracyEvaluator):
    """NLVR2's text-assignment accuracy on a captioned set (objective 'nlvr2_ta'): each image's first caption
    with the fixed pairs of assignment_triples; eval/<set name>/accuracy. Coarse captions can be true of the
    other image too, so 1.0 is not reachable on every set."""

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        indices = spread_indices(len(source), context.settings.classification_size)
        examples, _, _ = load_examples(source, indices, context.image_size)
        tokens = shared_tokenizer(context.max_text_len)([captions[0] for captions in examples['captions']])
        images = normalise_images(examples['image'])
        first, second, self.labels = assignment_triples(len(indices))
        Evaluator.__init__(self, spec, source, context)
        self.arrays = {
            'image': images[first],
            'text_ids': tokens['text_ids'],
            'text_mask': tokens['text_mask'],
            'image1': images[second],
        }
        self.name = spec.name or 'text_assignment'
        self._jitted = None
