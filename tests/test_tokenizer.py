"""The shipped WordPiece vocabulary is the real BERT-uncased one and pads/masks correctly."""

import numpy as np
import pytest

from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE, Tokenizer, shared_tokenizer


def test_real_wordpiece_ids():
    tok = shared_tokenizer(12)
    out = tok(['a small crimson disc at the top left', 'a red circle'])
    assert tok.vocab_size == BERT_VOCAB_SIZE
    # Known bert-base-uncased ids: [CLS]=101 a=1037 small=2235 crimson=11466 [SEP]=102.
    assert out['text_ids'][0, :4].tolist() == [101, 1037, 2235, 11466]
    assert out['text_ids'].dtype == np.int32 and out['text_ids'].shape == (2, 12)
    assert out['text_mask'][1].tolist() == [1] * 5 + [0] * 7
    assert out['text_ids'][1, 4] == 102 and (out['text_ids'][1, 5:] == tok.pad_id).all()


def test_truncates_long_captions():
    tok = shared_tokenizer(6)
    out = tok(['one two three four five six seven eight'])
    assert out['text_ids'].shape == (1, 6) and out['text_mask'].sum() == 6


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='vocab.txt'):
        Tokenizer(str(tmp_path), 8)
