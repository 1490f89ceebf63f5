"""The Sampler protocol: which training examples each global batch holds, epoch by epoch.

The pipeline asks `epoch_order(epoch)` when it starts loading an epoch; a batch is a slice of
that order, so the whole input stream is a pure function of (seed, step) and what the sampler
saw. A sampler that builds its order from the step's outputs (GRIT's embeddings) says so with
`needs_feedback`; the loop then hands it every step's feedback through `observe`, in step order,
and an epoch's order is asked for only after the previous epoch's last step was observed
(`order_known_ahead = False`). Whatever a sampler carries between steps it returns from `state()`
(numpy arrays of fixed shapes: `abstract_state()`), and it rides in the train-state checkpoint.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

PackedState = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SamplerContext:
    """What a sampler may know about the run (derived once, in setup)."""

    seed: int
    batch_size: int  # global
    dataset_size: int  # examples in the training split
    steps_per_epoch: int
    embed_dim: int
    local_shards: int  # what 'local' grouping means: the mesh's batch shards, or mesh.local_shards
    block: int = 1  # the source's Source.block: consecutive indices an order must keep in one batch


class Sampler(abc.ABC):
    """Base class of a registered sampler (vlp_jax/registry.py SAMPLERS); `Settings`: its config group."""

    Settings: ClassVar[Any] = None  # its config group `sampling.<name>`, if it has keys
    needs_feedback: ClassVar[bool] = False  # hand it every step's outputs['feedback'] (a device->host copy)
    order_known_ahead: ClassVar[bool] = True  # epoch e + 1's order exists before epoch e ends
    keeps_blocks: ClassVar[bool] = False  # its orders keep a source's blocks (SamplerContext.block) together

    def __init__(self, settings: Any, context: SamplerContext):
        self.settings = settings
        self.context = context

    @classmethod
    def check(cls, settings: Any, batch_size: int) -> str | None:
        """One sentence saying what is wrong with these settings for this global batch, or None."""
        return None

    @abc.abstractmethod
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices of epoch `epoch`, at least steps_per_epoch * batch_size of them."""

    def observe(self, step_done: int, feedback: dict[str, np.ndarray]) -> None:
        """Step `step_done` (1-based) finished with these host copies of outputs['feedback']."""

    def abstract_state(self) -> PackedState:
        """Zero arrays of the checkpointed shapes (the restore target)."""
        return {}

    def state(self) -> PackedState:
        return {}

    def load(self, state: PackedState) -> None:
        """Restores what `state()` returned."""
