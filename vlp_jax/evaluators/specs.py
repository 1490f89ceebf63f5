"""`eval.sets`: which sets an evaluation runs, each 'default' or `[NAME=]EVALUATOR:SOURCE[:WHERE]`.

    default                            the run's own source's sets (its SourcePlugin.default_eval_sets:
                                       the shapes world: retrieval + the shape/colour zero-shot views;
                                       records/TFDS: retrieval, + classification when labelled)
    retrieval:records:DIR              retrieval on every image of a prepared folder (all captions)
    classification:records:DIR         zero-shot classification on a labelled prepared folder
    retrieval:tfds:NAME[:SPLIT]        a TFDS image-text set (data.tfds.image_key / caption_key)
    classification:tfds:NAME[:SPLIT]   a TFDS classification set (data.tfds.label_key, default 'label')
    retrieval:shapes                   the built-in world's test split
    classification:shapes:shape|colour the built-in world's zero-shot views

EVALUATOR is a registered evaluator, SOURCE a registered source, WHERE the source's own name for
a set ('' = the run's own evaluation split). Keys: retrieval sets report
eval/retrieval/NAME/<metric>, classification sets eval/zeroshot/NAME/top1; NAME defaults to
WHERE's last part (a folder's name, NAME_SPLIT for TFDS) or the source's name. Parsing needs
neither TensorFlow nor the registries, so the checks read specs before anything loads.
"""

from __future__ import annotations

import dataclasses
import os
import re

from vlp_jax.config import ConfigError

DEFAULT = 'default'


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    evaluator: str  # a registered evaluator, or DEFAULT
    source: str = ''  # a registered source ('' with DEFAULT: the run's own)
    where: str = ''  # the source's name for the set; '' = the run's own evaluation split
    name: str = ''  # metric-key name; '' = the run's own set (bare keys)


def default_name(source: str, where: str) -> str:
    """A set's name when the spec gives none: WHERE's last part ('/' and ':' as '_' for TFDS-style names)."""
    if not where:
        return source
    base = os.path.basename(os.path.normpath(where)) if os.sep in where and source == 'records' else where
    return re.sub(r'[^A-Za-z0-9_.-]', '_', base)


def parse(spec: str) -> EvalSpec:
    """One spec string -> EvalSpec; a malformed one raises ConfigError naming it."""
    text = spec.strip()
    if text == DEFAULT:
        return EvalSpec(DEFAULT)
    name = ''
    head = text.split(':', 1)[0]
    if '=' in head:
        name, text = text.split('=', 1)
    evaluator, _, rest = text.partition(':')
    source, _, where = rest.partition(':')
    if not evaluator or not source:
        raise ConfigError(
            f'eval.sets entry {spec!r} is not [NAME=]EVALUATOR:SOURCE[:WHERE] (e.g. retrieval:records:DIR) '
            "nor 'default'."
        )
    return EvalSpec(evaluator, source, where, re.sub(r'[^A-Za-z0-9_.-]', '_', name) or default_name(source, where))


def parse_all(specs) -> list[EvalSpec]:
    parsed = [parse(str(spec)) for spec in specs]
    if not parsed:
        raise ConfigError("config key eval.sets is empty; list at least one set, e.g. 'default'.")
    return parsed
