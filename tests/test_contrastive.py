"""The general contrastive loss against plain numpy references (softmax and sigmoid)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.objectives.contrastive import Regulation, contrastive_loss

B, E = 12, 8


def _normalised(rng, n, e):
    x = rng.normal(size=(n, e))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_softmax_direction(z, log_w, y):
    return -np.mean(np.sum(y * _np_log_softmax(z + log_w), axis=1))


def _np_sigmoid_direction(z, bias, log_w, y):
    labels = np.where(y > 0, 1.0, -1.0)
    weights = np.where(y > 0, 1.0, np.exp(log_w))
    log_sig = -np.log1p(np.exp(-labels * (z + bias)))
    return -np.sum(weights * log_sig) / z.shape[0]


def _random_regulation(rng):
    log_w = rng.normal(size=(B, B)) * 0.5
    np.fill_diagonal(log_w, 0.0)
    y = np.eye(B) + (rng.random((B, B)) < 0.15) * rng.random((B, B))
    y = y / y.sum(axis=1, keepdims=True)
    return log_w, y


@pytest.mark.parametrize('regulated', [False, True])
def test_softmax_matches_numpy(regulated):
    rng = np.random.default_rng(0)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    scale = 1 / 0.07
    z = scale * v @ t.T
    if regulated:
        lw1, y1 = _random_regulation(rng)
        lw2, y2 = _random_regulation(rng)
    else:
        lw1 = lw2 = np.zeros((B, B))
        y1 = y2 = np.eye(B)
    expected = 0.5 * (_np_softmax_direction(z, lw1, y1) + _np_softmax_direction(z.T, lw2, y2))
    i2t = Regulation(jnp.asarray(lw1), jnp.asarray(y1)) if regulated else Regulation()
    t2i = Regulation(jnp.asarray(lw2), jnp.asarray(y2)) if regulated else Regulation()
    loss, _ = contrastive_loss(
        jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), jnp.float32(scale), i2t=i2t, t2i=t2i
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('regulated', [False, True])
def test_sigmoid_matches_numpy(regulated):
    rng = np.random.default_rng(1)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    scale, bias = 10.0, -3.0
    z = scale * v @ t.T
    if regulated:
        lw1, y1 = _random_regulation(rng)
        lw2, y2 = _random_regulation(rng)
    else:
        lw1 = lw2 = np.zeros((B, B))
        y1 = y2 = np.eye(B)
    expected = 0.5 * (_np_sigmoid_direction(z, bias, lw1, y1) + _np_sigmoid_direction(z.T, bias, lw2, y2))
    # Unregulated: the default path (no Regulation passed), which is what the step uses without regulators.
    regulations = (
        dict(i2t=Regulation(jnp.asarray(lw1), jnp.asarray(y1)), t2i=Regulation(jnp.asarray(lw2), jnp.asarray(y2)))
        if regulated
        else {}
    )
    loss, _ = contrastive_loss(
        jnp.asarray(v, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.float32(scale),
        form='sigmoid',
        sigmoid_bias=jnp.float32(bias),
        **regulations,
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('form', ['softmax', 'sigmoid'])
def test_stop_grad_keys_with_regulators(form):
    """Key-side stop-gradient leaves the regulated value unchanged; each embedding gets only its anchor's gradient."""
    rng = np.random.default_rng(3)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    scale, bias = 10.0, -3.0
    (lw1, y1), (lw2, y2) = _random_regulation(rng), _random_regulation(rng)
    if form == 'sigmoid':  # positives by y > 0; keep them to the diagonal plus a few
        y1, y2 = np.eye(B) + (y1 > 0.2) * y1, np.eye(B)
    z = scale * v @ t.T
    direction = (
        _np_softmax_direction if form == 'softmax' else (lambda zz, lw, y: _np_sigmoid_direction(zz, bias, lw, y))
    )
    expected = 0.5 * (direction(z, lw1, y1) + direction(z.T, lw2, y2))
    i2t, t2i = Regulation(jnp.asarray(lw1), jnp.asarray(y1)), Regulation(jnp.asarray(lw2), jnp.asarray(y2))
    options = dict(form=form, sigmoid_bias=jnp.float32(bias) if form == 'sigmoid' else None, i2t=i2t)
    loss = lambda a, b, sg: contrastive_loss(a, b, jnp.float32(scale), t2i=t2i, stop_grad_keys=sg, **options)[0]
    vj, tj = jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32)
    np.testing.assert_allclose(float(loss(vj, tj, True)), expected, rtol=1e-5, atol=1e-5)
    grad_v, grad_t = jax.grad(loss, argnums=(0, 1))(vj, tj, True)
    # Images are anchors only in i2t, texts only in t2i: with the other side frozen, the full
    # gradient reduces to that one direction's (computed here without stop_grad_keys).
    i2t_only = lambda a: contrastive_loss(a, tj, jnp.float32(scale), t2i=t2i, **options)[1]['loss_i2t']
    t2i_only = lambda b: contrastive_loss(vj, b, jnp.float32(scale), t2i=t2i, **options)[1]['loss_t2i']
    np.testing.assert_allclose(grad_v, 0.5 * jax.grad(i2t_only)(vj), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_t, 0.5 * jax.grad(t2i_only)(tj), rtol=1e-4, atol=1e-6)
    full_v = jax.grad(loss)(vj, tj, False)
    assert not np.allclose(full_v, grad_v, atol=1e-6)  # without stop-gradient the keys do get a gradient


def test_infonce_is_cross_entropy_on_diagonal():
    rng = np.random.default_rng(2)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    z = 5.0 * v @ t.T
    expected = 0.5 * (-np.mean(np.diag(_np_log_softmax(z))) - np.mean(np.diag(_np_log_softmax(z.T))))
    loss, metrics = contrastive_loss(jnp.asarray(v), jnp.asarray(t), jnp.float32(5.0))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Accuracy: the share of anchors whose own pair scores highest, per direction.
    assert float(metrics['i2t_accuracy']) == pytest.approx(np.mean(np.argmax(z, axis=1) == np.arange(B)))
    assert float(metrics['t2i_accuracy']) == pytest.approx(np.mean(np.argmax(z.T, axis=1) == np.arange(B)))
    assert 0.0 < float(metrics['i2t_accuracy']) < 1.0  # random embeddings: some right, some wrong


def test_no_gradient_flows_into_weights_or_targets():
    rng = np.random.default_rng(3)
    v, t = jnp.asarray(_normalised(rng, B, E)), jnp.asarray(_normalised(rng, B, E))
    lw, y = _random_regulation(rng)

    def loss_of(log_w, targets):
        return contrastive_loss(v, t, jnp.float32(5.0), i2t=Regulation(log_w, targets), t2i=Regulation(log_w, targets))[
            0
        ]

    g_w, g_y = jax.grad(loss_of, argnums=(0, 1))(jnp.asarray(lw), jnp.asarray(y))
    assert float(jnp.abs(g_w).max()) == 0.0 and float(jnp.abs(g_y).max()) == 0.0


def test_perfect_alignment_gives_low_loss():
    rng = np.random.default_rng(4)
    v = jnp.asarray(_normalised(rng, B, 64))
    aligned, _ = contrastive_loss(v, v, jnp.float32(50.0))
    shuffled, _ = contrastive_loss(v, v[::-1], jnp.float32(50.0))
    assert float(aligned) < 1e-3 < float(shuffled)


def test_stop_grad_keys_keeps_value_and_cuts_key_gradients():
    rng = np.random.default_rng(5)
    v, t = jnp.asarray(_normalised(rng, B, E)), jnp.asarray(_normalised(rng, B, E))
    plain = lambda a, b: contrastive_loss(a, b, jnp.float32(5.0))[0]
    keys_sg = lambda a, b: contrastive_loss(a, b, jnp.float32(5.0), stop_grad_keys=True)[0]
    np.testing.assert_allclose(float(plain(v, t)), float(keys_sg(v, t)), rtol=1e-6)
    # With stop-gradient keys, d/dv comes from the i2t rows only: half of the plain i2t row term.
    g_i2t_only = jax.grad(lambda a: 0.5 * contrastive_loss(a, t, jnp.float32(5.0))[1]['loss_i2t'])(v)
    np.testing.assert_allclose(jax.grad(keys_sg)(v, t), g_i2t_only, rtol=1e-5, atol=1e-7)


def test_consistency_term_matches_numpy():
    """GRIT-VLP's official value (models/model_pretrain_GRIT_VLP.py): "loss_c_i2t = -torch.sum(
    F.log_softmax(sim_i2t, dim=1)* F.softmax(sim_t2i_sg, dim=1), dim=1).mean()", the same for t2i,
    and "loss_ita = (loss_i2t+loss_t2i)/2 + 0.2* (loss_c_i2t+loss_c_t2i)/2": cross-entropies, not KLs."""
    rng = np.random.default_rng(6)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    z = 5.0 * v @ t.T
    log_p_i2t, log_p_t2i = _np_log_softmax(z), _np_log_softmax(z.T)
    loss_c_i2t = -np.mean(np.sum(log_p_i2t * np.exp(log_p_t2i), axis=1))
    loss_c_t2i = -np.mean(np.sum(log_p_t2i * np.exp(log_p_i2t), axis=1))
    consistency = (loss_c_i2t + loss_c_t2i) / 2
    base = 0.5 * (-np.mean(np.diag(log_p_i2t)) - np.mean(np.diag(log_p_t2i)))
    loss, metrics = contrastive_loss(jnp.asarray(v), jnp.asarray(t), jnp.float32(5.0), consistency_weight=0.2)
    np.testing.assert_allclose(float(metrics['consistency']), consistency, rtol=1e-5)
    np.testing.assert_allclose(float(loss), base + 0.2 * consistency, rtol=1e-5)


def test_local_negatives_average_the_per_shard_losses():
    from vlp_jax.objectives.contrastive import local_contrastive_loss

    rng = np.random.default_rng(7)
    v, t = _normalised(rng, B, E), _normalised(rng, B, E)
    shards = 3
    expected = []
    for s in range(shards):
        rows = slice(s * B // shards, (s + 1) * B // shards)
        z = 5.0 * v[rows] @ t[rows].T
        expected.append(0.5 * (-np.mean(np.diag(_np_log_softmax(z))) - np.mean(np.diag(_np_log_softmax(z.T)))))
    loss, _ = local_contrastive_loss(jnp.asarray(v), jnp.asarray(t), jnp.float32(5.0), shards)
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
    one, _ = local_contrastive_loss(jnp.asarray(v), jnp.asarray(t), jnp.float32(5.0), 1)
    np.testing.assert_allclose(
        float(one), float(contrastive_loss(jnp.asarray(v), jnp.asarray(t), jnp.float32(5.0))[0]), rtol=1e-6
    )
