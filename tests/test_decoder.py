"""The image-grounded decoder (models/decoder.py): causality, what its layouts share, the key/value cache, and
the LM loss (objectives/lm.py) against numpy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.models.decoder_config import DECODER_BOS_ID, decoder_config_from, warm_start_aliases
from vlp_jax.models.text import TextConfig
from vlp_jax.models.vit import ViTConfig
from vlp_jax.models.vlp import VLPConfig, VLPModel
from vlp_jax.objectives.lm import decoder_batch, smoothed_cross_entropy

BATCH, IMAGE, SEQ, VOCAB = 2, 16, 8, 50
COMBINATIONS = [('shared', True), ('separate', False), ('shared', False), ('separate', True)]


def layouts(ci: tuple[str, bool]) -> list:
    """The four (layout, pre-norm) combinations; CI runs `ci` (one model, initialised once), the others are slow."""
    return [c if c == ci else pytest.param(*c, marks=pytest.mark.slow) for c in COMBINATIONS]


def decoder_model(layout: str, pre_norm: bool = True, context: str = 'image') -> VLPModel:
    return VLPModel(
        VLPConfig(
            vision=ViTConfig(image_size=IMAGE, patch_size=8, width=24, depth=1, num_heads=4, mlp_dim=48),
            text=TextConfig(
                max_len=SEQ,
                width=32,
                depth=1,
                num_heads=4,
                mlp_dim=64,
                vocab_size=VOCAB,
                num_fusion_layers=2,
                pre_norm=pre_norm,
            ),
            embed_dim=16,
            kind='fusion',
            decoder=decoder_config_from({'layout': layout, 'context': context}, 1, 2),
        )
    )


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.normal(size=(BATCH, IMAGE, IMAGE, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(2, VOCAB, size=(BATCH, SEQ)), jnp.int32).at[:, 0].set(DECODER_BOS_ID)
    return image, ids, jnp.ones((BATCH, SEQ), jnp.int32)


class Models(dict):
    """(layout, pre_norm) -> (model, params), initialised when first asked for."""

    def __missing__(self, key):
        model = decoder_model(*key)
        self[key] = model, nn.unbox(jax.jit(model.init)(jax.random.key(1), *inputs()))['params']
        return self[key]


MODELS = Models()  # one per process: test_decoding.py reuses what this file initialised


@pytest.fixture(scope='module')
def models():
    return MODELS


def _logits(model, params, ids, image):
    apply = lambda *args, method: model.apply({'params': params}, *args, method=method)
    tokens = apply(image, method='image_tokens')
    return apply(apply(ids, jnp.ones_like(ids), tokens, None, method='decode'), method='lm_logits')[..., :VOCAB]


_jitted_logits = jax.jit(_logits, static_argnums=0)


def logits_of(model, params, ids, image):
    """The decoder's word logits [B, L, VOCAB] of ids [B, L] over the image's tokens (the whole prefix at once)."""
    return _jitted_logits(model, params, ids, image)


@pytest.mark.parametrize('layout, pre_norm', layouts(('shared', True)))
def test_a_later_token_never_changes_an_earlier_positions_logits(models, layout, pre_norm):
    model, params = models[layout, pre_norm]
    image, ids, _ = inputs()
    base = logits_of(model, params, ids, image)
    for position in range(1, SEQ):
        changed = logits_of(model, params, ids.at[:, position].set((ids[:, position] + 7) % VOCAB), image)
        np.testing.assert_array_equal(np.asarray(changed[:, :position]), np.asarray(base[:, :position]))
        assert float(jnp.abs(changed[:, position:] - base[:, position:]).max()) > 1e-4, position
    other_image = logits_of(model, params, ids, image[::-1])  # every position reads the image
    assert float(jnp.abs(other_image[:, 0] - base[:, 0]).max()) > 1e-4


def _perturbed(params, path):
    """`params` with the leaf at `path` changed by a ramp (not a constant, which a LayerNorm would remove)."""
    ramp = lambda x: x + 0.5 * jnp.linspace(-1.0, 1.0, x.size).reshape(x.shape)
    return jax.tree_util.tree_map_with_path(lambda p, x: ramp(x) if tuple(k.key for k in p) == path else x, params)


def test_the_shared_decoder_owns_only_its_self_attention_and_runs_the_text_towers_weights(models):
    """BLIP's layout: the decoder's params are one self-attention per text and fusion layer; the text tower's
    MLPs, cross-attention and embeddings change its output, the encoder's own self-attention does not."""
    model, params = models['shared', True]
    assert set(params['decoder']) == {'block_0', 'block_1', 'block_2'}
    for block in params['decoder'].values():
        assert set(block) == {'attn', 'ln_attn'}
    image, ids, _ = inputs()
    base = logits_of(model, params, ids, image)
    shared = [
        ('text', 'encoder', 'block_0', 'mlp', 'fc1', 'bias'),
        ('text', 'fusion', 'block_1', 'xattn', 'value', 'bias'),
        ('text', 'fusion', 'ln_final', 'bias'),
        ('text', 'pos_embedding'),
        ('mlm_bias',),
        ('decoder', 'block_2', 'attn', 'value', 'bias'),
    ]
    for path in shared:
        assert float(jnp.abs(logits_of(model, _perturbed(params, path), ids, image) - base).max()) > 1e-4, path
    for path in [('text', 'fusion', 'block_0', 'attn', 'value', 'bias'), ('itm_head', 'bias')]:
        np.testing.assert_array_equal(logits_of(model, _perturbed(params, path), ids, image), base)


def test_the_separate_decoder_has_layers_of_its_own_filled_from_the_fusion_layers():
    separate = decoder_config_from({'layout': 'separate', 'depth': -1}, 1, 2)
    assert separate.depth == 2 and all(separate.cross_attention(i) for i in range(2))
    assert warm_start_aliases(separate)['decoder/block_1/'] == 'text/fusion/block_1/'
    shared = decoder_config_from({'layout': 'shared'}, 1, 2)
    assert shared.depth == 3 and not shared.cross_attention(0) and shared.cross_attention(1)
    assert warm_start_aliases(shared)['decoder/block_0/'] == 'text/encoder/block_0/'
    assert decoder_config_from({'layout': 'none'}, 1, 2) is None
    with pytest.raises(ValueError, match='fusion'):
        decoder_config_from({'layout': 'shared'}, 1, 0)


@pytest.mark.parametrize('layout, pre_norm', layouts(('shared', True)))
def test_the_cached_step_equals_the_whole_prefix_run_again(models, layout, pre_norm):
    model, params = models[layout, pre_norm]
    image, ids, _ = inputs(3)

    def apply(*args, method):
        return model.apply({'params': params}, *args, method=method)

    # one compiled step called SEQ times (an unrolled loop of SEQ steps in one jit compiles for much longer)
    step = jax.jit(lambda token, position, cache: apply(token, position, cache, None, method='decoder_step'))
    cache = jax.jit(lambda image: apply(apply(image, method='image_tokens'), SEQ, method='decoder_cache'))(image)

    def cached(params, ids, image):
        steps, kv = [], cache
        for position in range(SEQ):
            logits, kv = step(ids[:, position], jnp.int32(position), kv)
            steps.append(logits[:, :VOCAB])
        return jnp.stack(steps, axis=1)

    steps = cached(params, ids, image)
    whole = logits_of(model, params, ids, image)  # causal: position t of the whole run is the prefix run's last
    np.testing.assert_allclose(np.asarray(steps), np.asarray(whole), atol=2e-5, rtol=1e-5)
    prefix = logits_of(model, params, ids[:, : SEQ // 2], image)[:, -1]  # and one prefix itself, run again
    np.testing.assert_allclose(np.asarray(steps[:, SEQ // 2 - 1]), np.asarray(prefix), atol=2e-5, rtol=1e-5)


def _np_smoothed(logits, targets, eps):
    """BLIP med.py: CrossEntropyLoss(label_smoothing=eps), written out in float64."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0]
    return (1 - eps) * nll + eps * -log_p.mean(-1)


def test_lm_loss_with_label_smoothing_matches_numpy_and_ignores_the_padded_vocabulary():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 64)).astype(np.float32) * 3
    targets = rng.integers(0, VOCAB, size=(3, 5))
    padded = logits.copy()
    padded[..., VOCAB:] = -1e9  # the word table's padding rows (VLPModel.mlm_logits)
    for eps in (0.0, 0.1):
        got = smoothed_cross_entropy(jnp.asarray(padded), jnp.asarray(targets), eps, VOCAB)
        np.testing.assert_allclose(np.asarray(got), _np_smoothed(logits[..., :VOCAB], targets, eps), rtol=1e-5)


def test_decoder_batch_starts_with_bos_writes_the_prompt_and_scores_only_the_caption():
    # [CLS] w1 w2 [SEP] [PAD] [PAD] [PAD] [PAD], prompt (p1, p2)
    ids = jnp.asarray([[101, 11, 12, 102, 0, 0, 0, 0]], jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    batch = decoder_batch(ids, mask, (21, 22))
    assert batch.inputs.tolist() == [[DECODER_BOS_ID, 21, 22, 11, 12, 102, 0, 0]]
    assert batch.mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]]
    assert batch.targets.tolist() == [[21, 22, 11, 12, 102, 0, 0, 0]]
    assert batch.weights.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]  # w1, w2, [SEP]; not the prompt, not padding
    plain = decoder_batch(ids, mask)
    assert plain.inputs.tolist() == [[DECODER_BOS_ID, 11, 12, 102, 0, 0, 0, 0]]
    assert plain.weights.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
