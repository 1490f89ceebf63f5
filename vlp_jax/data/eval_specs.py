"""Which sets an evaluation runs: `eval.sets`, a list of specs, each `[NAME=]TASK:SOURCE[:WHERE]` or 'default'.

    default                            the run's own sets: data.name's evaluation split (retrieval,
                                       keys eval/retrieval/*), the shapes world's zero-shot sets,
                                       and zero-shot classification when the set has class names
    retrieval:records:DIR              retrieval on every image of a prepared folder (all captions)
    classification:records:DIR         zero-shot classification on a labelled prepared folder
    retrieval:tfds:NAME[:SPLIT]        a TFDS image-text set (data.tfds.image_key / caption_key)
    classification:tfds:NAME[:SPLIT]   a TFDS classification set (data.tfds.label_key, default 'label')
    retrieval:shapes / classification:shapes   the built-in world's test split / shape and colour sets

Keys: retrieval sets report eval/retrieval/NAME/<metric>, classification sets
eval/zeroshot/NAME/top1. NAME defaults to the folder's name, NAME_SPLIT for TFDS, or 'shapes'.
Parsing needs no TensorFlow, so config validation checks specs before anything loads.
"""

from __future__ import annotations

import dataclasses
import os
import re

import ml_collections

from vlp_jax.data.errors import DataError

TASKS = ('retrieval', 'classification')
SOURCES = ('records', 'tfds', 'shapes')
DEFAULT = 'default'


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    task: str  # 'retrieval' | 'classification' | 'default'
    source: str = ''
    where: str = ''  # records: folder; tfds: NAME[:SPLIT]
    name: str = ''


def parse(spec: str) -> EvalSpec:
    """One spec string -> EvalSpec; a malformed one raises DataError naming it."""
    text = spec.strip()
    if text == DEFAULT:
        return EvalSpec(DEFAULT)
    name = ''
    head = text.split(':', 1)[0]
    if '=' in head:
        name, text = text.split('=', 1)
    task, _, rest = text.partition(':')
    source, _, where = rest.partition(':')
    if task not in TASKS or source not in SOURCES or (source != 'shapes' and not where):
        raise DataError(
            f'eval.sets entry {spec!r} is not [NAME=]TASK:SOURCE[:WHERE] with TASK in {TASKS} and SOURCE in '
            f"{SOURCES} (records and tfds need WHERE), nor 'default'."
        )
    if not name:
        if source == 'records':
            name = os.path.basename(os.path.normpath(where))
        elif source == 'tfds':
            name = where.replace('/', '_').replace(':', '_')
        else:
            name = 'shapes'
    return EvalSpec(task, source, where, re.sub(r'[^A-Za-z0-9_.-]', '_', name))


def parse_all(specs) -> list[EvalSpec]:
    parsed = [parse(str(spec)) for spec in specs]
    if not parsed:
        raise DataError("eval.sets is empty; list at least one set, e.g. 'default'.")
    return parsed


def build(config: ml_collections.ConfigDict) -> tuple[list, list]:
    """(retrieval sets, classification sets) for the config's eval.sets, loaded and tokenised."""
    from vlp_jax.data import eval_sets, sources
    from vlp_jax.data.record_source import RecordSource
    from vlp_jax.data.synthetic import ShapesWorld
    from vlp_jax.data.synthetic_source import ShapesSource

    retrieval, classification = [], []
    for spec in parse_all(config.eval.sets):
        if spec.task == DEFAULT:
            if config.data.name == 'shapes':
                retrieval.append(eval_sets.retrieval_set(config, 'test'))
                classification.extend(eval_sets.classification_sets(config))
                continue
            labelled = config.data.name == 'tfds' and bool(config.data.tfds.label_key)
            source = (
                sources.tfds_source(config.data, 'test', labels=labelled)
                if config.data.name == 'tfds'
                else sources.build_source(config, 'test')
            )
            retrieval.append(eval_sets.source_retrieval_set(source, config))
            if getattr(source, 'class_names', None):
                label_name = os.path.basename(os.path.normpath(getattr(source, 'name', 'labels')))
                classification.append(eval_sets.source_classification_set(source, config, label_name))
            continue
        if spec.source == 'shapes':
            world = ShapesWorld(sources.shapes_world_config(config.data), seed=int(config.seed), split='test')
            if spec.task == 'retrieval':
                retrieval.append(eval_sets.source_retrieval_set(ShapesSource(world), config, spec.name))
            else:
                classification.extend(eval_sets.classification_sets(config))
            continue
        if spec.source == 'records':
            source = RecordSource(spec.where)
        else:
            source = _tfds(config, spec)
        if spec.task == 'retrieval':
            retrieval.append(eval_sets.source_retrieval_set(source, config, spec.name))
        else:
            classification.append(eval_sets.source_classification_set(source, config, spec.name))
    return retrieval, classification


def _tfds(config: ml_collections.ConfigDict, spec: EvalSpec):
    from vlp_jax.data.tfds_source import TfdsSource

    name, _, split = spec.where.partition(':')
    tfds = config.data.tfds
    captions = spec.task == 'retrieval'
    return TfdsSource(
        name,
        split or tfds.eval_split,
        config.data.tfds_dir,
        tfds.image_key,
        tfds.caption_key if captions else None,
        None if captions else (tfds.label_key or 'label'),
    )
