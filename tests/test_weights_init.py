"""model.text.init / model.vision.init through a run's setup (1 and 8 devices), the train CLI's one-line
refusal, and the export CLI on a checkpoint (generated BERT file -> run -> checkpoint -> the same bytes)."""

import json
import os
import textwrap

import jax
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, make_config, run_cli, run_on_devices
from hf_numpy import bert_tensors
from safetensors.numpy import load_file, save_file

from vlp_jax import setup as setup_lib
from vlp_jax.checkpointing import Checkpointer
from vlp_jax.models import importers
from vlp_jax.models.vlp import model_config_from_dict

WIDTH, DEPTH, HEADS, MLP, VOCAB, LENGTH = 32, 1, 2, 64, 30522, 24  # FAST_OVERRIDES' text tower, shapes_tiny's length
BERT_OPTIONS = (
    '--config.model.text.pre_norm=False',
    '--config.model.text.type_vocab_size=2',
    '--config.model.text.pool=mean',
)


def bert_file(directory):
    """A BertModel file (no pooler) sized like FAST_OVERRIDES' text tower, with its config.json."""
    tensors = bert_tensors(np.random.default_rng(7), VOCAB, LENGTH, WIDTH, DEPTH, MLP, pooler=False)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'model.safetensors')
    save_file(tensors, path, metadata={'format': 'pt'})
    with open(os.path.join(directory, 'config.json'), 'w') as handle:
        json.dump({'model_type': 'bert', 'num_attention_heads': HEADS, 'hidden_size': WIDTH}, handle)
    return path, tensors


def assert_text_tower_is(params, tensors):
    """A few of the tower's params against the file, by transforms written here (not the importer's)."""
    text = {k: np.asarray(v) for k, v in importers.flat(jax.device_get(params)).items() if k.startswith('text/')}
    np.testing.assert_array_equal(
        text['text/token_embed/embedding'][:VOCAB], tensors['embeddings.word_embeddings.weight']
    )
    np.testing.assert_array_equal(text['text/pos_embedding'], tensors['embeddings.position_embeddings.weight'])
    np.testing.assert_array_equal(text['text/type_embedding'], tensors['embeddings.token_type_embeddings.weight'])
    query = tensors['encoder.layer.0.attention.self.query.weight']
    np.testing.assert_array_equal(text['text/encoder/block_0/attn/query/kernel'].reshape(WIDTH, WIDTH).T, query)
    out = tensors['encoder.layer.0.attention.output.dense.weight']
    np.testing.assert_array_equal(text['text/encoder/block_0/attn/out/kernel'].reshape(WIDTH, WIDTH).T, out)
    np.testing.assert_array_equal(
        text['text/encoder/block_0/mlp/fc1/kernel'].T, tensors['encoder.layer.0.intermediate.dense.weight']
    )
    np.testing.assert_array_equal(
        text['text/encoder/block_0/ln_mlp/scale'], tensors['encoder.layer.0.output.LayerNorm.weight']
    )


@pytest.fixture(scope='module')
def imported_run(tmp_path_factory):
    """A new run's state with model.text.init set, saved as a run saves it."""
    root = tmp_path_factory.mktemp('weights')
    path, tensors = bert_file(str(root / 'bert'))
    config = make_config(*BERT_OPTIONS, f'--config.model.text.init={path}', devices=1)
    state = setup_lib.build(config, jax.devices()[:1]).init_state()
    workdir = root / 'run'
    with Checkpointer(workdir / 'checkpoints', keep=1) as checkpointer:
        saved = state  # the random sampler has no state to save beside it
        checkpointer.save(1, saved, {'pipeline': {'next_step': 1, 'seed': 0}, 'model': config.model.to_dict()})
    return workdir, tensors, jax.device_get(state['params']), config


def test_a_new_runs_setup_imports_the_text_tower(imported_run):
    _, tensors, params, _ = imported_run
    assert_text_tower_is(params, tensors)


EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    from test_weights_init import assert_text_tower_is, bert_file
    from vlp_jax import setup as setup_lib
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file
    from vlp_jax.checks import validate
    from vlp_jax.models import importers
    assert jax.device_count() == 8
    path, tensors = bert_file(sys.argv[1])
    config = load_config_file(sys.argv[2])
    apply_overrides(config, split_overrides(sys.argv[3:] + [f'--config.model.text.init={path}'])[1])
    validate(config, 8)
    run_setup = setup_lib.build(config)
    params = run_setup.init_state()['params']
    assert_text_tower_is(params, tensors)
    want = importers.flat(run_setup.shardings['params'])
    for key, leaf in importers.flat(params).items():
        assert leaf.sharding.is_equivalent_to(want[key], leaf.ndim), (key, leaf.sharding, want[key])
    table = params['text']['token_embed']['embedding']
    assert not table.sharding.is_fully_replicated  # vocab rows split over 'model', width over 'fsdp'
    print('EIGHT_OK')
""")


def test_the_import_lands_in_the_param_shardings_on_eight_devices(tmp_path):
    mesh = (
        '--config.mesh.data=1',
        '--config.mesh.fsdp=4',
        '--config.mesh.model=2',
        "--config.mesh.rules=(('batch',('data','fsdp')),('embed','fsdp'),('mlp','model'),('heads','model'),"
        "('kv',None),('vocab','model'),('length',None),('patch',None),('proj',None))",
    )
    result = run_on_devices(EIGHT_DEVICE_SCRIPT, tmp_path / 'bert', TINY_CONFIG, *FAST_OVERRIDES, *BERT_OPTIONS, *mesh)
    assert result.returncode == 0 and 'EIGHT_OK' in result.stdout, result.stderr[-3000:]


def test_a_file_that_does_not_fit_stops_train_with_one_line_and_writes_nothing(tmp_path):
    path, _ = bert_file(str(tmp_path / 'bert'))
    workdir = tmp_path / 'run'
    result = run_cli(
        'vlp_jax.train',
        [
            '--config',
            f'{TINY_CONFIG}:steps=2',
            '--workdir',
            str(workdir),
            *FAST_OVERRIDES,
            *BERT_OPTIONS,
            '--config.model.text.width=64',
            f'--config.model.text.init={path}',
        ],
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip() and 'WARNING' not in line]
    assert result.returncode == 2 and not workdir.exists(), result.stderr[-2000:]
    assert 'model.text.init' in lines[-1] and 'set model.text.width' in lines[-1], lines


def test_export_cli_gives_back_the_imported_bytes_and_refuses_a_layout_it_cannot_write(imported_run, tmp_path):
    workdir, tensors, params, config = imported_run
    out = tmp_path / 'bert_out'
    summary = run_cli('vlp_jax.models.importers', ['export', str(workdir), str(out), '--layout', 'bert']).stdout
    assert f'(bert layout: transformers BertModel) to {out}/model.safetensors' in summary, summary
    assert f'with config.json, the tokenizer (max_length {LENGTH})' in summary, summary
    from transformers import AutoTokenizer  # the run's tokenizer travels with its text tower

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer(['a red circle'], padding='max_length', truncation=True)['input_ids'][0][:6] == [
        101,
        1037,
        2417,
        4418,
        102,
        0,
    ]
    assert len(tokenizer(['word ' * 40], truncation=True)['input_ids'][0]) == LENGTH
    exported = load_file(str(out / 'model.safetensors'))
    assert set(exported) == set(tensors)
    for key, value in tensors.items():
        assert exported[key].tobytes() == value.tobytes(), key
    hf_config = json.loads((out / 'config.json').read_text())
    assert hf_config['num_attention_heads'] == HEADS and hf_config['max_position_embeddings'] == LENGTH
    # vlp_jax's own image tower is HF ViT's layout: exported, then imported back unchanged
    run_cli(
        'vlp_jax.models.importers',
        ['export', str(workdir / 'checkpoints' / '1'), str(tmp_path / 'vit'), '--layout', 'vit'],
    )
    vision = {k: v for k, v in importers.flat(params).items() if k.startswith('vision/')}
    reimported, _ = importers.import_into(
        {'vision': jax.tree.map(np.zeros_like, params['vision'])},
        str(tmp_path / 'vit' / 'model.safetensors'),
        'vision',
        model_config_from_dict(config.model),
    )
    for key, value in vision.items():
        np.testing.assert_array_equal(importers.flat(reimported)[key], value, err_msg=key)
    refused = run_cli(
        'vlp_jax.models.importers', ['export', str(workdir), str(tmp_path / 'clip'), '--layout', 'clip'], check=False
    )
    assert refused.returncode == 2 and 'model.text.pre_norm=True' in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / 'clip').exists()
