"""The papers' recipes (configs/albef.py, grit_vlp.py, mafa.py, srcl_albef.py), full size and `:tiny`.

Full size: the params are built under `jax.eval_shape` (shapes only, nothing allocated)
and counted per part against ALBEF's PyTorch model (ViT-B/16 at 256 px + BERT-base with
cross-attention in its last 6 layers, projections, ITM and MLM heads; the momentum copies
are not counted, as in ALBEF's ~210M). Every config passes `validate` on 8 devices; the
tiny ones on 1 as well. Run with `-s` to see the table.
"""

import os

import flax.linen as nn
import jax
import pytest
from flax import traverse_util

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError
from vlp_jax.config_files import load_config_file
from vlp_jax.state import create_model, dummy_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')
REFERENCE = '/placeholder/reference'  # full-size SRCL and MAFA need a frozen checkpoint's path (not opened here)
FULL = ('albef.py', 'grit_vlp.py', f'mafa.py:reference={REFERENCE}', f'srcl_albef.py:reference={REFERENCE}')
TINY = ('albef.py:tiny', 'grit_vlp.py:tiny', 'mafa.py:tiny', 'srcl_albef.py:tiny', 'shapes_albef_reference.py')

# ALBEF's PyTorch model (Pretrain.py's ALBEF without the *_m momentum copies), by part.
D, MLP, VOCAB, HEADS_OUT, EMBED = 768, 3072, 30522, 2, 256
DENSE = D * D + D
BLOCK = 4 * DENSE + (D * MLP + MLP) + (MLP * D + D) + 2 * 2 * D  # q, k, v, out; fc1, fc2; 2 LayerNorms
XATTN = 4 * DENSE + 2 * D  # fusion layers' cross-attention + its LayerNorm
LN = 2 * D
ALBEF = {
    # patch embedding, [CLS], 1 + 16 * 16 positions, 12 blocks, final LayerNorm
    'vision': 16 * 16 * 3 * D + D + D + (1 + 16 * 16) * D + 12 * BLOCK + LN,
    # word, 512 positions, 2 token types, LayerNorm (BERT is post-LN: no final norm)
    'text embeddings': VOCAB * D + 512 * D + 2 * D + LN,
    'text layers': 6 * BLOCK,
    'fusion layers': 6 * (BLOCK + XATTN),
    'projections': 2 * (D * EMBED + EMBED),
    # ITM Linear(768, 2); MLM transform (dense + LayerNorm) and decoder bias, decoder tied to the word embeddings
    'heads': (D * HEADS_OUT + HEADS_OUT) + DENSE + LN + VOCAB,
    'scalars': 1,  # temperature
}
ALBEF_TOTAL = sum(ALBEF.values())  # 209,937,725
# vlp_jax's differences, all in the text tower: 25 positions (ALBEF truncates captions to 25
# tokens; BERT keeps 512), no token-type embeddings, pre-LN layers with a final LayerNorm after
# the text and after the fusion layers; SigLIP's bias beside the temperature; and the word table
# (and MLM decoder bias) padded from 30,522 to 30,592 rows, a multiple of 128 for tensor parallelism.
PADDED_VOCAB = 30_592
EXPECTED = {
    **ALBEF,
    'text embeddings': PADDED_VOCAB * D + 25 * D + LN,
    'heads': (D * HEADS_OUT + HEADS_OUT) + DENSE + LN + PADDED_VOCAB,
    'text layers': 6 * BLOCK + LN,
    'fusion layers': 6 * (BLOCK + XATTN) + LN,
    'scalars': 2,
}
PARTS = {  # top-level param path prefix -> part
    'vision': 'vision',
    'text/token_embed': 'text embeddings',
    'text/pos_embedding': 'text embeddings',
    'text/ln_embed': 'text embeddings',
    'text/encoder': 'text layers',
    'text/fusion': 'fusion layers',
    'image_proj': 'projections',
    'text_proj': 'projections',
    'itm_head': 'heads',
    'mlm_dense': 'heads',
    'mlm_norm': 'heads',
    'mlm_bias': 'heads',
    'log_temperature': 'scalars',
    'sigmoid_bias': 'scalars',
}


def load(spec):
    return load_config_file(os.path.join(CONFIGS, spec))


def count_by_part(config):
    """Param counts per part of the model `config` builds, from shapes alone (jax.eval_shape)."""
    model = create_model(config)
    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *dummy_inputs(model.config)))['params']
    counts = dict.fromkeys(EXPECTED, 0)
    for path, leaf in traverse_util.flatten_dict(abstract, sep='/').items():
        prefix = next(p for p in PARTS if path == p or path.startswith(p + '/'))
        counts[PARTS[prefix]] += int(leaf.size)
    return counts


@pytest.mark.parametrize('spec', FULL)
def test_full_size_has_albef_parameter_count(spec):
    config = load(spec)
    assert config.batch_size == 512 and config.model.kind == 'fusion'
    assert (config.model.text.depth, config.model.text.fusion_layers) == (6, 6)
    counts = count_by_part(config)
    total = sum(counts.values())
    print(f'\n{spec}: {total:,} params (ALBEF {ALBEF_TOTAL:,}, {100 * (total / ALBEF_TOTAL - 1):+.2f}%)')
    for part, n in counts.items():
        print(f'  {part:16s} {n:>12,}   ALBEF {ALBEF[part]:>12,}')
    assert counts == EXPECTED
    assert abs(total / ALBEF_TOTAL - 1) < 0.03


@pytest.mark.parametrize('spec', FULL + TINY)
def test_validates_on_8_devices(spec):
    validate(load(spec), 8)


@pytest.mark.parametrize('spec', TINY)
def test_tiny_validates_on_1_device(spec):
    validate(load(spec), 1)


def test_tiny_recipes_share_the_reference_architecture():
    reference = load('shapes_albef_reference.py')
    shapes = reference.data.shapes
    assert reference.model.kind == 'fusion' and shapes.detail == 'fine' and shapes.caption_noise == 0
    for spec in TINY:
        config = load(spec)
        assert config.model == reference.model, spec
        assert config.batch_size == 128 and config.eval.rerank_k == 16, spec
    assert load('mafa.py:tiny').loss.cosmo.reference_checkpoint == 'workdirs/shapes_albef_reference'
    assert load('srcl_albef.py:tiny').loss.srcl.reference_checkpoint == 'workdirs/shapes_albef_reference'


def test_args():
    assert load('albef.py:tiny').total_steps == 600 and load('albef.py:tiny').loss.momentum.queue_size == 1280
    assert load('grit_vlp.py:steps=300,tiny').total_steps == 300
    assert load('albef.py').total_steps == 30 * 7812 and load('grit_vlp.py').total_steps == 20 * 7812
    mafa = load('mafa.py:tiny,steps=200,reference=workdirs/other')
    assert (mafa.total_steps, mafa.loss.cosmo.reference_checkpoint) == (200, 'workdirs/other')
    assert load('mafa.py').loss.cosmo.reference_checkpoint == ''  # full size: the path is required
    assert load('srcl_albef.py:reference=/ckpt/ref').loss.srcl.reference_checkpoint == '/ckpt/ref'
    with pytest.raises(ConfigError, match="'workdirs/x' is unknown"):
        load('albef.py:tiny,workdirs/x')
    with pytest.raises(ConfigError, match="'a' is unknown"):
        load('mafa.py:tiny,a,b')
    with pytest.raises(ConfigError, match='steps=.*must be an integer'):
        load('grit_vlp.py:steps=many')
