"""Regulators (SRCL, COSMO/MAFA, smoothing) against numpy references written with loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.objectives.contrastive import Regulation, contrastive_loss
from vlp_jax.objectives.regulators import (
    MASKED_LOG_WEIGHT,
    STATE_AT_THRESHOLD,
    STATE_CONVERTED,
    STATE_DROPPED,
    STATE_KEPT,
    conversion_stats,
    cosmo_regulation,
    smoothing_regulation,
    srcl_alpha,
    srcl_regulation,
    srcl_weight_stats,
)

B, E = 8, 6


def _normalised(rng, n, e):
    x = rng.normal(size=(n, e))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _np_srcl_log_w(cur, ref, alpha, tau_w):
    n = cur.shape[0]
    s = alpha * np.exp(ref / tau_w) + (1 - alpha) * np.exp(cur / tau_w)
    log_w = np.zeros((n, n))
    for i in range(n):
        mean_inv = np.mean([1.0 / s[i, k] for k in range(n) if k != i])
        for j in range(n):
            if j != i:
                log_w[i, j] = math.log((1.0 / s[i, j]) / mean_inv)
    return log_w


def _np_softmax_loss(z, log_w, y):
    zz = z + log_w
    zz = zz - zz.max(axis=1, keepdims=True)
    log_p = zz - np.log(np.exp(zz).sum(axis=1, keepdims=True))
    return -np.mean(np.sum(y * log_p, axis=1))


@pytest.fixture
def sims():
    rng = np.random.default_rng(0)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    v_ref, t_ref = _normalised(rng, B, E), _normalised(rng, B, E)
    return v, t, v @ t.T, v_ref @ t_ref.T


# ----------------------------------------------------------------------------- SRCL


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('tau_w', [1.0, 0.1])
@pytest.mark.parametrize('traced_alpha', [False, True])
def test_srcl_matches_numpy_reference(sims, alpha, tau_w, traced_alpha):
    _, _, cur, ref = sims
    if traced_alpha:
        i2t, t2i = jax.jit(lambda c, r, a: srcl_regulation(c, r, a, tau_w=tau_w))(cur, ref, jnp.float32(alpha))
    else:
        i2t, t2i = jax.jit(lambda c, r: srcl_regulation(c, r, alpha, tau_w=tau_w))(cur, ref)
    np.testing.assert_allclose(i2t.log_w, _np_srcl_log_w(cur, ref, alpha, tau_w), atol=2e-5)
    np.testing.assert_allclose(t2i.log_w, _np_srcl_log_w(cur.T, ref.T, alpha, tau_w), atol=2e-5)
    assert i2t.y is None and t2i.y is None
    for reg in (i2t, t2i):
        weights = np.exp(np.asarray(reg.log_w, np.float64))
        np.testing.assert_array_equal(np.diag(reg.log_w), 0.0)
        off_mean = (weights.sum(axis=1) - 1.0) / (B - 1)
        np.testing.assert_allclose(off_mean, 1.0, atol=1e-5)


def test_srcl_is_finite_for_extreme_similarities():
    cur = np.full((B, B), -1.0, np.float32)
    np.fill_diagonal(cur, 1.0)
    ref = np.eye(B, dtype=np.float32)
    for alpha in (0.0, 1e-30, 0.5, 1.0 - 1e-8, 1.0):
        i2t, t2i = srcl_regulation(jnp.asarray(cur), jnp.asarray(ref), jnp.float32(alpha), tau_w=0.01)
        assert np.all(np.isfinite(i2t.log_w)) and np.all(np.isfinite(t2i.log_w)), alpha


def test_srcl_constant_similarities_give_infonce(sims):
    v, t, _, _ = sims
    const = jnp.full((B, B), 0.37, jnp.float32)
    i2t, t2i = srcl_regulation(const, const, 0.4, tau_w=0.1)
    np.testing.assert_allclose(np.exp(i2t.log_w), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.exp(t2i.log_w), 1.0, atol=1e-6)
    scale = jnp.float32(10.0)
    weighted, _ = contrastive_loss(v, t, scale, i2t=i2t, t2i=t2i)
    plain, _ = contrastive_loss(v, t, scale)
    np.testing.assert_allclose(weighted, plain, rtol=1e-6)


def test_srcl_loss_matches_weighted_numpy_loss(sims):
    v, t, cur, ref = sims
    i2t, t2i = srcl_regulation(cur, ref, 0.3)
    loss, _ = contrastive_loss(v, t, jnp.float32(5.0), i2t=i2t, t2i=t2i)
    z = 5.0 * (v @ t.T)
    eye = np.eye(B)
    expected = 0.5 * (
        _np_softmax_loss(z, _np_srcl_log_w(cur, ref, 0.3, 1.0), eye)
        + _np_softmax_loss(z.T, _np_srcl_log_w(cur.T, ref.T, 0.3, 1.0), eye)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_srcl_w_min_removes_small_weights_and_loss_stays_finite(sims):
    v, t, cur, ref = sims
    w_min = 0.9
    i2t, t2i = jax.jit(lambda c, r: srcl_regulation(c, r, 0.5, tau_w=0.1, w_min=w_min))(cur, ref)
    expected_w = np.exp(_np_srcl_log_w(cur, ref, 0.5, 0.1))
    removed = (expected_w < w_min) & ~np.eye(B, dtype=bool)
    assert removed.any() and (~removed & ~np.eye(B, dtype=bool)).any()
    np.testing.assert_array_equal(np.asarray(i2t.log_w) == MASKED_LOG_WEIGHT, removed)
    np.testing.assert_allclose(np.exp(i2t.log_w), np.where(removed, 0.0, expected_w), atol=1e-5)
    assert np.all(np.isfinite(i2t.log_w))
    scale = jnp.float32(20.0)
    for form, bias in (('softmax', None), ('sigmoid', jnp.float32(-5.0))):
        loss, _ = contrastive_loss(v, t, scale, form=form, sigmoid_bias=bias, i2t=i2t, t2i=t2i)
        assert np.isfinite(loss), form
    # With smoothing on top, removed negatives receive no target mass, so the loss stays O(1).
    smoothed = smoothing_regulation(B, 0.5, True, base=(i2t, t2i))
    assert np.all(np.asarray(smoothed[0].y)[removed] == 0.0)
    np.testing.assert_allclose(np.asarray(smoothed[0].y).sum(axis=1), 1.0, atol=1e-6)
    loss, _ = contrastive_loss(v, t, scale, i2t=smoothed[0], t2i=smoothed[1])
    assert np.isfinite(loss) and loss < 50.0


def test_srcl_without_reference_needs_alpha_zero(sims):
    _, _, cur, ref = sims
    no_ref = srcl_regulation(cur, None, 0.0)
    with_ref = srcl_regulation(cur, ref, 0.0)
    np.testing.assert_allclose(no_ref[0].log_w, with_ref[0].log_w, atol=1e-6)
    with pytest.raises(AssertionError):
        srcl_regulation(cur, None, 0.5)


@pytest.mark.parametrize('shape', ['linear', 'cosine'])
def test_srcl_alpha_schedule_under_jit(shape):
    schedule = jax.jit(lambda step: srcl_alpha(step, 1.0, 0.2, decay_start=100, decay_end=300, shape=shape))
    quarter = 1.0 - 0.8 * (0.25 if shape == 'linear' else 0.5 * (1 - math.cos(math.pi * 0.25)))
    cases = {0: 1.0, 100: 1.0, 150: quarter, 200: 0.6, 300: 0.2, 10_000: 0.2}
    for step, expected in cases.items():
        np.testing.assert_allclose(schedule(jnp.int32(step)), expected, atol=1e-6, err_msg=f'step {step}')
    with pytest.raises(ValueError):
        srcl_alpha(jnp.int32(0), shape='exp')


# ---------------------------------------------------------------------- COSMO / MAFA


def _np_hardest_two(sim):
    hardest, second = [], []
    for i in range(sim.shape[0]):
        order = [j for j in np.argsort(-sim[i], kind='stable') if j != i]
        hardest.append(order[0])
        second.append(order[1])
    return np.array(hardest), np.array(second)


def test_cosmo_conversion_targets_and_states(sims):
    _, _, cur, _ = sims
    hardest, second = _np_hardest_two(cur)
    disc = np.zeros((B, B), np.float32)
    row_scores = np.array([0.95, 0.81, 0.8, 0.6, 0.5, 0.3, 0.99, 0.0], np.float32)
    disc[np.arange(B), hardest] = row_scores
    (i2t, _), info = jax.jit(lambda c, d: cosmo_regulation(c, d, 0.8, 0.5, 0.5, False))(cur, disc)
    info = info['i2t']
    np.testing.assert_array_equal(info['hardest'], hardest)
    np.testing.assert_array_equal(info['second'], second)
    converted = row_scores > 0.8
    np.testing.assert_array_equal(info['converted'], converted)
    # MAFA's strict inequalities: q == high (0.8) and q == low (0.5) decide nothing (no ITM pair).
    between = np.where((row_scores > 0.5) & (row_scores < 0.8), STATE_DROPPED, STATE_AT_THRESHOLD)
    expected_state = np.where(converted, STATE_CONVERTED, np.where(row_scores < 0.5, STATE_KEPT, between))
    np.testing.assert_array_equal(info['state'], expected_state)
    assert info['hardest'].dtype == jnp.int32 and info['state'].dtype == jnp.int32
    expected_y = np.eye(B)
    for i in range(B):
        if converted[i]:
            expected_y[i, i] = expected_y[i, hardest[i]] = 0.5
    np.testing.assert_allclose(i2t.y, expected_y, atol=1e-7)
    assert i2t.log_w is None


def test_cosmo_t2i_uses_transposed_similarities(sims):
    _, _, cur, _ = sims
    hardest_t2i, second_t2i = _np_hardest_two(cur.T)
    assert not np.array_equal(hardest_t2i, _np_hardest_two(cur)[0])
    disc = np.ones((B, B), np.float32)  # every hardest negative is converted, in both directions
    (i2t, t2i), info = cosmo_regulation(cur, disc, 0.8, 0.5, 0.0, False)
    np.testing.assert_array_equal(info['t2i']['hardest'], hardest_t2i)
    np.testing.assert_array_equal(info['t2i']['second'], second_t2i)
    expected = np.eye(B) * 0.5
    expected[np.arange(B), hardest_t2i] = 0.5
    np.testing.assert_allclose(t2i.y, expected, atol=1e-7)
    # The i2t disc scores are indexed (image, text): t2i reads them transposed.
    disc = np.zeros((B, B), np.float32)
    disc[hardest_t2i[0], 0] = 0.9  # (image j1, text 0) scored high
    _, info = cosmo_regulation(cur, disc, 0.8, 0.5, 0.0, False)
    np.testing.assert_array_equal(info['t2i']['converted'], np.arange(B) == 0)


def test_cosmo_smoothing_and_base_targets(sims):
    _, _, cur, _ = sims
    hardest, _ = _np_hardest_two(cur)
    disc = np.zeros((B, B), np.float32)
    disc[0, hardest[0]] = 1.0
    base_y = np.full((B, B), 0.02, np.float32)
    np.fill_diagonal(base_y, 1.0 - 0.02 * (B - 1))
    base = (Regulation(y=jnp.asarray(base_y)), Regulation())
    eps = 0.3
    run = jax.jit(lambda c, d, active: cosmo_regulation(c, d, 0.8, 0.5, eps, active, base=base))
    (i2t, t2i), _ = run(cur, disc, jnp.bool_(True))
    expected = base_y.astype(np.float64).copy()
    expected[0, hardest[0]] += 1.0
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(i2t.y, (1 - eps) * expected + eps / B, atol=1e-6)
    np.testing.assert_allclose(np.asarray(t2i.y).sum(axis=1), 1.0, atol=1e-6)
    (off, _), _ = run(cur, disc, jnp.bool_(False))
    np.testing.assert_allclose(off.y, expected, atol=1e-6)
    alone = smoothing_regulation(B, eps, True)
    np.testing.assert_allclose(alone[1].y, (1 - eps) * np.eye(B) + eps / B, atol=1e-7)
    np.testing.assert_array_equal(smoothing_regulation(B, eps, False)[0].y, np.eye(B))


def test_srcl_then_cosmo_composes(sims):
    v, t, cur, ref = sims

    @jax.jit
    def regulate(c, r, d):
        return cosmo_regulation(c, d, 0.8, 0.5, 0.0, False, base=srcl_regulation(c, r, 0.3))

    disc = np.ones((B, B), np.float32)
    (i2t, t2i), info = regulate(cur, ref, disc)
    srcl_i2t, srcl_t2i = srcl_regulation(cur, ref, 0.3)
    for reg, srcl, name in ((i2t, srcl_i2t, 'i2t'), (t2i, srcl_t2i, 't2i')):
        positive = np.eye(B, dtype=bool)
        positive[np.arange(B), np.asarray(info[name]['hardest'])] = True
        np.testing.assert_array_equal(np.asarray(reg.log_w)[positive], 0.0)
        np.testing.assert_allclose(np.asarray(reg.log_w)[~positive], np.asarray(srcl.log_w)[~positive])
        np.testing.assert_allclose(np.asarray(reg.y)[positive], 0.5)
    loss, _ = contrastive_loss(v, t, jnp.float32(10.0), i2t=i2t, t2i=t2i)
    assert np.isfinite(loss)


def test_srcl_w_min_then_cosmo_converts_a_removed_hardest_negative(sims):
    """SRCL's w_min drops the most similar negative; COSMO then converts that same j1: it becomes a
    positive (log_w 0, target mass), and smoothing spreads over the candidates still in the loss."""
    v, t, cur, _ = sims
    w_min, high, eps = 0.5, 0.8, 0.3
    hardest, _ = _np_hardest_two(cur)
    srcl_w = np.exp(_np_srcl_log_w(cur, cur, 0.0, 0.1))  # alpha 0: the model's own similarity only
    assert all(srcl_w[i, hardest[i]] < w_min for i in range(B)), 'fixture: every j1 is removed by w_min'
    disc = np.zeros((B, B), np.float32)
    disc[0, hardest[0]] = 0.9  # only anchor 0's j1 is a false negative
    (i2t, t2i), info = jax.jit(
        lambda c, d: cosmo_regulation(
            c, d, high, 0.5, eps, True, base=srcl_regulation(c, None, 0.0, tau_w=0.1, w_min=w_min)
        )
    )(cur, disc)
    # numpy reference, i2t
    log_w = np.where(srcl_w < w_min, MASKED_LOG_WEIGHT, np.log(srcl_w))
    np.fill_diagonal(log_w, 0.0)
    log_w[0, hardest[0]] = 0.0
    y = np.eye(B)
    y[0, hardest[0]] = 1.0
    y /= y.sum(axis=1, keepdims=True)
    kept = log_w > MASKED_LOG_WEIGHT / 2
    y = (1 - eps) * y + eps * kept / kept.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(info['i2t']['converted']), np.arange(B) == 0)
    np.testing.assert_allclose(np.asarray(i2t.log_w), log_w, atol=1e-5)
    np.testing.assert_allclose(np.asarray(i2t.y), y, atol=1e-6)
    assert np.asarray(i2t.y)[0, hardest[0]] > 0.3 and np.all(np.asarray(i2t.y)[~kept] == 0.0)
    scale = 20.0
    loss, parts = contrastive_loss(v, t, jnp.float32(scale), i2t=i2t, t2i=t2i)
    np.testing.assert_allclose(float(parts['loss_i2t']), _np_softmax_loss(scale * cur, log_w, y), rtol=1e-5)
    assert np.isfinite(loss)


# ------------------------------------------------------------------------ gradients


def test_regulators_pass_no_gradient(sims):
    v, t, _, ref = sims
    probe = jnp.asarray(np.random.default_rng(1).normal(size=(B, B)), jnp.float32)
    disc = jnp.asarray(ref)

    def regulate(v, t):
        sim = v @ t.T
        (i2t, t2i), _ = cosmo_regulation(sim, disc, 0.1, 0.0, 0.2, True, base=srcl_regulation(sim, sim, 0.5))
        return i2t, t2i

    def through_outputs(v, t):  # any dependence of log_w / y on the sims would show here
        i2t, t2i = regulate(v, t)
        return jnp.sum(probe * (i2t.log_w + t2i.log_w + i2t.y + t2i.y))

    def srcl_outputs(v, t):  # SRCL alone: COSMO's own stop_gradient must not be what hides it
        i2t, t2i = srcl_regulation(v @ t.T, v @ t.T, 0.5)
        return jnp.sum(probe * (i2t.log_w + t2i.log_w))

    def smoothing_outputs(v, t):
        i2t, t2i = smoothing_regulation(B, 0.2, True, base=srcl_regulation(v @ t.T, None, 0.0))
        return jnp.sum(probe * (i2t.y + t2i.y + i2t.log_w))

    for fn in (through_outputs, srcl_outputs, smoothing_outputs):
        for grad in jax.grad(fn, argnums=(0, 1))(v, t):
            np.testing.assert_array_equal(grad, 0.0)

    def loss_inside(v, t):
        i2t, t2i = regulate(v, t)
        return contrastive_loss(v, t, jnp.float32(10.0), i2t=i2t, t2i=t2i)[0]

    const_i2t, const_t2i = regulate(v, t)

    def loss_constant(v, t):
        return contrastive_loss(v, t, jnp.float32(10.0), i2t=const_i2t, t2i=const_t2i)[0]

    inside = jax.grad(loss_inside, argnums=(0, 1))(v, t)
    constant = jax.grad(loss_constant, argnums=(0, 1))(v, t)
    for a, b in zip(inside, constant):
        np.testing.assert_allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------- diagnostics


def test_conversion_stats_hand_case():
    hardest = jnp.array([1, 0, 3, 0], jnp.int32)
    fn = np.zeros((4, 4), bool)
    fn[0, 1] = fn[2, 3] = True  # asymmetric: rows 0 and 2 have a truly-FN hardest
    converted = jnp.array([True, True, False, True])  # row 0 right, rows 1 and 3 wrong, row 2 missed
    stats = jax.jit(conversion_stats)(hardest, converted, fn)
    np.testing.assert_allclose(stats['precision'], 1 / 3)
    np.testing.assert_allclose(stats['recall'], 1 / 2)
    assert int(stats['num_true_positive']) == 1
    assert int(stats['num_converted']) == 3 and int(stats['num_hardest_fn']) == 2
    empty = conversion_stats(hardest, jnp.zeros(4, bool), np.zeros((4, 4), bool))
    assert np.isnan(empty['precision']) and np.isnan(empty['recall'])


def test_srcl_weight_stats_hand_case():
    weights = np.array([[1.0, 0.5, 2.0], [0.25, 1.0, 4.0], [1.5, 3.0, 1.0]])
    fn = np.array([[True, True, False], [False, True, False], [False, True, True]])  # diagonal ignored
    stats = jax.jit(srcl_weight_stats)(jnp.log(jnp.asarray(weights, jnp.float32)), fn)
    np.testing.assert_allclose(stats['weight_false_negative'], (0.5 + 3.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(stats['weight_true_negative'], (2.0 + 0.25 + 4.0 + 1.5) / 4, rtol=1e-6)
    assert int(stats['count_false_negative']) == 2 and int(stats['count_true_negative']) == 4
    empty = srcl_weight_stats(jnp.zeros((3, 3)), np.zeros((3, 3), bool))
    assert np.isnan(empty['weight_false_negative']) and float(empty['weight_true_negative']) == 1.0
