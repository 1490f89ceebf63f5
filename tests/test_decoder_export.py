"""The decoder's export to transformers' BertLMHeadModel (`export --layout bert_lm`, models/exporters.py): the
written keys are BertLMHeadModel's, a numpy forward of the written file (tests/hf_numpy.py, written from
BertLMHeadModel's definition) gives vlp_jax's decoder logits, what cannot be written is one line saying why,
and (slow, torch installed) transformers itself loads the export and gives the same logits."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_numpy import bert_lm_forward
from safetensors.numpy import load_file

from vlp_jax.models.decoder_config import DECODER_BOS_ID, decoder_config_from
from vlp_jax.models.exporters import export_tensors, write_export
from vlp_jax.models.import_checks import ImportWeightsError
from vlp_jax.models.param_paths import flat
from vlp_jax.models.text import TextConfig
from vlp_jax.models.vit import ViTConfig
from vlp_jax.models.vlp import VLPConfig, VLPModel

BATCH, IMAGE, SEQ, VOCAB, WIDTH, HEADS, DEPTH = 2, 16, 8, 50, 32, 4, 2


def model_config(layout: str = 'separate', pre_norm: bool = False, vision_width: int = WIDTH) -> VLPConfig:
    text = TextConfig(
        max_len=SEQ,
        width=WIDTH,
        depth=1,
        num_heads=HEADS,
        mlp_dim=64,
        vocab_size=VOCAB,
        num_fusion_layers=DEPTH,
        pre_norm=pre_norm,
        ln_eps=1e-12,
    )
    return VLPConfig(
        vision=ViTConfig(image_size=IMAGE, patch_size=8, width=vision_width, depth=1, num_heads=4, mlp_dim=48),
        text=text,
        embed_dim=16,
        kind='fusion',
        decoder=decoder_config_from({'layout': layout}, 1, DEPTH),
    )


def random_params(model: VLPModel, batch: int = 1, scale: float = 0.2) -> dict:
    """Params of `model` drawn at random (no init compiled; LayerNorms and biases off 1 and 0, so a swapped
    tensor shows)."""
    image, ids = jnp.zeros((batch, IMAGE, IMAGE, 3)), jnp.ones((batch, SEQ), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), image, ids, ids))['params'])
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda leaf: np.asarray(rng.normal(0, scale, leaf.shape), np.float32), shapes)


@pytest.fixture(scope='module')
def exported():
    """A 'separate' post-LN decoder with random weights, its export, and vlp_jax's logits for random ids."""
    model = VLPModel(model_config())
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.normal(size=(BATCH, IMAGE, IMAGE, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(2, VOCAB, size=(BATCH, SEQ)), jnp.int32).at[:, 0].set(DECODER_BOS_ID)
    params = random_params(model)

    @jax.jit
    def logits(params, image, ids):
        apply = lambda *a, method: model.apply({'params': params}, *a, method=method)
        context = apply(image, method='image_tokens')
        hidden = apply(ids, jnp.ones_like(ids), context, None, method='decode')
        return apply(hidden, method='lm_logits')[..., :VOCAB], context

    want, context = logits(params, image, ids)
    tensors = export_tensors(flat(params), model.config, 'bert_lm')
    return model, tensors, np.asarray(ids), np.asarray(context), np.asarray(want)


def bert_lm_keys(depth: int) -> set[str]:
    """BertLMHeadModel's state-dict keys (is_decoder, add_cross_attention), without the decoder weight and bias
    tied to the word embeddings and cls.predictions.bias."""
    embeddings = ['word_embeddings', 'position_embeddings', 'token_type_embeddings']
    keys = {f'bert.embeddings.{name}.weight' for name in embeddings}
    keys |= {'bert.embeddings.LayerNorm.weight', 'bert.embeddings.LayerNorm.bias', 'cls.predictions.bias'}
    modules = ['cls.predictions.transform.dense', 'cls.predictions.transform.LayerNorm']
    for i in range(depth):
        for attention in ('attention', 'crossattention'):
            modules += [f'bert.encoder.layer.{i}.{attention}.self.{p}' for p in ('query', 'key', 'value')]
            modules += [
                f'bert.encoder.layer.{i}.{attention}.output.dense',
                f'bert.encoder.layer.{i}.{attention}.output.LayerNorm',
            ]
        modules += [f'bert.encoder.layer.{i}.intermediate.dense', f'bert.encoder.layer.{i}.output.dense']
        modules += [f'bert.encoder.layer.{i}.output.LayerNorm']
    return keys | {f'{m}.{p}' for m in modules for p in ('weight', 'bias')}


def test_the_export_has_bert_lm_head_models_keys_and_a_numpy_forward_of_it_gives_vlp_jax_logits(exported, tmp_path):
    model, tensors, ids, context, want = exported
    assert set(tensors) == bert_lm_keys(DEPTH)
    assert tensors['bert.embeddings.word_embeddings.weight'].shape == (VOCAB, WIDTH)
    assert tensors['bert.encoder.layer.1.crossattention.self.key.weight'].shape == (WIDTH, WIDTH)
    got = bert_lm_forward(tensors, ids, context, HEADS)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    write_export(str(tmp_path), tensors, model.config, 'bert_lm')
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architectures'] == ['BertLMHeadModel'] and config['is_decoder'] and config['add_cross_attention']
    assert config['num_hidden_layers'] == DEPTH and config['vocab_size'] == VOCAB
    assert (config['bos_token_id'], config['layer_norm_eps']) == (DECODER_BOS_ID, 1e-12)
    assert set(load_file(str(tmp_path / 'model.safetensors'))) == set(tensors)


@pytest.mark.parametrize(
    'config, message',
    [
        (model_config('shared'), "a 'shared' (BLIP) decoder has no BertLMHeadModel layout"),
        (model_config(pre_norm=True), 'it needs model.text.pre_norm=False'),
        (model_config(vision_width=24), 'model.vision.width=24; set them equal'),
    ],
)
def test_what_bert_lm_head_model_cannot_express_is_one_line_saying_why(config, message):
    params = flat(random_params(VLPModel(config)))
    with pytest.raises(ImportWeightsError) as error:
        export_tensors(params, config, 'bert_lm')
    assert message in str(error.value) and '\n' not in str(error.value), str(error.value)


@pytest.mark.slow
def test_transformers_bert_lm_head_model_loads_the_export_and_gives_vlp_jax_logits(exported, tmp_path):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    model, tensors, ids, context, want = exported
    write_export(str(tmp_path), tensors, model.config, 'bert_lm')
    hf = transformers.BertLMHeadModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids).long(),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
            encoder_hidden_states=torch.tensor(context),
        )
    np.testing.assert_allclose(out.logits.numpy(), want, rtol=1e-4, atol=1e-4)
