"""Evaluation wired once: the evaluators `eval.sets` names, built from the run's setup, run on params.

train.py (every eval_every steps) and evaluate.py (a checkpoint) both call `make_evaluator`,
so the two report the same metrics from the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlp_jax.config import EvalSettings, settings_of
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.specs import DEFAULT, EvalSpec, parse_all
from vlp_jax.registry import EVALUATORS


def expand(specs: list[EvalSpec], own_source: str, default_sets: Callable[[], tuple]) -> list[EvalSpec]:
    """'default' replaced by the run's own source's default sets (SourcePlugin.default_eval_sets)."""
    out = []
    for spec in specs:
        if spec.evaluator == DEFAULT:
            out.extend(EvalSpec(evaluator, own_source, where, name) for evaluator, where, name in default_sets())
        else:
            out.append(spec)
    return out


def build_evaluators(setup: Any) -> list[Evaluator]:
    """The evaluators of the config's eval.sets, their sets loaded and tokenised (once)."""
    config = setup.config
    context = EvalContext(
        settings_of(config, EvalSettings), int(config.model.image_size), int(config.model.max_text_len), config
    )
    own = str(config.data.name)
    specs = expand(parse_all(config.eval.sets), own, lambda: setup.source_plugin(own).default_eval_sets())
    evaluators = []
    for spec in specs:
        cls = EVALUATORS.get(spec.evaluator)
        source = setup.source_plugin(spec.source).open(
            'test', spec.where, captions=cls.reads_captions, labels=cls.reads_labels
        )
        evaluators.append(cls(spec, source, context))
    return evaluators


def make_evaluator(setup: Any) -> Callable[[Any], dict[str, float]]:
    """params -> eval metrics, for the config's eval sets and the setup's encoders; with eval.rerank_k > 0
    (fusion models) retrieval is also reported re-ranked by ITM."""
    from vlp_jax.evaluators.rerank import make_reranker

    config = setup.config
    evaluators = build_evaluators(setup)
    encode_images, encode_texts = setup.encoders()
    rerank_k = int(config.eval.rerank_k)
    reranker = make_reranker(setup, rerank_k, str(config.eval.rerank_score)) if rerank_k > 0 else None

    def evaluate(params) -> dict[str, float]:
        model = EvalModel(
            encode_images=lambda x: encode_images(params, x),
            encode_texts=lambda i, m: encode_texts(params, i, m),
            batch_size=int(config.eval.batch_size),
            mesh=setup.mesh,
            rerank=None if reranker is None else lambda data, similarity: reranker(params, data, similarity),
            module=setup.model,
            params=params,
            setup=setup,
        )
        metrics: dict[str, float] = {}
        for evaluator in evaluators:
            metrics.update(evaluator(model))
        return metrics

    evaluate.evaluators = evaluators  # the loaded sets, for the run's start-of-run lines (start_warnings.py)
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
