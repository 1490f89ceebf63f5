"""The rest of ALBEF's init from public weights: a ViT file of another image size gets its position embeddings
interpolated (class row kept, patch grid resized bicubically as torch's F.interpolate(mode='bicubic',
align_corners=False) does), and bert-base-uncased's MLM head (cls.predictions.*) fills a fusion model's.

The bicubic reference below is a plain loop over output pixels written from torch's kernel
(aten/src/ATen/native/UpSample.h: upsample_bicubic2d, area_pixel_compute_source_index with cubic=True,
get_cubic_upsample_coefficients, upsample_get_value_bounded), independent of the importer's matrix form.
"""

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, run_cli
from hf_numpy import bert_tensors, clip_tensors, gelu, vit_forward, vit_tensors
from safetensors.numpy import save_file
from test_importers import (
    BERT,
    CLIP_TEXT,
    CLIP_VISION,
    DEPTH,
    EMBED,
    HEADS,
    MLP,
    PATCH,
    POSITIONS,
    VOCAB,
    WIDTH,
    assert_same_params,
    check_inits,
    header_only,
    init_params,
    run_vision,
    tiny_config,
    write,
)

from vlp_jax.models import importers
from vlp_jax.models.exporters import export_tensors
from vlp_jax.models.importers import ImportWeightsError, import_into
from vlp_jax.models.pos_embed import resize_grid
from vlp_jax.models.vlp import MASKED_LOGIT

FILE_IMAGE, MODEL_IMAGE = 32, 48  # patch 8: a 4x4 grid into a 6x6 one
TOL = 2e-5
VIT_HF = {'model_type': 'vit', 'image_size': FILE_IMAGE, 'patch_size': PATCH, 'num_attention_heads': HEADS}


# ---- torch's bicubic kernel, one output pixel at a time ----


def torch_cubic_coefficients(t, a=-0.75):
    """get_cubic_upsample_coefficients: Keys' kernel at distances t + 1, t, 1 - t, 2 - t."""

    def conv1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def conv2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t)]


def torch_bicubic(image, out_h, out_w):
    """upsample_bicubic2d(align_corners=False) on [H, W, C], a loop over output pixels as the CPU kernel runs."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))

    def value(y, x):  # upsample_get_value_bounded: taps outside the image read the edge
        return image[min(max(y, 0), in_h - 1), min(max(x, 0), in_w - 1)]

    for oy in range(out_h):
        real_y = in_h / out_h * (oy + 0.5) - 0.5  # area_pixel_compute_source_index, cubic: no clamp at 0
        iy = int(np.floor(real_y))
        wy = torch_cubic_coefficients(real_y - iy)
        for ox in range(out_w):
            real_x = in_w / out_w * (ox + 0.5) - 0.5
            ix = int(np.floor(real_x))
            wx = torch_cubic_coefficients(real_x - ix)
            rows = [sum(wx[k] * value(iy - 1 + j, ix - 1 + k) for k in range(4)) for j in range(4)]
            out[oy, ox] = sum(wy[j] * rows[j] for j in range(4))
    return out


def reference_pos_table(table, size):
    """ALBEF's interpolate_pos_embed on a [1 + g*g, width] table, with the loop above."""
    side = int(round((table.shape[0] - 1) ** 0.5))
    grid = torch_bicubic(table[1:].reshape(side, side, -1).astype(np.float64), size, size)
    return np.concatenate([table[:1], grid.reshape(size * size, -1)])


@pytest.mark.parametrize('old, new', [(4, 6), (14, 16), (6, 4), (3, 7), (5, 5)])
def test_bicubic_resize_is_torchs_kernel(old, new):
    grid = np.random.default_rng(old * 10 + new).normal(size=(old, old, 3)).astype(np.float32)
    got = resize_grid(grid, new)
    assert got.shape == (new, new, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, torch_bicubic(grid, new, new), atol=1e-6)
    # the taps of each output pixel sum to 1, edge clamping included: a constant field stays constant
    np.testing.assert_allclose(resize_grid(np.full((old, old, 1), 0.25, np.float32), new), 0.25, atol=1e-7)
    if old == new:  # t = 0 at every pixel: the identity
        np.testing.assert_allclose(got, grid, atol=1e-7)


def vit_48_config():
    config = tiny_config(vision=dict(ln_eps=1e-12, pooler=True))
    config.model.image_size = MODEL_IMAGE
    return config


def test_a_32px_vit_file_imports_into_a_48px_model_with_interpolated_position_embeddings(tmp_path):
    rng = np.random.default_rng(21)
    tensors = vit_tensors(rng, FILE_IMAGE, PATCH, WIDTH, DEPTH, MLP)
    path = write(tmp_path / 'vit', tensors, VIT_HF)  # its config.json says image_size 32: not a refusal
    model, fresh = init_params(vit_48_config())
    check_inits(_with_init(path))  # header only: the 32-px file passes validation
    params, plan = import_into(fresh, path, 'vision', model.config)
    file_table = tensors['embeddings.position_embeddings'][0]
    table = np.asarray(params['vision']['pos_embedding'])
    assert table.shape == (1 + 36, WIDTH) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], file_table[0])  # the class row, exactly
    np.testing.assert_allclose(table, reference_pos_table(file_table, 6), atol=1e-6)
    assert 'position embeddings interpolated from 4x4 to 6x6 (bicubic)' in plan.summary('vision'), plan.summary(
        'vision'
    )
    assert plan.unused == ()
    # every other tensor is the file's; the model at 48 px is HF ViT's forward with the interpolated table
    np.testing.assert_array_equal(params['vision']['cls'], tensors['embeddings.cls_token'].reshape(-1))
    kernel = tensors['embeddings.patch_embeddings.projection.weight'].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(params['vision']['patch_embed']['kernel'], kernel)
    images = rng.normal(size=(2, MODEL_IMAGE, MODEL_IMAGE, 3)).astype(np.float32)
    pooled, tokens = run_vision(model, params, images)
    resized = {**tensors, 'embeddings.position_embeddings': table[None]}
    hidden, pooler_output = vit_forward(resized, images.transpose(0, 3, 1, 2), HEADS)
    np.testing.assert_allclose(tokens, hidden, atol=TOL)
    np.testing.assert_allclose(pooled, pooler_output, atol=TOL)
    assert_same_params(params, fresh, 'text/')
    # export keeps the model's own grid
    exported = export_tensors(importers.flat(params), model.config, 'vit')
    assert exported['embeddings.position_embeddings'].tobytes() == table[None].tobytes()


def _with_init(path):
    config = vit_48_config()
    config.model.vision.init = path
    return config


def test_a_clip_vision_file_is_interpolated_too(tmp_path):
    rng = np.random.default_rng(22)
    tensors = clip_tensors(rng, VOCAB, POSITIONS, WIDTH, FILE_IMAGE, PATCH, WIDTH, DEPTH, MLP, EMBED)
    config = tiny_config(text=CLIP_TEXT, vision=CLIP_VISION, proj_bias=False)
    config.model.image_size = MODEL_IMAGE
    model, fresh = init_params(config)
    params, plan = import_into(fresh, write(tmp_path / 'clip', tensors), 'vision', model.config)
    file_table = tensors['vision_model.embeddings.position_embedding.weight']
    table = np.asarray(params['vision']['pos_embedding'])
    np.testing.assert_array_equal(table[0], file_table[0])
    np.testing.assert_allclose(table, reference_pos_table(file_table, 6), atol=1e-6)
    assert 'interpolated from 4x4 to 6x6' in plan.summary('vision')


def test_a_same_size_import_is_unchanged_byte_for_byte(tmp_path):
    tensors = vit_tensors(np.random.default_rng(23), FILE_IMAGE, PATCH, WIDTH, DEPTH, MLP)
    config = vit_48_config()
    config.model.image_size = FILE_IMAGE
    model, fresh = init_params(config)
    params, plan = import_into(fresh, write(tmp_path / 'vit', tensors, VIT_HF), 'vision', model.config)
    table = np.asarray(params['vision']['pos_embedding'])
    assert table.tobytes() == tensors['embeddings.position_embeddings'][0].tobytes()
    assert 'interpolated' not in plan.summary('vision') and plan.pos_grids is None


@pytest.mark.parametrize(
    'change, hf, message',
    [
        ('rows', None, 'has 7 rows, not a class row and a square grid of patch rows'),
        ('patch', None, "set model.vision.patch_size=4 (the checkpoint's"),
        ('patch', dict(VIT_HF, patch_size=4), 'has patch_size=4; set model.vision.patch_size=4'),
    ],
    ids=['non-square-grid', 'patch-size-kernel', 'patch-size-config'],
)
def test_a_grid_that_cannot_be_interpolated_is_one_sentence(tmp_path, change, hf, message):
    rng = np.random.default_rng(24)
    if change == 'rows':
        tensors = vit_tensors(rng, FILE_IMAGE, PATCH, WIDTH, DEPTH, MLP)
        tensors['embeddings.position_embeddings'] = tensors['embeddings.position_embeddings'][:, :7]
    else:  # 32 px / patch 4: an 8x8 grid (interpolable) but a 4x4 kernel
        tensors = vit_tensors(rng, FILE_IMAGE, 4, WIDTH, DEPTH, MLP)
    with pytest.raises(ImportWeightsError, match='model.vision.init') as error:
        header_only(vit_48_config(), tmp_path, tensors, hf, tower='vision')
    assert message in str(error.value) and '\n' not in str(error.value), str(error.value)


# ---- BERT's MLM head ----

TEXT_LAYERS = 2  # + 1 fusion layer: a 3-layer BERT file


def fusion_config():
    return tiny_config(text=dict(BERT, depth=TEXT_LAYERS, fusion_layers=1), kind='fusion')


def mlm_head_tensors(rng, word_embeddings, names=('weight', 'bias'), decoder=True):
    """BertForMaskedLM's cls.predictions.* (decoder weight tied to the word embeddings when `decoder`)."""
    scale, shift = names
    head = {
        'cls.predictions.transform.dense.weight': rng.normal(0, WIDTH**-0.5, (WIDTH, WIDTH)),
        'cls.predictions.transform.dense.bias': rng.normal(0, 0.1, (WIDTH,)),
        f'cls.predictions.transform.LayerNorm.{scale}': 1 + rng.normal(0, 0.1, (WIDTH,)),
        f'cls.predictions.transform.LayerNorm.{shift}': rng.normal(0, 0.1, (WIDTH,)),
        'cls.predictions.bias': rng.normal(0, 1.0, (VOCAB,)),
    }
    if decoder:
        head['cls.predictions.decoder.weight'] = word_embeddings
    return {k: np.asarray(v, np.float32) for k, v in head.items()}


def numpy_mlm_head(head, word_embeddings, fused, eps=1e-12):
    """transformers' BertLMPredictionHead: dense -> GELU (erf) -> LayerNorm -> x @ word_embeddings.T + bias."""
    t = {k: np.asarray(v, np.float64) for k, v in head.items()}
    name = 'cls.predictions.transform.'
    h = gelu(np.asarray(fused, np.float64) @ t[f'{name}dense.weight'].T + t[f'{name}dense.bias'])
    mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mean) / np.sqrt(var + eps) * t[f'{name}LayerNorm.weight'] + t[f'{name}LayerNorm.bias']
    return h @ np.asarray(word_embeddings, np.float64).T + t['cls.predictions.bias']


def run_mlm(model, params, fused):
    return jax.jit(lambda p, x: model.apply({'params': p}, x, method=lambda m, y: m.mlm_logits(y)))(params, fused)


def bert_base_uncased_like(rng, **head_options):
    """A 3-layer BertForMaskedLM file as the Hub's bert-base-uncased: 'bert.' prefix, LayerNorm gamma/beta,
    cls.predictions.* outside the prefix; returns (the tensors in today's names unprefixed, the file's)."""
    tensors = bert_tensors(rng, VOCAB, POSITIONS, WIDTH, TEXT_LAYERS + 1, MLP)
    head = mlm_head_tensors(rng, tensors['embeddings.word_embeddings.weight'], **head_options)
    legacy = {'LayerNorm.weight': 'LayerNorm.gamma', 'LayerNorm.bias': 'LayerNorm.beta'}

    def old(key):
        for new, name in legacy.items():
            key = key.replace(new, name)
        return key

    file = {**{'bert.' + old(k): v for k, v in tensors.items()}, **{old(k): v for k, v in head.items()}}
    return tensors, head, file


def test_bert_mlm_head_fills_the_fusion_models_and_matches_bert_lm_prediction_head(tmp_path):
    rng = np.random.default_rng(31)
    tensors, head, file = bert_base_uncased_like(rng)
    model, fresh = init_params(fusion_config())
    params, plan = import_into(fresh, write(tmp_path / 'bert', file), 'text', model.config)
    summary = plan.summary('text')
    assert plan.unused == () and 'MLM head from cls.predictions.* (decoder tied to the word embeddings)' in summary
    assert 'untied' not in summary, summary
    # the bias fills the real vocabulary rows; its padding rows (100 -> 128) keep their init, as the word table's
    bias, fresh_bias = np.asarray(params['mlm_bias']), np.asarray(fresh['mlm_bias'])
    assert bias.shape == (128,)
    np.testing.assert_array_equal(bias[:VOCAB], head['cls.predictions.bias'])
    np.testing.assert_array_equal(bias[VOCAB:], fresh_bias[VOCAB:])
    fused = rng.normal(size=(2, 5, WIDTH)).astype(np.float32)
    logits = np.asarray(run_mlm(model, params, fused))
    want = numpy_mlm_head(
        {k.replace('gamma', 'weight').replace('beta', 'bias'): v for k, v in head.items()},
        tensors['embeddings.word_embeddings.weight'],
        fused,
    )
    np.testing.assert_allclose(logits[..., :VOCAB], want, rtol=1e-5, atol=1e-4)
    assert (logits[..., VOCAB:] == MASKED_LOGIT).all()

    # export writes the head back in today's names, without the tied decoder; export -> import -> export: same bytes
    exported = export_tensors(importers.flat(params), model.config, 'bert')
    head_keys = {k for k in exported if k.startswith('cls.')}
    assert head_keys == {k for k in head if k != 'cls.predictions.decoder.weight'}, head_keys
    for key in head_keys:
        assert exported[key].tobytes() == head[key].tobytes(), key
    _, other = init_params(fusion_config(), seed=3)
    again, again_plan = import_into(other, write(tmp_path / 'exported', exported), 'text', model.config)
    assert again_plan.unused == () and again_plan.tied == ()
    twice = export_tensors(importers.flat(again), model.config, 'bert')
    assert set(twice) == set(exported)
    for key, value in exported.items():
        assert twice[key].tobytes() == value.tobytes(), key


def test_an_untied_decoder_is_named_and_a_dual_model_or_a_partial_head_is_handled(tmp_path):
    rng = np.random.default_rng(32)
    _, head, file = bert_base_uncased_like(rng)
    untied = {**file, 'cls.predictions.decoder.weight': file['cls.predictions.decoder.weight'] + 1.0}
    untied['cls.predictions.decoder.bias'] = head['cls.predictions.bias']  # transformers' tied copy: the same
    model, fresh = init_params(fusion_config())
    params, plan = import_into(fresh, write(tmp_path / 'untied', untied), 'text', model.config)
    assert plan.untied == ('cls.predictions.decoder.weight',) and plan.unused == ()
    assert (
        'cls.predictions.decoder.weight differs from the word embeddings (untied): the MLM head decodes with the '
        'tied word embeddings' in plan.summary('text')
    ), plan.summary('text')
    np.testing.assert_array_equal(np.asarray(params['mlm_bias'])[:VOCAB], head['cls.predictions.bias'])
    # a dual model has no MLM head: cls.* is listed as not imported
    dual_model, dual_fresh = init_params(tiny_config(text=dict(BERT, depth=TEXT_LAYERS + 1)))
    _, dual_plan = import_into(dual_fresh, write(tmp_path / 'file', file), 'text', dual_model.config)
    assert dual_plan.unused == tuple(sorted(k for k in file if k.startswith('cls.'))) and not dual_plan.mlm
    # a head with a tensor missing is one sentence
    partial = {k: v for k, v in file.items() if k != 'cls.predictions.transform.dense.bias'}
    with pytest.raises(ImportWeightsError, match='model.text.init') as error:
        header_only(fusion_config(), tmp_path / 'partial', partial)
    assert 'has cls.predictions.transform.dense.weight but no cls.predictions.transform.dense.bias' in str(error.value)
    assert 'name a file with the whole MLM head (cls.predictions.*) or none of it.' in str(error.value)


@pytest.mark.slow  # CI time: interpolation and the MLM head import are checked against numpy by default
def test_albef_tiny_trains_from_a_bert_with_its_mlm_head_and_a_vit_of_another_image_size(tmp_path):
    """configs/albef.py:tiny (momentum, queue, ITM, MLM) at FAST size: a 2-layer BertForMaskedLM (1 text + 1
    fusion layer, MLM head) and a 32-px ViT into the 64-px image tower; 2 of 4 steps (no final evaluation)."""
    rng = np.random.default_rng(33)
    vocab, length, width, mlp = 30522, 24, 32, 64  # FAST_OVERRIDES' towers, shapes_tiny's length
    text = bert_tensors(rng, vocab, length, width, 2, mlp, pooler=False)
    text.update(
        {
            'cls.predictions.transform.dense.weight': rng.normal(0, 0.2, (width, width)).astype(np.float32),
            'cls.predictions.transform.dense.bias': np.zeros(width, np.float32),
            'cls.predictions.transform.LayerNorm.weight': np.ones(width, np.float32),
            'cls.predictions.transform.LayerNorm.bias': np.zeros(width, np.float32),
            'cls.predictions.bias': rng.normal(0, 0.1, vocab).astype(np.float32),
        }
    )
    (tmp_path / 'bert').mkdir()
    save_file(text, str(tmp_path / 'bert' / 'model.safetensors'), metadata={'format': 'pt'})
    vit_file = vit_tensors(rng, FILE_IMAGE, PATCH, width, 1, mlp, pooler=False)
    vit = write(tmp_path / 'vit', vit_file, dict(VIT_HF, num_attention_heads=2))  # says 32 px; the model is 64
    workdir = tmp_path / 'run'
    args = [
        *('--config', f'{REPO}/configs/albef.py:tiny,steps=4', '--workdir', str(workdir), *FAST_OVERRIDES),
        '--stop_at_step=2',  # before the last step: no final evaluation to compile
        *('--config.model.text.pre_norm=False', '--config.model.text.type_vocab_size=2'),
        f'--config.model.text.init={tmp_path / "bert" / "model.safetensors"}',
        *(f'--config.model.vision.init={vit}', '--config.model.vision.ln_eps=1e-12'),
    ]
    result = run_cli('vlp_jax.train', args)
    out = result.stdout + result.stderr
    assert 'model.vision.init: imported' in out and 'interpolated from 4x4 to 8x8 (bicubic)' in out, out[-3000:]
    assert 'model.text.init: imported' in out and 'MLM head from cls.predictions.*' in out, out[-3000:]
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['2'], out[-3000:]
