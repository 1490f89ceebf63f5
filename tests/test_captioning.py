"""Captioning: the objective's config checks, the evaluator's text cut at [SEP], and (slow) a tiny fine-tune that
evaluates BLEU-4/CIDEr, writes its captions as JSON lines, and `vlp_jax.generate` captioning photos."""

import json
import os

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, read_metrics, run_cli

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError
from vlp_jax.config_files import load_config_file
from vlp_jax.data.tokenizer import BERT_PAD_ID, BERT_SEP_ID, shared_tokenizer
from vlp_jax.evaluators.captioning import caption_texts

CONFIG = os.path.join(REPO, 'configs', 'finetune', 'captioning.py')


def test_generated_ids_become_text_up_to_sep():
    words = shared_tokenizer(16)(['a red circle'])['text_ids'][0][1:4]
    tokens = np.array([[*words, BERT_SEP_ID, 2000, BERT_PAD_ID], [*words, 2000, 2001, 2002]])
    texts = caption_texts(tokens, 'a picture of ', 16)
    assert texts[0] == 'a red circle'
    assert texts[1].startswith('a red circle ') and len(texts[1].split()) == 6


def test_the_tiny_config_validates_and_refuses_a_regulator_or_no_decoder():
    config = load_config_file(CONFIG + ':tiny,pretrained=')
    validate(config, 1)
    assert config.loss.lm.prompt == 'a picture of ' and config.eval.sets == ('captioning:shapes',)
    for key, value, message in [
        ('regulators', ('srcl',), 'no contrastive loss'),
        ('decoder', 'none', 'needs the decoder'),
    ]:
        bad = load_config_file(CONFIG + ':tiny,pretrained=')
        if key == 'decoder':
            bad.model.decoder.layout = value
        else:
            bad.loss.regulators = value
        with pytest.raises(ConfigError, match=message):
            validate(bad, 1)


@pytest.mark.slow
def test_tiny_captioning_fine_tune_evaluates_writes_captions_and_generates(tmp_path):
    out = tmp_path / 'captions.jsonl'
    args = [
        '--config',
        CONFIG + ':tiny,steps=6,pretrained=',
        '--workdir',
        str(tmp_path / 'run'),
        *FAST_OVERRIDES,
        '--config.model.text.fusion_layers=1',
        '--config.eval_every=6',
        '--config.checkpoint_every=6',
        '--config.eval.retrieval_size=8',
        '--config.eval.captioning.max_len=6',
        f'--config.eval.captioning.output={out}',
    ]
    run_cli('vlp_jax.train', args)
    last = [r for r in read_metrics(tmp_path / 'run') if 'eval/captioning/bleu4' in r][-1]
    assert 0 <= last['eval/captioning/bleu4'] <= 1 and last['eval/captioning/cider'] >= 0
    assert 'train/lm' in read_metrics(tmp_path / 'run')[0]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line['image_id'] for line in lines] == list(range(8))
    from vlp_jax.data.example_photos import photo_captions, skimage_data_dir

    photos = [os.path.join(skimage_data_dir(), p['image']) for p in photo_captions()[:2]]
    # space-separated, as a shell glob gives them (absl alone would keep the first and drop the rest)
    printed = run_cli('vlp_jax.generate', ['--workdir', str(tmp_path / 'run'), '--images', *photos])
    rows = [json.loads(line) for line in printed.stdout.splitlines() if line.startswith('{')]
    assert [r['image'] for r in rows] == photos and all(isinstance(r['caption'], str) for r in rows)
