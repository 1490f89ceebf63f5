"""The configured regulators in order, applied to one tile at a time; the dense loss is the one-tile case.

`loss.regulators` names them (registry REGULATORS); each reads its own `loss.<name>` group.
The chain orders them by stage (weights, then targets, then smoothing) and refuses a list in
another order, a name twice, two regulators that smooth, or two that read different models
under one frozen role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlp_jax.config import ConfigError, settings_of
from vlp_jax.objectives.contrastive import Regulation
from vlp_jax.objectives.regulators.base import (
    DIRECTIONS,
    MASKED_THRESHOLD,
    STAGE_NAMES,
    Regulator,
    RegulatorContext,
    Tile,
    TileTargets,
)
from vlp_jax.registry import REGULATORS

PyTree = Any


def build_regulators(names: Sequence[str], config: ml_collections.ConfigDict, context: RegulatorContext) -> list:
    """The regulators `names` (loss.regulators), each with its typed `loss.<name>` settings."""
    out = []
    for name in names:
        cls = REGULATORS.get(name)
        settings = settings_of(config, cls.Settings) if cls.Settings is not None else None
        out.append(cls(settings, context))
    return out


class RegulatorChain:
    """Regulators applied in order; the loss (dense or chunked) never knows which ran."""

    def __init__(self, regulators: Sequence[Regulator] = ()):
        self.regulators = tuple(regulators)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: RegulatorContext) -> RegulatorChain:
        return cls(build_regulators(tuple(config.loss.regulators), config, context))

    @property
    def active(self) -> bool:
        return bool(self.regulators)

    @property
    def smooths(self) -> bool:
        return any(r.smooths for r in self.regulators)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regulators)

    def frozen_roles(self) -> tuple:
        return tuple(role for r in self.regulators for role in r.frozen_roles())

    def check(self, batch_size: int) -> None:
        """The chain's own rules, then each regulator's check; ConfigError on the first problem."""
        names = self.names
        if len(set(names)) != len(names):
            raise ConfigError(f'config key loss.regulators lists a regulator twice: {names}.')
        ordered = tuple(r.name for r in sorted(self.regulators, key=lambda r: r.stage))
        if names != ordered:
            order = ' -> '.join(STAGE_NAMES[stage] for stage in sorted(STAGE_NAMES))
            raise ConfigError(f'config key loss.regulators must be in the order {ordered} ({order}), got {names}.')
        smoothing = [r.name for r in self.regulators if r.smooths]
        if len(smoothing) > 1:
            raise ConfigError(
                f'config key loss.regulators has both {smoothing[0]!r} and {smoothing[1]!r}, which both smooth the '
                f'targets; keep one ({smoothing[0]!r} smooths by its own eps).'
            )
        roles: dict[str, Any] = {}
        for role in self.frozen_roles():
            seen = roles.setdefault(role.role, role)
            if (seen.path, seen.answer) != (role.path, role.answer):
                raise ConfigError(f'two regulators ask the frozen role {role.role!r} different things; rename one.')
        for regulator in self.regulators:
            if batch_size < regulator.min_batch:
                raise ConfigError(
                    f'config key batch_size must be >= {regulator.min_batch} for {regulator.name!r}, got {batch_size}.'
                )
            problem = regulator.check()
            if problem:
                raise ConfigError(problem)

    # -- the protocol, chained ------------------------------------------------------------
    def prepare(self, step: jax.Array) -> dict[str, dict[str, jax.Array]]:
        return {r.name: r.prepare(step) for r in self.regulators}

    def init_rows(self, rows: int) -> dict[str, PyTree]:
        return {r.name: r.init_rows(rows) for r in self.regulators}

    def update_rows(self, states: Mapping[str, PyTree], tile: Tile, scalars: Mapping[str, Any]) -> dict[str, PyTree]:
        return {r.name: r.update_rows(states[r.name], tile, scalars[r.name]) for r in self.regulators}

    def decide(
        self, stats: Mapping[str, Mapping[str, PyTree]], scalars: Mapping[str, Any], answers: Mapping[str, Any]
    ) -> tuple[dict[str, dict[str, PyTree]], dict[str, Any]]:
        """(rows[direction][name], aux[name]) from the [B] statistics stats[direction][name]."""
        rows: dict[str, dict[str, PyTree]] = {d: {} for d in DIRECTIONS}
        aux: dict[str, Any] = {}
        for r in self.regulators:
            decided, aux[r.name] = r.decide({d: stats[d][r.name] for d in DIRECTIONS}, scalars[r.name], answers)
            for d in DIRECTIONS:
                rows[d][r.name] = decided[d]
        return rows, jax.tree.map(jax.lax.stop_gradient, aux)

    def targets(
        self, tile: Tile, rows: Mapping[str, PyTree], scalars: Mapping[str, Any], record: dict | None = None
    ) -> tuple[TileTargets, jax.Array | None]:
        """(the tile's (log_w, y0) after every regulator, the smoothing weight or None). `record` collects
        each regulator's output (the dense case's diagnostics)."""
        targets = TileTargets(None, None)
        for r in self.regulators:
            targets = r.apply(targets, tile, rows[r.name], scalars[r.name])
            if record is not None:
                record[r.name] = targets
        return targets, self.uniform_mix(scalars)

    def uniform_mix(self, scalars: Mapping[str, Any]) -> jax.Array | None:
        """The weight of the uniform distribution mixed into the targets (the one regulator that smooths), or None."""
        return next((e for r in self.regulators if (e := r.uniform_mix(scalars[r.name])) is not None), None)

    # -- the one-tile case ---------------------------------------------------------------
    def dense(
        self,
        sim_i2t: jax.Array,
        answers: Mapping[str, Any],
        step: jax.Array | None = None,
        scalars: Mapping[str, Any] | None = None,
    ) -> tuple[tuple[Regulation, Regulation], dict[str, Any]]:
        """The (i2t, t2i) Regulations of a whole [B, B] batch (rows images) and aux[name].

        `answers[role]`: a 'cosine' role's (image, text) [B, E] embeddings or its [B, B] cosines (rows
        images); other roles' answers as they come (an ITM discriminator's scoring function).
        `scalars` replaces what `prepare(step)` would give (the functional API sets alpha directly).
        """
        if not self.active:
            return (Regulation(), Regulation()), {}
        sim = jax.lax.stop_gradient(sim_i2t.astype(jnp.float32))
        tiles = full_tiles(sim, answers)
        scalars = dict(scalars) if scalars is not None else self.prepare(step)
        stats = {d: self.update_rows(self.init_rows(sim.shape[0]), tiles[d], scalars) for d in DIRECTIONS}
        rows, aux = self.decide(stats, scalars, answers)
        regulations, records = {}, {}
        for d in DIRECTIONS:
            records[d] = {}
            targets, eps = self.targets(tiles[d], rows[d], scalars, records[d])
            regulations[d] = regulation_of(targets, eps, tiles[d])
        for r in self.regulators:
            aux[r.name] = {**aux[r.name], **r.dense_aux(records['i2t'][r.name], records['t2i'][r.name])}
        return (regulations['i2t'], regulations['t2i']), aux


def full_tiles(sim_i2t: jax.Array, answers: Mapping[str, Any]) -> dict[str, Tile]:
    """Per direction the one tile that covers the whole batch; cosine answers ride along as embeddings
    ((image, text) pairs) or as [B, B] cosines (rows images)."""
    n = sim_i2t.shape[0]
    diag = jnp.eye(n, dtype=bool)
    col = jnp.arange(n, dtype=jnp.int32)
    sg = lambda x: jax.lax.stop_gradient(x.astype(jnp.float32))
    pairs = {role: a for role, a in answers.items() if isinstance(a, tuple)}
    matrices = {role: sg(a) for role, a in answers.items() if not isinstance(a, tuple) and not callable(a)}
    images = {role: sg(a[0]) for role, a in pairs.items()}
    texts = {role: sg(a[1]) for role, a in pairs.items()}
    return {
        'i2t': Tile(sim_i2t, diag, col, images, texts, matrices),
        't2i': Tile(sim_i2t.T, diag, col, texts, images, {role: m.T for role, m in matrices.items()}),
    }


def regulation_of(targets: TileTargets, eps: jax.Array | None, tile: Tile) -> Regulation:
    """A whole row's targets with the uniform mix over the candidates still in the loss: the dense loss's
    Regulation (y None: the identity, untouched)."""
    if eps is None:
        return Regulation(log_w=targets.log_w, y=None if targets.y0 is None else jax.lax.stop_gradient(targets.y0))
    y = targets.targets_or_identity(tile)
    if targets.log_w is None:
        uniform = jnp.full_like(y, 1.0 / y.shape[1])
    else:
        valid = (targets.log_w > MASKED_THRESHOLD).astype(jnp.float32)
        uniform = valid / jnp.sum(valid, axis=1, keepdims=True)  # >= 1: the positive is never masked
    y = (1.0 - eps) * y + eps * uniform
    return Regulation(log_w=targets.log_w, y=jax.lax.stop_gradient(y))
