"""The regulators as plain functions of [B, B] matrices: the one-tile case with the values given directly.

For tests, notebooks and benchmarks that hold similarity matrices rather than a model: each call
builds the regulator with the given values and runs the chain's dense (one-tile) path, so these
compute exactly what training computes. `base` composes: the given (i2t, t2i) pair enters the
chain first (its log_w is added to, its targets carried on), as a run's earlier regulators would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlp_jax.objectives.contrastive import Regulation
from vlp_jax.objectives.regulators.base import Regulator, RegulatorContext, Tile, TileTargets
from vlp_jax.objectives.regulators.chain import RegulatorChain
from vlp_jax.objectives.regulators.cosmo import COSINE, DISCRIMINATOR, ITM, Cosmo, CosmoSettings
from vlp_jax.objectives.regulators.smoothing import Smoothing, SmoothingSettings
from vlp_jax.objectives.regulators.srcl import REFERENCE, Srcl, SrclSettings, _is_python_number

Pair = tuple[Regulation, Regulation]
_GIVEN = 'given'


class _Given(Regulator):
    """A fixed (i2t, t2i) pair entering the chain first (the functions' `base`)."""

    registered_name = _GIVEN

    def __init__(self, pair: Pair):
        super().__init__(None, None)
        self.pair = pair

    def decide(self, stats, scalars, answers):
        return {'i2t': {'which': 0}, 't2i': {'which': 1}}, {}

    def apply(self, targets: TileTargets, tile: Tile, rows, scalars) -> TileTargets:
        given = self.pair[rows['which']]
        y0 = targets.y0 if given.y is None else given.y.astype(jnp.float32)
        log_w = None if given.log_w is None else given.log_w.astype(jnp.float32)
        return TileTargets(log_w, y0)


def _context(n: int) -> RegulatorContext:
    return RegulatorContext(batch_size=n, total_steps=1, steps_per_epoch=1, loss_form='softmax', model_kind='dual')


def _run(regulators, sim, answers, scalars, base: Pair | None):
    chain = RegulatorChain(([_Given(base)] if base is not None else []) + list(regulators))
    scalars = {**({_GIVEN: {}} if base is not None else {}), **scalars}
    return chain.dense(sim, answers, scalars=scalars)


def srcl_regulation(
    sim_cur_i2t: jax.Array,
    sim_ref_i2t: jax.Array | None,
    alpha,
    tau_w: float = 1.0,
    w_min: float | None = None,
    base: Pair | None = None,
) -> Pair:
    """SRCL's negative weights for [B, B] cosines (rows images); `alpha` a float or traced scalar.
    Without a reference model (`sim_ref_i2t is None`) alpha must be 0. Negatives with w < `w_min` are removed."""
    n = sim_cur_i2t.shape[0]
    assert sim_cur_i2t.shape == (n, n) and n >= 2, f'need a square [B, B], B >= 2, got {sim_cur_i2t.shape}'
    if sim_ref_i2t is None and _is_python_number(alpha):
        assert alpha == 0, f'SRCL without a reference model needs alpha = 0, got {alpha}'
    if w_min is not None:
        assert w_min > 0, f'w_min must be positive (None = off), got {w_min}'
    uses_reference = sim_ref_i2t is not None
    settings = SrclSettings(alpha_start=1.0 if uses_reference else 0.0, alpha_end=0.0, tau_w=tau_w, w_min=w_min or 0.0)
    regulator = Srcl(settings, _context(n))
    answers = {REFERENCE: jax.lax.stop_gradient(sim_ref_i2t)} if uses_reference else {}
    alpha = alpha if _is_python_number(alpha) else jax.lax.stop_gradient(alpha)
    pair, _ = _run([regulator], sim_cur_i2t, answers, {'srcl': {'alpha': alpha} if uses_reference else {}}, base)
    return pair


def smoothing_regulation(batch_size: int, eps: float, active, base: Pair | None = None) -> Pair:
    """Uniform label smoothing of the targets (identity, or base y), both directions; `active` a Python or
    traced bool. Base log_w kept; removed candidates (MASKED log_w) get no mass."""
    regulator = Smoothing(SmoothingSettings(eps=float(eps), start_step=0), _context(batch_size))
    eps_now = jnp.where(active, jnp.asarray(eps, jnp.float32), 0.0)
    sim = jnp.zeros((batch_size, batch_size), jnp.float32)
    pair, _ = _run([regulator], sim, {}, {'smoothing': {'eps': eps_now}}, base)
    return pair


def cosmo_regulation(
    sim_cur_i2t: jax.Array, discriminator, high, low, eps, smoothing_active, base: Pair | None = None
) -> tuple[Pair, dict]:
    """COSMO/MAFA on [B, B] cosines (rows images). `discriminator`: [B, B] scores (rows images; the cosine
    discriminator) or a function (j1_i2t, j1_t2i) -> (q_i2t, q_t2i) (the ITM discriminator).
    Returns ((i2t, t2i), {'i2t': info, 't2i': info}) with info 'hardest', 'second', 'state', 'converted',
    'hardest_score'."""
    n = sim_cur_i2t.shape[0]
    assert sim_cur_i2t.shape == (n, n), 'need square [B, B] similarities'
    assert n >= 3, f'COSMO needs two negatives per anchor (B >= 3), got B = {n}'
    if not callable(discriminator):
        assert discriminator.shape == (n, n), 'need [B, B] discriminator scores'
    kind = ITM if callable(discriminator) else COSINE
    settings = CosmoSettings(discriminator=kind, high=high, low=low, eps=0.0, smoothing_start_step=0)
    regulator = Cosmo(settings, _context(n))
    eps_now = jnp.where(smoothing_active, jnp.asarray(eps, jnp.float32), 0.0)
    pair, aux = _run([regulator], sim_cur_i2t, {DISCRIMINATOR: discriminator}, {'cosmo': {'eps': eps_now}}, base)
    return pair, aux['cosmo']
