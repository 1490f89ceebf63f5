"""The Evaluator protocol: a set loaded once, then metrics for the model's current params.

A registered evaluator (registry EVALUATORS, named in `eval.sets`) is built from its spec,
the source the spec names, and an `EvalContext`; it loads and tokenises its set then. Each
evaluation calls it with an `EvalModel`: the jitted encoders bound to the params being
evaluated, and an ITM re-ranker for fusion models when `eval.rerank_k` > 0.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from jax.sharding import Mesh

from vlp_jax.config import EvalSettings
from vlp_jax.data.sources import Source
from vlp_jax.evaluators.specs import EvalSpec


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an evaluator may know when it loads its set."""

    settings: EvalSettings
    image_size: int
    max_text_len: int
    config: Any = None  # the run's config (an evaluator with a config group of its own reads it there)


@dataclasses.dataclass(frozen=True)
class EvalModel:
    """The model under evaluation: host arrays in, host arrays out."""

    encode_images: Callable[[Any], Any]  # [N, H, W, 3] float -> [N, E] unit-norm
    encode_texts: Callable[[Any, Any], Any]  # ids, mask [N, L] -> [N, E] unit-norm
    batch_size: int
    mesh: Mesh
    rerank: Callable[[Any, Any], Any] | None = None  # (retrieval set, ITC similarity) -> rerank.RerankedScores
    module: Any = None  # the flax model and the params under evaluation (the decoder's evaluators decode with them)
    params: Any = None
    setup: Any = None  # the run's setup (model, mesh, shardings): what an evaluator that runs the fusion layers or a
    # task head itself needs (evaluators/tasks.py)


class Evaluator(abc.ABC):
    """Base class of a registered evaluator."""

    reads_captions: ClassVar[bool] = True  # what the source must read for it
    reads_labels: ClassVar[bool] = False

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        self.spec = spec
        self.context = context

    @abc.abstractmethod
    def __call__(self, model: EvalModel) -> dict[str, float]:
        """{'eval/...': value} for the model's params."""
