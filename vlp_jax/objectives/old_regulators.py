"""Regulators: turn similarity signals into the contrastive loss's `log_w` and `y`.

Each regulator is a pure, jit-able function of global [B, B] matrices that returns one
`Regulation` per direction, (i2t, t2i): i2t rows are images and columns texts, t2i is the
same with the matrices transposed. Everything is computed under `stop_gradient`: a
regulator reweights or relabels the loss, it is never itself a path for gradients.

Regulators compose through `base`: each takes the current (i2t, t2i) and returns new
ones. Intended order: SRCL (weights) -> COSMO/MAFA (targets; zeroes log_w at the
positives it creates) -> smoothing (COSMO does its own).

Every statistic used is per row (a logsumexp, a top-2, a count), so chunked versions
over column blocks are possible; this implementation materialises the full [B, B].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vlp_jax.objectives.contrastive import Regulation

Pair = tuple[Regulation, Regulation]

# Log-weight for a negative removed from the loss (SRCL's w_min). -inf would make
# `0 * -inf = NaN` appear in the loss whenever a target touches it; -1e4 is finite in
# float16/bfloat16/float32 and exp(-1e4) underflows to exactly 0 in all of them.
MASKED_LOG_WEIGHT = -1.0e4
# Entries with log_w below this count as removed (smoothing skips them).
_MASKED_THRESHOLD = 0.5 * MASKED_LOG_WEIGHT

STATE_KEPT = 0  # hardest negative stays a negative (q < low)
STATE_DROPPED = 1  # ambiguous (low <= q <= high): drop j1, ITM uses j2
STATE_CONVERTED = 2  # false negative (q > high): j1 becomes a positive


def _off_diagonal(n: int) -> jax.Array:
    return ~jnp.eye(n, dtype=bool)


def _transpose_pair(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    return matrix, matrix.T


def _is_python_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- SRCL


def srcl_alpha(
    step: jax.Array,
    alpha_start: float = 1.0,
    alpha_end: float = 0.0,
    decay_start: int = 0,
    decay_end: int = 1,
    shape: str = 'linear',
) -> jax.Array:
    """SRCL's mixing weight of the reference model, annealed from trusting it to trusting the model.

    alpha_start before `decay_start`, alpha_end from `decay_end` on, linear or cosine in
    between. `decay_end <= decay_start` gives a step change at `decay_end`.
    """
    step = jnp.asarray(step, jnp.float32)
    if decay_end <= decay_start:
        progress = (step >= decay_end).astype(jnp.float32)
    else:
        progress = jnp.clip((step - decay_start) / (decay_end - decay_start), 0.0, 1.0)
    if shape == 'linear':
        fraction = progress
    elif shape == 'cosine':
        fraction = 0.5 * (1.0 - jnp.cos(math.pi * progress))
    else:
        raise ValueError(f"alpha schedule shape must be 'linear' or 'cosine', got {shape!r}")
    return alpha_start + (alpha_end - alpha_start) * fraction


def _srcl_log_s(sim_cur: jax.Array, sim_ref: jax.Array | None, alpha, tau_w: float) -> jax.Array:
    """log s_ij = log(alpha e^{ref/tau} + (1 - alpha) e^{cur/tau}), exact at alpha in {0, 1}."""
    cur = sim_cur / tau_w
    if sim_ref is None:
        return cur
    ref = sim_ref / tau_w
    if _is_python_number(alpha):  # static: no dead branch is traced
        if alpha >= 1.0:
            return ref
        if alpha <= 0.0:
            return cur
        return jnp.logaddexp(math.log(alpha) + ref, math.log1p(-alpha) + cur)
    alpha = jnp.asarray(alpha, jnp.float32)
    tiny = jnp.finfo(jnp.float32).tiny
    safe = jnp.clip(alpha, tiny, 1.0 - jnp.finfo(jnp.float32).epsneg)
    mixed = jnp.logaddexp(jnp.log(safe) + ref, jnp.log1p(-safe) + cur)
    return jnp.where(alpha >= 1.0, ref, jnp.where(alpha <= 0.0, cur, mixed))


def _srcl_log_w(sim_cur: jax.Array, sim_ref: jax.Array | None, alpha, tau_w: float, w_min: float | None) -> jax.Array:
    n = sim_cur.shape[0]
    off = _off_diagonal(n)
    neg_log_s = -_srcl_log_s(sim_cur, sim_ref, alpha, tau_w)  # log(1 / s_ij)
    # log mean_{k != i} (1 / s_ik), a per-row logsumexp over the negatives.
    log_mean = jax.nn.logsumexp(jnp.where(off, neg_log_s, -jnp.inf), axis=1, keepdims=True) - math.log(n - 1)
    log_w = jnp.where(off, neg_log_s - log_mean, 0.0)
    if w_min is not None:
        log_w = jnp.where(off & (log_w < math.log(w_min)), MASKED_LOG_WEIGHT, log_w)
    return log_w


def srcl_regulation(
    sim_cur_i2t: jax.Array,
    sim_ref_i2t: jax.Array | None,
    alpha,
    tau_w: float = 1.0,
    w_min: float | None = None,
    base: Pair | None = None,
) -> Pair:
    """SRCL negative weights w_ij ∝ 1 / s_ij (mean 1 over k != i) so near-duplicates push less.

    sims are cosines of normalised embeddings (no logit scale); `alpha` a float or traced
    scalar (see `srcl_alpha`). Without a reference model (`sim_ref_i2t is None`) alpha
    must be 0: asserted for Python numbers, a traced alpha is then ignored. Negatives with
    w < `w_min` get MASKED_LOG_WEIGHT (weight 0; the rest are not renormalised).
    With `base`, its y is kept and its log_w added (weights multiply); SRCL does not
    know about earlier positives, so run it before COSMO.
    """
    n = sim_cur_i2t.shape[0]
    assert sim_cur_i2t.shape == (n, n) and n >= 2, f'need a square [B, B], B >= 2, got {sim_cur_i2t.shape}'
    if sim_ref_i2t is None and _is_python_number(alpha):
        assert alpha == 0, f'SRCL without a reference model needs alpha = 0, got {alpha}'
    if w_min is not None:
        assert w_min > 0, f'w_min must be positive (None = off), got {w_min}'
    cur = jax.lax.stop_gradient(sim_cur_i2t.astype(jnp.float32))
    ref = None if sim_ref_i2t is None else jax.lax.stop_gradient(sim_ref_i2t.astype(jnp.float32))
    alpha = jax.lax.stop_gradient(alpha) if not _is_python_number(alpha) else alpha
    refs = (None, None) if ref is None else _transpose_pair(ref)
    priors = base if base is not None else (Regulation(), Regulation())
    out = []
    for c, r, prior in zip(_transpose_pair(cur), refs, priors):
        log_w = _srcl_log_w(c, r, alpha, tau_w, w_min)
        if prior.log_w is not None:
            log_w = jnp.maximum(log_w + prior.log_w.astype(jnp.float32), MASKED_LOG_WEIGHT)
        out.append(Regulation(log_w=log_w, y=prior.y))
    return out[0], out[1]


def _masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan), count


def srcl_weight_stats(log_w: jax.Array, false_negative_mask: jax.Array) -> dict[str, jax.Array]:
    """Ground-truth diagnostic: do false negatives get smaller weights than true negatives?

    Means of exp(log_w) over off-diagonal false negatives / true negatives; NaN when a
    set is empty (the counts are returned so steps can be pooled as sum / count).
    """
    n = log_w.shape[0]
    off = _off_diagonal(n)
    weights = jnp.exp(log_w.astype(jnp.float32))
    fn = off & false_negative_mask.astype(bool)
    tn = off & ~false_negative_mask.astype(bool)
    mean_fn, count_fn = _masked_mean(weights, fn)
    mean_tn, count_tn = _masked_mean(weights, tn)
    return {
        'weight_false_negative': mean_fn,
        'weight_true_negative': mean_tn,
        'count_false_negative': count_fn,
        'count_true_negative': count_tn,
    }


# ----------------------------------------------------------------------- COSMO / MAFA


def _smooth(y: jax.Array, log_w: jax.Array | None, eps, active) -> jax.Array:
    """y <- (1 - eps) y + eps * uniform over the candidates still in the loss.

    With nothing removed (no w_min) the uniform part is eps / B, as in the paper;
    negatives removed by SRCL's w_min get no target mass (it would sit on a -1e4 logit).
    """
    if isinstance(active, bool) and not active:
        return y
    eps = jnp.where(active, jnp.asarray(eps, jnp.float32), 0.0)
    if log_w is None:
        uniform = jnp.full_like(y, 1.0 / y.shape[1])
    else:
        valid = (log_w > _MASKED_THRESHOLD).astype(jnp.float32)
        uniform = valid / jnp.sum(valid, axis=1, keepdims=True)  # >= 1: the positive is never masked
    return (1.0 - eps) * y + eps * uniform


def smoothing_regulation(batch_size: int, eps: float, active, base: Pair | None = None) -> Pair:
    """Uniform label smoothing of the targets (identity, or base y), both directions.

    `active` is a Python or traced bool (e.g. `step >= smoothing_start`). Base log_w kept.
    """
    out = []
    for prior in base if base is not None else (Regulation(), Regulation()):
        y = prior.y.astype(jnp.float32) if prior.y is not None else jnp.eye(batch_size, dtype=jnp.float32)
        out.append(Regulation(log_w=prior.log_w, y=jax.lax.stop_gradient(_smooth(y, prior.log_w, eps, active))))
    return out[0], out[1]


def hardest_two(sim: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row, the hardest and second-hardest off-diagonal column of [B, B] similarities (int32)."""
    masked_sim = jnp.where(_off_diagonal(sim.shape[0]), sim, -jnp.inf)
    _, top2 = jax.lax.top_k(masked_sim, 2)
    return top2[:, 0].astype(jnp.int32), top2[:, 1].astype(jnp.int32)


def _cosmo_direction(
    hardest: jax.Array, second: jax.Array, score: jax.Array, high, low, eps, active, prior: Regulation
) -> tuple[Regulation, dict[str, jax.Array]]:
    n = hardest.shape[0]
    rows = jnp.arange(n)
    converted = score > high
    state = jnp.where(converted, STATE_CONVERTED, jnp.where(score >= low, STATE_DROPPED, STATE_KEPT))
    extra = converted[:, None] & (rows[None, :] == hardest[:, None])  # [B, B] new positives

    y = prior.y.astype(jnp.float32) if prior.y is not None else jnp.eye(n, dtype=jnp.float32)
    y = y + extra.astype(jnp.float32)
    y = y / jnp.sum(y, axis=1, keepdims=True)
    log_w = None if prior.log_w is None else jnp.where(extra, 0.0, prior.log_w.astype(jnp.float32))
    y = _smooth(y, log_w, eps, active)
    info = {
        'hardest': hardest,
        'second': second,
        'state': state.astype(jnp.int32),
        'converted': converted,
        'hardest_score': score,
    }
    return Regulation(log_w=log_w, y=y), info


def cosmo_regulation(
    sim_cur_i2t: jax.Array, discriminator, high, low, eps, smoothing_active, base: Pair | None = None
) -> tuple[Pair, dict[str, dict[str, jax.Array]]]:
    """COSMO/MAFA: the hardest negative, if the frozen discriminator says it matches, becomes a positive.

    Per direction (t2i uses the transposed matrices): j1/j2 = hardest/second-hardest
    off-diagonal column of the training model's sims; q scores (anchor, j1):
    `discriminator` is either [B, B] scores (rows images; q = disc[i, j1], the cosine
    discriminator) or a function (j1_i2t, j1_t2i) -> (q_i2t, q_t2i) (the ITM discriminator,
    which fuses only the 2B pairs it is asked about).
    q > high -> converted (Y[i, j1] += 1, rows renormalised, log_w[i, j1] = 0),
    low <= q <= high -> dropped (for ITM), else kept. Then smoothing when active.
    Returns ((i2t, t2i), {'i2t': info, 't2i': info}) with info 'hardest', 'second',
    'state' [B] int32 (STATE_*), 'converted' [B] bool, 'hardest_score' [B] float32.
    """
    n = sim_cur_i2t.shape[0]
    assert sim_cur_i2t.shape == (n, n), 'need square [B, B] similarities'
    assert n >= 3, f'COSMO needs two negatives per anchor (B >= 3), got B = {n}'
    sim = jax.lax.stop_gradient(sim_cur_i2t.astype(jnp.float32))
    picks = [hardest_two(s) for s in _transpose_pair(sim)]
    if callable(discriminator):
        scores = discriminator(picks[0][0], picks[1][0])
    else:
        assert discriminator.shape == (n, n), 'need [B, B] discriminator scores'
        rows = jnp.arange(n)
        scores = [d[rows, hardest] for d, (hardest, _) in zip(_transpose_pair(discriminator), picks)]
    priors = base if base is not None else (Regulation(), Regulation())
    regs, infos = [], {}
    for name, (hardest, second), q, prior in zip(('i2t', 't2i'), picks, scores, priors):
        q = jax.lax.stop_gradient(q.astype(jnp.float32))
        reg, info = _cosmo_direction(hardest, second, q, high, low, eps, smoothing_active, prior)
        regs.append(jax.tree_util.tree_map(jax.lax.stop_gradient, reg))
        infos[name] = info
    return (regs[0], regs[1]), infos


def conversion_stats(hardest: jax.Array, converted: jax.Array, false_negative_mask: jax.Array) -> dict[str, jax.Array]:
    """Ground-truth diagnostic of one direction's conversions: precision and recall.

    precision = |converted & j1 truly FN| / |converted|, recall = same / |j1 truly FN|;
    NaN when the denominator is 0 (counts returned to pool steps as sum / sum).
    """
    rows = jnp.arange(hardest.shape[0])
    hardest_fn = false_negative_mask.astype(bool)[rows, hardest]
    converted = converted.astype(bool)
    true_pos = jnp.sum(converted & hardest_fn)
    num_converted = jnp.sum(converted)
    num_hardest_fn = jnp.sum(hardest_fn)

    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.maximum(den, 1), jnp.nan)

    return {
        'precision': ratio(true_pos, num_converted),
        'recall': ratio(true_pos, num_hardest_fn),
        'num_true_positive': true_pos,
        'num_converted': num_converted,
        'num_hardest_fn': num_hardest_fn,
    }
