"""Language modelling with the image-grounded decoder: its inputs and targets, and BLIP's smoothed loss.

Config group `loss.lm` (objectives 'blip', 'captioning', 'vqa'). The decoder reads the caption with its
first token ([CLS]) replaced by the start token (models/decoder_config.py DECODER_BOS_ID, BLIP's [DEC]) and
predicts each next token, [SEP] included; padding is never a target. A prompt (BLIP's captioning: 'a
picture of ') is written after the start token and masked out of the loss ("decoder_targets[:,
:self.prompt_length] = -100"). The loss is BLIP med.py's BertLMHeadModel: "CrossEntropyLoss(reduction=
reduction, label_smoothing=0.1)" over the vocabulary, the mean over the target tokens of a batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vlp_jax.config import in_range, key
from vlp_jax.data.tokenizer import BERT_PAD_ID
from vlp_jax.models.decoder_config import DECODER_BOS_ID


@dataclasses.dataclass(frozen=True)
class LmSettings:
    """The decoder's language-modelling loss (BLIP's LM, captioning, VQA answers)."""

    label_smoothing: float = key(
        0.1, "label smoothing of the word targets (BLIP's med.py: 0.1; ALBEF's VQA: 0)", check=in_range(0, 1)
    )
    prompt: str = key(
        '', "text written before every caption and masked out of the loss (BLIP's captioning: 'a picture of ')"
    )


class LmBatch(NamedTuple):
    """The decoder's inputs and what it is scored on, all [N, L] (the targets of position t are token t + 1)."""

    inputs: jax.Array  # int32 ids: the start token, the prompt, the caption
    mask: jax.Array  # int32 1 = a real input token
    targets: jax.Array  # int32 the next token (position L - 1: padding)
    weights: jax.Array  # float32 1 where the target is scored (a caption token or [SEP], not the prompt)


def decoder_batch(text_ids: jax.Array, text_mask: jax.Array, prompt_ids: tuple[int, ...] = ()) -> LmBatch:
    """Tokenised captions ([CLS] caption [SEP] [PAD]...) -> the decoder's batch: [BOS] prompt caption [SEP], the
    prompt's tokens unscored and the caption cut where the prompt pushes it past the length."""
    n, length = text_ids.shape
    count = len(prompt_ids)
    assert count < length - 1, 'the checks refuse a prompt that leaves no room for a caption'
    head = jnp.broadcast_to(jnp.asarray((DECODER_BOS_ID, *prompt_ids), text_ids.dtype), (n, count + 1))
    inputs = jnp.concatenate([head, text_ids[:, 1 : length - count]], axis=1)
    mask = jnp.concatenate([jnp.ones_like(head, text_mask.dtype), text_mask[:, 1 : length - count]], axis=1)
    pad = jnp.full((n, 1), BERT_PAD_ID, inputs.dtype)
    targets = jnp.concatenate([inputs[:, 1:], pad], axis=1)
    scored = jnp.concatenate([mask[:, 1:], jnp.zeros((n, 1), mask.dtype)], axis=1) > 0
    scored = scored & (jnp.arange(length) >= count)[None]  # target t is token t + 1: the prompt's are t < count
    return LmBatch(inputs, mask, targets, scored.astype(jnp.float32))


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, smoothing: float, vocab_size: int) -> jax.Array:
    """Per-position loss [...]: torch's CrossEntropyLoss(label_smoothing=eps) over the first `vocab_size` logits,
    (1 - eps) * -log p(target) + eps * mean_k -log p(k) (the padded rows of the word table are no class)."""
    log_p = jax.nn.log_softmax(logits[..., :vocab_size].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    if not smoothing:
        return nll
    return (1.0 - smoothing) * nll - smoothing * jnp.mean(log_p, axis=-1)
