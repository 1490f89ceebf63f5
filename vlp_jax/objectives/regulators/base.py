"""The Regulator protocol: one implementation serves the dense and the chunked contrastive loss.

A regulator turns similarities into the loss's log-weights `log_w` and targets `y` (one row per
anchor, one column per candidate; i2t rows are images, t2i rows texts), never a path for
gradients. Everything it needs is per-row statistics that accumulate over column tiles, a
decision on [B] vectors, and a rule for one tile:

1. `prepare(step)`: scalars known before any tile is seen (SRCL's alpha, a smoothing weight);
2. `init_rows` / `update_rows(state, tile, scalars)`: per-row statistics accumulated tile by tile
   (sums, maxima, the top two), per direction;
3. `decide(stats, scalars, answers)`: from the [B] statistics of both directions (and the frozen
   models' answers, e.g. an ITM discriminator asked about the chosen pairs) the per-row values
   every tile needs, and `aux` (what probes and fusion objectives read);
4. `apply(targets, tile, rows, scalars)`: the tile's `(log_w, y0)` after this regulator;
   `uniform_mix(scalars)`: the weight of uniform smoothing this regulator asks for.

The dense loss is the one-tile case (regulators/chain.py); the chunked loss sweeps the same
calls over column blocks on every device (objectives/chunked/). `y0` stays row-stochastic
through every rule; smoothing over the candidates still in the loss is applied by the loss
itself, from `uniform_mix`, because the count of those candidates is only known at the end.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
DIRECTIONS = ('i2t', 't2i')  # i2t: rows images, columns texts; t2i: the transpose

# Log-weight for a negative removed from the loss (SRCL's w_min). -inf would make
# `0 * -inf = NaN` appear in the loss whenever a target touches it; -1e4 is finite in
# float16/bfloat16/float32 and exp(-1e4) underflows to exactly 0 in all of them.
MASKED_LOG_WEIGHT = -1.0e4
# Entries with log_w below this count as removed (smoothing skips them).
MASKED_THRESHOLD = 0.5 * MASKED_LOG_WEIGHT

# The order regulators apply in: weights on negatives, then targets, then smoothing.
WEIGHTS, TARGETS, SMOOTHING = 0, 1, 2
STAGE_NAMES = {WEIGHTS: 'weights', TARGETS: 'targets', SMOOTHING: 'smoothing'}


@dataclasses.dataclass(frozen=True)
class Tile:
    """One [rows, columns] block of one direction: the training model's cosines and the frozen
    models' embeddings of the same anchors and candidates (role -> [rows, E] / [columns, E])."""

    sim: jax.Array  # [r, c] float32 cosines, rows anchors
    diag: jax.Array  # [r, c] bool: the anchor's own pair
    col: jax.Array  # [c] int32 global column ids
    anchors: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    candidates: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    given: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)  # role -> [r, c] cosines at hand

    def cosines(self, role: str) -> jax.Array:
        """[r, c] cosines of a frozen model's embeddings ('cosine' roles)."""
        if role in self.given:
            return self.given[role]
        return jnp.einsum('ie,je->ij', self.anchors[role], self.candidates[role])

    def cosines_at(self, role: str, columns: jax.Array) -> jax.Array:
        """[r, k] cosines of each row with the tile-local `columns` [r, k] only (no [r, c] product)."""
        if role in self.given:
            return jnp.take_along_axis(self.given[role], columns, axis=1)
        return jnp.einsum('ie,ike->ik', self.anchors[role], self.candidates[role][columns])


class TileTargets(NamedTuple):
    """What the regulators hand the loss for one tile: additive log-weights (None = 0) and targets before
    the uniform mix (rows sum to 1 over all columns; None = the identity, each anchor's own pair)."""

    log_w: jax.Array | None
    y0: jax.Array | None

    def targets_or_identity(self, tile: Tile) -> jax.Array:
        return tile.diag.astype(jnp.float32) if self.y0 is None else self.y0


@dataclasses.dataclass(frozen=True)
class RegulatorContext:
    """What a regulator may know about the run (derived once, in setup)."""

    batch_size: int  # global
    total_steps: int
    steps_per_epoch: int
    loss_form: str  # 'softmax' | 'sigmoid'
    model_kind: str  # 'dual' | 'fusion'


class Regulator(abc.ABC):
    """Base class of a registered regulator (registry REGULATORS; its `Settings` is `loss.<name>`)."""

    Settings: ClassVar[Any] = None
    stage: ClassVar[int] = WEIGHTS  # WEIGHTS | TARGETS | SMOOTHING: the order of application
    smooths: ClassVar[bool] = False  # asks for uniform smoothing (at most one regulator of a chain may)
    min_batch: ClassVar[int] = 2
    decides_pairs: ClassVar[bool] = False  # a fusion objective asks it for the ITM/MLM pairs (matching_pairs)
    registered_name: ClassVar[str] = ''

    def __init__(self, settings: Any, context: RegulatorContext):
        self.settings = settings
        self.context = context

    @property
    def name(self) -> str:
        return self.registered_name

    # -- config ----------------------------------------------------------------------
    def check(self) -> str | None:
        """One sentence on what is wrong with the settings in this run, or None (config time, cheap)."""
        return None

    def frozen_roles(self) -> tuple:
        """The frozen models it reads (objectives.frozen.FrozenRole), each named by a config key."""
        return ()

    # -- the regulation ------------------------------------------------------------------
    def prepare(self, step: jax.Array) -> dict[str, jax.Array]:
        return {}

    def init_rows(self, rows: int) -> PyTree:
        return {}

    def update_rows(self, state: PyTree, tile: Tile, scalars: Mapping[str, jax.Array]) -> PyTree:
        return state

    def decide(
        self, stats: Mapping[str, PyTree], scalars: Mapping[str, jax.Array], answers: Mapping[str, Any]
    ) -> tuple[dict[str, PyTree], dict[str, Any]]:
        """(per direction the [B] values every tile needs, aux)."""
        return {direction: {} for direction in DIRECTIONS}, {}

    def apply(self, targets: TileTargets, tile: Tile, rows: PyTree, scalars: Mapping[str, jax.Array]) -> TileTargets:
        return targets

    def uniform_mix(self, scalars: Mapping[str, jax.Array]) -> jax.Array | None:
        return None

    # -- what others ask of it -------------------------------------------------------------
    def metrics(self, aux: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Train metrics ('train/<name>/...') from its aux, logged every step it runs (no ground truth needed)."""
        return {}

    def dense_aux(self, i2t: TileTargets, t2i: TileTargets) -> dict[str, Any]:
        """Extra aux when the whole [B, B] is at hand (the dense loss, diagnostics): e.g. SRCL's log_w."""
        return {}

    def matching_pairs(self, aux: Mapping[str, Any]) -> Any:
        """A fusion objective's (ITM pairs, MLM pairs) decided by this regulator (MAFA's), when `decides_pairs`."""
        raise NotImplementedError(f'{self.name} does not decide ITM pairs')

    def probe_metrics(self, aux: Mapping[str, Any], false_negatives: tuple[jax.Array, jax.Array]) -> dict:
        """Ground-truth diagnostics ('train/<name>/...') from aux and the (i2t, t2i) false-negative masks."""
        return {}


def safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    num, den = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)


def off_diagonal(n: int) -> jax.Array:
    return ~jnp.eye(n, dtype=bool)
