"""The Objective protocol: what a train step learns, separate from how a step runs.

The generic step (steps.py) splits the RNG, asks the objective for its loss and gradient
(`value_and_grad`), applies the optimizer and calls `after_update`; it knows no particular
loss. An objective is registered by name (registry OBJECTIVES, config key `objective`):
'contrastive' (a dual encoder's regulated contrastive loss) and 'albef' (ITC + ITM + MLM on a
fusion model, with ALBEF's momentum model as an option) are the built-ins. Everything an
objective carries between steps lives in `extra` (checkpointed and sharded with the train
state), everything it reads but never trains in `frozen` (role -> params, loaded once,
outside jit). What it supports it declares, and the config checks read that.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import ml_collections

PyTree = Any
# outputs[FEEDBACK]: what the loop hands a sampler that asks for it (GRIT: embeddings + dataset indices).
FEEDBACK = 'feedback'
# outputs[REGULATION]: what the regulators decided (aux by regulator name), for probes and fusion objectives.
REGULATION = 'regulation'


@dataclasses.dataclass(frozen=True)
class ObjectiveParts:
    """What setup hands an objective's factory besides the config: the built pieces it works with."""

    model: Any  # models.vlp.VLPModel
    regulators: Any  # objectives.regulators.RegulatorChain
    frozen_models: Mapping[str, Any]  # role -> the frozen VLPModel answering it
    local_shards: int  # what 'local' negatives group within
    batch_size: int
    total_steps: int
    steps_per_epoch: int


class Objective(abc.ABC):
    """Base class of a registered objective."""

    # What it supports (checks.py refuses the rest with one line naming the key):
    model_kinds: ClassVar[tuple[str, ...]] = ('dual',)  # model.kind values it trains
    supports_chunked: ClassVar[bool] = False  # loss.impl='chunked'
    supports_micro_batches: ClassVar[bool] = False  # micro_batches > 1 (GradCache)
    supports_local_negatives: ClassVar[bool] = False  # loss.negatives='local'
    registered_name: ClassVar[str] = ''

    batch_keys: tuple[str, ...]  # batch-spec keys `loss` reads
    frozen_roles: tuple[str, ...]  # roles of the frozen models `loss` reads (keys of `frozen`)

    @classmethod
    @abc.abstractmethod
    def build(cls, config: ml_collections.ConfigDict, parts: ObjectiveParts) -> Objective:
        """The objective of this config: it reads its own typed groups here (and only here)."""

    @classmethod
    def check(cls, config: ml_collections.ConfigDict) -> str | None:
        """One sentence on what in `config` this objective cannot train with, or None (cheap)."""
        return None

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Extra state (momentum params, queues); {} if none. Called under eval_shape for shardings,
        so leaves may carry logical axis names (nn.Partitioned) like params do."""
        return {}

    @abc.abstractmethod
    def loss(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """(scalar loss, metrics {'train/...': scalar}, outputs {FEEDBACK: ..., REGULATION: ...}).

        `step` is the optimizer step this loss is computed for (schedules read it); `rng`
        is this step's key for this objective alone (dropout, sampling).
        """

    def value_and_grad(
        self,
        params: PyTree,
        extra: PyTree,
        frozen: Mapping[str, PyTree],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
        lock: Callable[[PyTree], PyTree] = lambda params: params,
    ) -> tuple[tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]], PyTree]:
        """((loss, (metrics, outputs)), grads). `lock` (optim.stop_locked_gradients) is applied to the params
        inside what is differentiated, so locked params get exact zero gradients and no backward pass. An
        objective that takes its gradient its own way (GradCache accumulation) overrides this."""

        def loss_fn(p):
            loss, metrics, outputs = self.loss(lock(p), extra, frozen, batch, rng, step)
            return loss, (metrics, outputs)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        """After the optimizer update: EMA, temperature clamp, queue rotation -> (params, extra).

        `outputs` are this step's loss outputs (e.g. the momentum features to enqueue).
        """
        return params, extra

    def ground_truth_metrics(self, false_negatives: jax.Array, outputs: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Diagnostics of this step's regulation against a batch's known [B, B] false negatives (i2t layout)."""
        return {}
