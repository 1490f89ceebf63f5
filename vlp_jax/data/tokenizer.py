"""WordPiece tokenisation through transformers, from vocabulary files only (no hub)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from vlp_jax.config.core import BERT_VOCAB_SIZE  # noqa: F401  (re-exported: the shipped vocabulary's size)

SHIPPED_VOCAB_DIR = os.path.join(os.path.dirname(__file__), 'vocab', 'bert-base-uncased')
BERT_CLS_ID = 101  # [CLS] in the standard uncased vocabulary; checks the file really is that vocabulary
BERT_SEP_ID, BERT_PAD_ID, BERT_MASK_ID = 102, 0, 103  # the other ids MLM needs, checked the same way


class Tokenizer:
    """Turns captions into fixed-length `text_ids` / `text_mask` int32 arrays."""

    def __init__(self, vocab_dir: str = SHIPPED_VOCAB_DIR, max_len: int = 32):
        from transformers import BertTokenizerFast  # data-side import only: the core never needs it

        if not os.path.isfile(os.path.join(vocab_dir, 'vocab.txt')):
            raise FileNotFoundError(
                f'tokenizer vocabulary {vocab_dir}/vocab.txt does not exist; '
                'point data.vocab_dir at a folder holding a BERT vocab.txt.'
            )
        self._tokenizer = BertTokenizerFast.from_pretrained(vocab_dir, local_files_only=True)
        self.max_len = max_len
        self.vocab_size = len(self._tokenizer)
        self.pad_id = self._tokenizer.pad_token_id
        self.cls_id = self._tokenizer.cls_token_id
        self.sep_id = self._tokenizer.sep_token_id
        self.mask_id = self._tokenizer.mask_token_id

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encoded = self._tokenizer(
            list(texts),
            padding='max_length',
            truncation=True,
            max_length=self.max_len,
            return_attention_mask=True,
            return_token_type_ids=False,
        )
        return {
            'text_ids': np.asarray(encoded['input_ids'], dtype=np.int32),
            'text_mask': np.asarray(encoded['attention_mask'], dtype=np.int32),
        }

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True)


@functools.lru_cache(maxsize=4)
def shared_tokenizer(max_len: int, vocab_dir: str = SHIPPED_VOCAB_DIR) -> Tokenizer:
    """One tokenizer per (vocab, length) per process: loading the vocabulary costs ~0.1 s."""
    tokenizer = Tokenizer(vocab_dir, max_len)
    shipped_ids = (BERT_CLS_ID, BERT_SEP_ID, BERT_PAD_ID, BERT_MASK_ID)
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id) == shipped_ids or (
        vocab_dir != SHIPPED_VOCAB_DIR
    ), 'shipped vocabulary is not BERT uncased'
    return tokenizer
