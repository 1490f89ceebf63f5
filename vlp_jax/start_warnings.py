"""What a run says once at its start, one line each, so that a small run cannot mislead.

R@5 = 1.0 on 5 images looks like a result, a warmup longer than the run never reaches the learning
rate, and an eval batch far larger than the set encodes mostly padding: each is one line before the
first step (train.py prints them), never a failure. Every evaluation set's size is printed too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SMALL_EVAL_SET = 100  # images below which an evaluation set's figures move by whole points per image
PADDING_SHARE = 0.1  # an eval batch whose padding is at least this share of the rows encoded is worth a line


def eval_set_sizes(evaluator: Any) -> tuple[int, str] | None:
    """(images, a description of the set's size) of a built evaluator's set; None when it does not say."""
    data = getattr(evaluator, 'data', None)
    images = getattr(data, 'images', None)
    if images is None:
        return None
    count = len(images)
    if getattr(data, 'text_ids', None) is not None:
        return count, f'{count} images, {len(data.text_ids)} captions'
    if getattr(data, 'class_names', None) is not None:
        return count, f'{count} images, {len(data.class_names)} classes'
    return count, f'{count} images'


def set_label(evaluator: Any) -> str:
    """'NAME (EVALUATOR:SOURCE[:WHERE])' of an evaluator's spec, as eval.sets names it; the run's own
    evaluation split (no name: bare metric keys) is 'EVALUATOR:SOURCE (the run's own split)'."""
    spec = evaluator.spec
    where = f':{spec.where}' if spec.where else ''
    if not spec.name:
        return f"{spec.evaluator}:{spec.source}{where} (the run's own split)"
    return f'{spec.name} ({spec.evaluator}:{spec.source}{where})'


def _divisor_hint(count: int, batch: int, shards: int) -> str:
    """The largest batch <= `batch` that divides `count` and is a multiple of the batch shards."""
    for size in range(min(batch, count), 0, -1):
        if count % size == 0 and size % shards == 0:
            return f'; eval.batch_size={size} divides it'
    return ''


def start_lines(config: Any, derived: Any, evaluators: Iterable[Any]) -> list[str]:
    """The lines a run prints at its start: each eval set's size, and a WARNING line per misleading setting."""
    lines = []
    total, warmup = int(config.total_steps), int(config.optim.warmup_steps)
    if warmup >= total:
        lines.append(
            f'WARNING: optim.warmup_steps={warmup} >= total_steps={total}: the learning rate never reaches '
            f'optim.lr (it ends at {min(total / max(warmup, 1), 1):.0%} of it); lower optim.warmup_steps.'
        )
    batch = int(config.eval.batch_size)
    for evaluator in evaluators:
        sizes = eval_set_sizes(evaluator)
        label = set_label(evaluator)
        if sizes is None:
            continue
        count, described = sizes
        lines.append(f'eval set {label}: {described}')
        if count < SMALL_EVAL_SET:
            lines.append(
                f'WARNING: eval set {label} holds only {count} images: one image moves a recall or top-1 figure '
                f'by {1 / max(count, 1):.0%}, and random ranking already gives R@5 = {min(5 / max(count, 1), 1):.2f}; '
                f'figures on fewer than {SMALL_EVAL_SET} images say little.'
            )
        encoded = -(-count // batch) * batch
        if count % batch and (encoded - count) >= PADDING_SHARE * encoded:
            lines.append(
                f'WARNING: eval.batch_size={batch} does not divide the {count} images of eval set {label}: '
                f'{encoded - count} of the {encoded} rows each evaluation encodes are padding'
                f'{_divisor_hint(count, batch, int(derived.batch_shards))}.'
            )
    return lines
