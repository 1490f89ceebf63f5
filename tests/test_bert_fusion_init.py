"""ALBEF's text-side init: a BERT file of depth + fusion_layers layers into a fusion text tower.

File layers [0, depth) fill the text layers and [depth, depth + fusion_layers) the fusion layers'
self-attention, MLP and LayerNorms, as ALBEF fills 6 + 6 layers from bert-base-uncased; the cross-attention
stays fresh unless the file carries transformers' `crossattention.*` tensors (an exported fusion tower).
Generated files in the real key layout, checked against plain-numpy forwards (tests/hf_numpy.py): a
3-layer BERT into 2 text + 1 fusion layer, the image tokens 24 wide against the text's 32.
"""

import json

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, run_cli
from hf_numpy import bert_cross_layers, bert_cross_tensors, bert_forward, bert_tensors
from test_importers import (
    BERT,
    HEADS,
    MLP,
    POSITIONS,
    VOCAB,
    WIDTH,
    assert_same_params,
    check_inits,
    init_params,
    run_text,
    text_inputs,
    tiny_config,
    write,
)

from vlp_jax.models import hf_configs, importers
from vlp_jax.models.exporters import export_tensors
from vlp_jax.models.importers import ImportWeightsError, import_into

TEXT_LAYERS, FUSION_LAYERS, IMAGE_WIDTH, IMAGE_TOKENS = 2, 1, 24, 5
FILE_LAYERS = TEXT_LAYERS + FUSION_LAYERS
TOL = 2e-5
CROSS = ('xattn/query', 'xattn/key', 'xattn/value', 'xattn/out', 'ln_xattn')


def fusion_config(scan=False):
    """test_importers' tiny BERT-layout text tower as 2 text + 1 fusion layers, image tokens 24 wide."""
    text = dict(BERT, depth=TEXT_LAYERS, fusion_layers=FUSION_LAYERS)
    config = tiny_config(text=text, vision=dict(width=IMAGE_WIDTH), kind='fusion')
    config.model.scan = scan
    return config


def hf_bert_config(**extra):
    sizes = dict(hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=MLP, num_hidden_layers=FILE_LAYERS)
    return {'model_type': 'bert', **sizes, **extra}


def layer_tensors(tensors, layers):
    """The file without the layers from `layers` on (what a BERT of that depth holds)."""
    return {k: v for k, v in tensors.items() if not k.startswith('encoder.layer.') or int(k.split('.')[2]) < layers}


def assert_block_is_file_layer(block, tensors, layer):
    """A block's self-attention, MLP and LayerNorms against a file layer, by transforms written here."""
    hf = f'encoder.layer.{layer}.'
    for part in ('query', 'key', 'value'):
        kernel = np.asarray(block['attn'][part]['kernel'])
        np.testing.assert_array_equal(kernel.reshape(WIDTH, WIDTH).T, tensors[f'{hf}attention.self.{part}.weight'])
        bias = np.asarray(block['attn'][part]['bias']).reshape(-1)
        np.testing.assert_array_equal(bias, tensors[f'{hf}attention.self.{part}.bias'])
    out = np.asarray(block['attn']['out']['kernel']).reshape(WIDTH, WIDTH).T
    np.testing.assert_array_equal(out, tensors[f'{hf}attention.output.dense.weight'])
    np.testing.assert_array_equal(block['attn']['out']['bias'], tensors[f'{hf}attention.output.dense.bias'])
    for norm, name in (('ln_attn', 'attention.output.LayerNorm'), ('ln_mlp', 'output.LayerNorm')):
        np.testing.assert_array_equal(block[norm]['scale'], tensors[f'{hf}{name}.weight'])
        np.testing.assert_array_equal(block[norm]['bias'], tensors[f'{hf}{name}.bias'])
    for fc, name in (('fc1', 'intermediate.dense'), ('fc2', 'output.dense')):
        np.testing.assert_array_equal(np.asarray(block['mlp'][fc]['kernel']).T, tensors[f'{hf}{name}.weight'])
        np.testing.assert_array_equal(block['mlp'][fc]['bias'], tensors[f'{hf}{name}.bias'])


def run_fuse(model, params, ids, mask, image_tokens):
    """The text tower's tokens continued through the fusion layers, attending to `image_tokens`."""

    def fused(module, i, m, image):
        return module.fuse(module.text_tokens(i, m), m, image)

    return jax.jit(lambda p, i, m, x: model.apply({'params': p}, i, m, x, method=fused))(
        params, ids, mask, image_tokens
    )


def assert_close_on_real_tokens(got, want, mask):
    real = np.asarray(mask)[..., None] > 0
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=TOL)


@pytest.fixture(scope='module')
def bert_file(tmp_path_factory):
    """A 3-layer BertModel file (real key layout) with its config.json."""
    tensors = bert_tensors(np.random.default_rng(11), VOCAB, POSITIONS, WIDTH, FILE_LAYERS, MLP)
    return tensors, write(tmp_path_factory.mktemp('bert') / 'bert', tensors, hf_bert_config())


def test_text_layers_and_fusion_self_attention_and_mlp_come_from_the_file_cross_attention_stays(bert_file):
    tensors, path = bert_file
    config = fusion_config()
    model, fresh = init_params(config)
    params, plan = import_into(fresh, path, 'text', model.config)
    # (a) the unimodal text tokens are a 2-layer BERT's
    ids, mask = text_inputs(np.random.default_rng(12))
    _, tokens = run_text(model, params, ids, mask)
    hidden, _ = bert_forward(layer_tensors(tensors, TEXT_LAYERS), ids, mask, HEADS)
    assert_close_on_real_tokens(tokens, hidden, mask)
    # (b) the fusion block's self-attention, MLP and LayerNorms are file layer 2; its cross-attention is its init
    for i in range(TEXT_LAYERS):
        assert_block_is_file_layer(params['text']['encoder'][f'block_{i}'], tensors, i)
    assert_block_is_file_layer(params['text']['fusion']['block_0'], tensors, TEXT_LAYERS)
    for part in CROSS:
        assert_same_params(params, fresh, f'text/fusion/block_0/{part}/')
    assert_same_params(params, fresh, 'vision/')
    assert len(plan.left_fresh) == 10 and all('xattn/' in p for p in plan.left_fresh), plan.left_fresh
    assert plan.unused == () and plan.fresh == ()
    # the line a run prints (setup.init_state prints imported_params' lines)
    config.model.text.init = path
    _, lines = importers.imported_params(config, model.config, fresh)
    assert 'file layers 0-1 -> text layers 0-1, file layer 2 -> fusion layer 0 (self-attention, MLP' in lines[0], lines
    assert 'left fresh: the cross-attention of fusion layer 0 (xattn, ln_xattn) (10 arrays)' in lines[0], lines
    print(f'\n{lines[0]}')
    # model.scan=True: the same arrays, stacked; the stacked cross-attention keeps its init
    scanned_model, scanned_fresh = init_params(fusion_config(scan=True))
    scanned, _ = import_into(scanned_fresh, path, 'text', scanned_model.config)
    stack = scanned['text']['fusion']['layers']['block']
    assert_block_is_file_layer(jax.tree.map(lambda a: a[0], stack), tensors, TEXT_LAYERS)
    xattn = scanned_fresh['text']['fusion']['layers']['block']['xattn']['query']['kernel']
    np.testing.assert_array_equal(stack['xattn']['query']['kernel'], xattn)
    encoder = jax.tree.map(lambda a: a[1], scanned['text']['encoder']['layers']['block'])
    assert_block_is_file_layer(encoder, tensors, 1)


def test_a_file_of_depth_layers_still_fills_only_the_text_layers_and_says_the_fusion_layers_stay(bert_file):
    tensors, path = bert_file
    config = fusion_config()
    config.model.text.depth = FILE_LAYERS
    model, fresh = init_params(config)
    params, plan = import_into(fresh, path, 'text', model.config)
    assert_same_params(params, fresh, 'text/fusion/')
    assert_block_is_file_layer(params['text']['encoder']['block_2'], tensors, 2)
    assert 'left fresh: fusion layer 0 (text/fusion/)' in plan.summary('text'), plan.summary('text')


@pytest.mark.parametrize(
    'layers, hf_extra, message',
    [
        (
            4,
            {},
            'holds 4 layers but the text tower has 2 text + 1 fusion layers; set model.text.depth=4 to fill the '
            'text layers alone, or model.text.depth and model.text.fusion_layers to add up to 4 (e.g. depth=3 and '
            'fusion_layers=1).',
        ),
        (3, {'fusion_layer': 1}, 'has fusion_layer=1; set model.text.depth=1 and model.text.fusion_layers=2'),
        (3, {'num_attention_heads': 8}, 'set model.text.num_heads=8'),
    ],
    ids=['layer-count', 'albef-fusion-layer', 'heads'],
)
def test_a_file_that_does_not_fit_the_fusion_tower_is_one_sentence(tmp_path, layers, hf_extra, message):
    tensors = bert_tensors(np.random.default_rng(0), VOCAB, POSITIONS, WIDTH, layers, MLP)
    config = fusion_config()
    config.model.text.init = write(tmp_path / 'f', tensors, hf_bert_config(num_hidden_layers=layers, **hf_extra))
    with pytest.raises(ImportWeightsError, match='model.text.init') as error:
        check_inits(config)
    assert message in str(error.value) and '\n' not in str(error.value), str(error.value)


def test_cross_attention_of_only_some_fusion_layers_or_of_another_width_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    tensors = bert_tensors(rng, VOCAB, POSITIONS, WIDTH, 4, MLP)
    config = fusion_config()
    config.model.text.update(dict(depth=2, fusion_layers=2))
    config.model.text.init = write(tmp_path / 'partial', {**tensors, **bert_cross_tensors(rng, [2], WIDTH, 24)})
    with pytest.raises(ImportWeightsError, match=r'cross-attention tensors for text/fusion/block_0/.* none for '):
        check_inits(config)
    config.model.text.init = write(tmp_path / 'wide', {**tensors, **bert_cross_tensors(rng, [2, 3], WIDTH, 40)})
    with pytest.raises(ImportWeightsError, match=r'set model.vision.width=40 \(the checkpoint.s encoder_width\)'):
        check_inits(config)


def test_the_train_cli_refuses_a_wrong_layer_count_in_one_line_and_writes_nothing(tmp_path):
    vocab, positions, width, heads, mlp = 30522, 24, 32, 2, 64  # FAST_OVERRIDES' text tower, shapes_tiny's length
    tensors = bert_tensors(np.random.default_rng(2), vocab, positions, width, 3, mlp, pooler=False)
    path = write(tmp_path / 'bert', tensors, {'model_type': 'bert', 'num_attention_heads': heads})
    workdir = tmp_path / 'run'
    args = [
        *('--config', f'{TINY_CONFIG}:steps=2', '--workdir', str(workdir), *FAST_OVERRIDES),
        *('--config.objective=albef', '--config.model.kind=fusion', '--config.model.text.fusion_layers=1'),
        *('--config.model.text.pre_norm=False', '--config.model.text.type_vocab_size=2'),
        f'--config.model.text.init={path}',
    ]
    result = run_cli('vlp_jax.train', args, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip() and 'WARNING' not in line]
    assert result.returncode == 2 and not workdir.exists(), result.stderr[-2000:]
    assert 'model.text.init' in lines[-1] and 'holds 3 layers but the text tower has 1 text + 1 fusion' in lines[-1]
    assert 'set model.text.depth=3' in lines[-1] and 'e.g. depth=2 and fusion_layers=1' in lines[-1], lines


def test_export_import_round_trip_keeps_cross_attention_and_fuse_matches_numpy_post_ln_bert(tmp_path):
    """A fusion model's own params (random, seed 5) -> a 3-layer BERT file with layer 2's crossattention.*
    -> imported into another init (seed 0), plain and scanned -> the same params and the same bytes; the
    model's fuse output is HF BertLayer's (post-LN, cross-attention) numpy forward of that file."""
    config = fusion_config()
    model, source = init_params(config, seed=5)
    tensors = export_tensors(importers.flat(source), model.config, 'bert')
    cross = {k for k in tensors if '.crossattention.' in k}
    assert cross == {k for k in bert_cross_tensors(np.random.default_rng(0), [2], WIDTH, IMAGE_WIDTH)}
    assert tensors['encoder.layer.2.crossattention.self.key.weight'].shape == (WIDTH, IMAGE_WIDTH)
    assert {int(k.split('.')[2]) for k in tensors if k.startswith('encoder.layer.')} == {0, 1, 2}
    hf = hf_configs.hf_config(model.config, 'bert')
    assert (hf['num_hidden_layers'], hf['fusion_layer'], hf['encoder_width']) == (FILE_LAYERS, 2, IMAGE_WIDTH)
    path = write(tmp_path / 'exported', tensors, json.loads(json.dumps(hf)))
    _, target = init_params(config, seed=0)
    params, plan = import_into(target, path, 'text', model.config)
    assert plan.left_fresh == () and plan.unused == (), plan.summary('text')
    assert 'cross-attention)' in plan.summary('text')
    got, want = importers.flat(params), importers.flat(source)
    for key in [k for k in want if k.startswith('text/')]:  # the word table's padding rows keep each side's init
        rows = VOCAB if key == 'text/token_embed/embedding' else None
        np.testing.assert_array_equal(np.asarray(got[key])[:rows], want[key][:rows], err_msg=key)
    scanned_model, scanned_target = init_params(fusion_config(scan=True))
    scanned, _ = import_into(scanned_target, path, 'text', scanned_model.config)
    for imported, imported_model in ((params, model), (scanned, scanned_model)):
        exported = export_tensors(importers.flat(imported), imported_model.config, 'bert')
        assert set(exported) == set(tensors)
        for key, value in tensors.items():
            assert exported[key].dtype == value.dtype and exported[key].tobytes() == value.tobytes(), key

    rng = np.random.default_rng(6)
    ids, mask = text_inputs(rng)  # lengths 8, 5, 2: padded captions
    image_tokens = rng.normal(size=(len(ids), IMAGE_TOKENS, IMAGE_WIDTH)).astype(np.float32)
    hidden, _ = bert_forward(layer_tensors(tensors, TEXT_LAYERS), ids, mask, HEADS)
    want = bert_cross_layers(tensors, hidden, mask, image_tokens, HEADS, first=TEXT_LAYERS)
    assert_close_on_real_tokens(run_fuse(model, params, ids, mask, image_tokens), want, mask)


def test_a_file_with_cross_attention_for_every_fusion_layer_imports_it(tmp_path):
    """A generated BERT + crossattention file (ALBEF xbert's layout): fuse reproduces its numpy forward."""
    rng = np.random.default_rng(8)
    tensors = bert_tensors(rng, VOCAB, POSITIONS, WIDTH, FILE_LAYERS, MLP)
    tensors.update(bert_cross_tensors(rng, [2], WIDTH, IMAGE_WIDTH))
    config = fusion_config()
    model, fresh = init_params(config)
    path = write(tmp_path / 'xbert', tensors, hf_bert_config(fusion_layer=TEXT_LAYERS, encoder_width=IMAGE_WIDTH))
    params, plan = import_into(fresh, path, 'text', model.config)
    assert plan.left_fresh == () and len(plan.pairs) == len(tensors)
    ids, mask = text_inputs(rng)
    image_tokens = rng.normal(size=(len(ids), IMAGE_TOKENS, IMAGE_WIDTH)).astype(np.float32)
    hidden, _ = bert_forward(layer_tensors(tensors, TEXT_LAYERS), ids, mask, HEADS)
    want = bert_cross_layers(tensors, hidden, mask, image_tokens, HEADS, first=TEXT_LAYERS)
    assert_close_on_real_tokens(run_fuse(model, params, ids, mask, image_tokens), want, mask)


def test_bert_base_uncased_naming_bert_prefix_gamma_beta_and_mlm_head_imports_the_same(bert_file, tmp_path):
    """bert-base-uncased's model.safetensors (BertForMaskedLM) has a 'bert.' prefix, LayerNorm gamma/beta
    instead of weight/bias, and the MLM head's cls.* tensors outside the prefix: the same text params come in,
    and the MLM head fills the fusion model's (tests/test_pos_interp_and_mlm_head.py checks its forward)."""
    tensors, path = bert_file
    renamed = {
        'bert.' + k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
        for k, v in tensors.items()
    }
    head = {
        'cls.predictions.bias': np.arange(VOCAB, dtype=np.float32),
        'cls.predictions.transform.dense.weight': tensors['encoder.layer.0.output.dense.weight'][:, :WIDTH],
        'cls.predictions.transform.dense.bias': tensors['encoder.layer.0.output.dense.bias'],
        'cls.predictions.transform.LayerNorm.gamma': tensors['encoder.layer.0.output.LayerNorm.weight'],
        'cls.predictions.transform.LayerNorm.beta': tensors['encoder.layer.0.output.LayerNorm.bias'],
        'cls.predictions.decoder.weight': tensors['embeddings.word_embeddings.weight'],
    }
    legacy_path = write(tmp_path / 'bert_base_uncased_like', {**renamed, **head}, hf_bert_config())
    model, fresh = init_params(fusion_config())
    want, _ = import_into(fresh, path, 'text', model.config)
    got, plan = import_into(fresh, legacy_path, 'text', model.config)
    assert_same_params(got, want, 'text/')
    assert plan.unused == () and plan.tied == ('cls.predictions.decoder.weight',) and plan.untied == ()
    assert 'MLM head from cls.predictions.* (decoder tied to the word embeddings)' in plan.summary('text')
    np.testing.assert_array_equal(got['mlm_norm']['scale'], head['cls.predictions.transform.LayerNorm.gamma'])
    np.testing.assert_array_equal(np.asarray(got['mlm_bias'])[:VOCAB], head['cls.predictions.bias'])
