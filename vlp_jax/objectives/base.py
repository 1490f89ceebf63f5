"""The Objective interface: what a train step learns, separate from how a step runs.

The generic step (steps.py) splits the RNG, calls `loss` under `value_and_grad`,
applies the optimizer and calls `after_update`; it knows no particular loss. A dual
encoder's contrastive loss with regulators is one objective; ALBEF's ITC + ITM + MLM
with a momentum model is another. Everything an objective carries between steps lives
in `extra` (checkpointed and sharded with the train state), everything it reads but
never trains in `frozen` (role -> params, loaded from the config once, outside jit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax

PyTree = Any
# outputs[FEEDBACK]: what the loop hands back to a sampler (GRIT: embeddings + dataset indices).
FEEDBACK = 'feedback'
# outputs[REGULATION]: what the regulators decided, for probes (ground-truth diagnostics).
REGULATION = 'regulation'


class Objective(Protocol):
    batch_keys: tuple[str, ...]  # batch-spec keys `loss` reads
    frozen_roles: tuple[str, ...]  # roles of the frozen models `loss` reads (keys of `frozen`)

    def init_extra(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Extra state (momentum params, queues); {} if none. Called under eval_shape for shardings,
        so leaves may carry logical axis names (nn.Partitioned) like params do."""
        ...

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
        ...

    # Optional: value_and_grad(params, extra, frozen, batch, rng, step, lock) -> ((loss, (metrics, outputs)), grads),
    # for an objective that takes its gradient its own way (the dual encoder's GradCache accumulation);
    # it must apply `lock` (optim.stop_locked_gradients) to the params inside what it differentiates.
    # The step otherwise differentiates `loss(lock(params), ...)`.

    def after_update(
        self, params: PyTree, extra: PyTree, outputs: Mapping[str, Any], step: jax.Array
    ) -> tuple[PyTree, PyTree]:
        """After the optimizer update: EMA, temperature clamp, queue rotation -> (params, extra).

        `outputs` are this step's loss outputs (e.g. the momentum features to enqueue).
        """
        ...
