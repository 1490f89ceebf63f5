"""The pieces of ALBEF's ITM and MLM that do not need the model: masking tokens, choosing ITM negatives.

MLM (BERT, as ALBEF): each maskable token is selected with probability `mask_ratio`; a
selected token becomes [MASK] with probability 0.8, a random word with 0.1, and stays
itself with 0.1; it is predicted either way. [CLS] and padding are never selected; [SEP]
may be, as in the official ALBEF / GRIT-VLP / MAFA `mask()` ("masked_indices[input_ids ==
self.tokenizer.pad_token_id] = False; masked_indices[input_ids == self.tokenizer.cls_token_id]
= False", nothing for [SEP]).
With `max_predictions` K (BERT's max_predictions_per_seq), a caption keeps at most K of its
selected tokens, those with the smallest selection draws (so every selected position is
equally likely to be kept); the rest stay unmasked and unpredicted. The MLM head then scores
K gathered positions per caption instead of every position: with 15% masking of 24-token
captions that is 11 word-logit rows instead of 24. `auto_max_predictions` picks the smallest K
a caption exceeds with probability below MAX_PREDICTIONS_OVERFLOW, so the cap almost never acts
(the objective logs how often it did: `train/mlm_capped`).

ITM negatives (docs/methods.md): per anchor one in-batch negative, never the positive, either
sampled as ALBEF does ('sample': weights softmax(sim / temp) over the row, the learned ITC
temperature, diagonal zeroed, `negative_sampling_logits`) or the most similar one (GRIT-VLP,
'hardest'). Both run on the global [B, B] similarities, so every device agrees on the choice.

Pairs are index arrays into the batch (image row, text row, label, weight) with static
sizes: 3B for ALBEF/GRIT-VLP's ITM, 5B and 3B MLM for MAFA, whose pairs sit in fixed slots
with weight 0 where the official code forms no pair (nothing converted, no negative).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

MASK_PROBABILITY, RANDOM_PROBABILITY = 0.8, 0.1  # of selected tokens; the remaining 0.1 keep their id
NEGATIVE_CHOICES = ('sample', 'hardest', 'uniform')
MAX_PREDICTIONS_AUTO, MAX_PREDICTIONS_ALL = -1, 0  # loss.mlm.max_predictions: derived bound / every position
MAX_PREDICTIONS_OVERFLOW = 1e-4  # auto: P(a caption draws more than K tokens) stays below this


def auto_max_predictions(maskable: int, mask_ratio: float, overflow: float = MAX_PREDICTIONS_OVERFLOW) -> int:
    """The smallest K with P(Binomial(maskable, mask_ratio) > K) < overflow."""
    assert maskable >= 0 and 0.0 < mask_ratio < 1.0, (maskable, mask_ratio)
    tail = 1.0  # P(X > k - 1), for k = 0 first
    for k in range(maskable + 1):
        tail -= math.comb(maskable, k) * mask_ratio**k * (1.0 - mask_ratio) ** (maskable - k)
        if tail < overflow:
            return k
    return maskable


def resolve_max_predictions(setting: int, max_len: int, mask_ratio: float) -> int:
    """loss.mlm.max_predictions -> K per caption, or 0 when every position is scored (K would be >= max_len).

    A caption of max_len tokens has at most max_len - 1 maskable ones ([CLS] never is; [SEP] may be).
    """
    maskable = max(max_len - 1, 0)
    k = auto_max_predictions(maskable, mask_ratio) if setting == MAX_PREDICTIONS_AUTO else int(setting)
    return 0 if k <= 0 or k >= max_len else max(k, 1)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids the masking must know: which tokens are never selected ([CLS], [PAD]), what a mask is, how many
    words exist. `sep_id` is kept for callers that need it; the masking may select [SEP] (official rule)."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    vocab_size: int


def selection_draws(
    rng: jax.Array, text_ids: jax.Array, text_mask: jax.Array, mask_ratio: float, special: SpecialTokens
) -> tuple[jax.Array, jax.Array]:
    """(bool [B, L] positions drawn for prediction before any cap, float [B, L] their uniform draws).

    Every real token but [CLS] is maskable, [SEP] included, as the official `mask()` (it zeroes only
    the pad and cls positions of its Bernoulli draw).
    """
    select_key = jax.random.split(rng, 3)[0]
    maskable = (text_mask > 0) & (text_ids != special.cls_id) & (text_ids != special.pad_id)
    draws = jax.random.uniform(select_key, text_ids.shape)  # the draws jax.random.bernoulli would compare
    return maskable & (draws < mask_ratio), draws


def mask_tokens(
    rng: jax.Array,
    text_ids: jax.Array,
    text_mask: jax.Array,
    mask_ratio: float,
    special: SpecialTokens,
    max_predictions: int = MAX_PREDICTIONS_ALL,
) -> tuple[jax.Array, jax.Array]:
    """(input ids with BERT's 80/10/10 corruption, bool [B, L] which positions are predicted).

    `max_predictions` K > 0 keeps at most K selected positions per caption (the smallest draws).
    """
    _, action_key, word_key = jax.random.split(rng, 3)
    selected, draws = selection_draws(rng, text_ids, text_mask, mask_ratio, special)
    if 0 < max_predictions < text_ids.shape[1]:
        _, kept = jax.lax.top_k(jnp.where(selected, -draws, -jnp.inf), max_predictions)  # [B, K]
        keep = jnp.zeros_like(selected).at[jnp.arange(selected.shape[0])[:, None], kept].set(True)
        selected = selected & keep
    action = jax.random.uniform(action_key, text_ids.shape)
    random_words = jax.random.randint(word_key, text_ids.shape, 0, special.vocab_size, dtype=text_ids.dtype)
    corrupted = jnp.where(action < MASK_PROBABILITY, special.mask_id, text_ids)
    corrupted = jnp.where(
        (action >= MASK_PROBABILITY) & (action < MASK_PROBABILITY + RANDOM_PROBABILITY), random_words, corrupted
    )
    return jnp.where(selected, corrupted, text_ids), selected


def prediction_positions(predicted: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """(int32 [P, count] positions, bool [P, count] valid): the predicted positions of each row first,
    in position order, then filler (position 0, not valid). Rows must hold at most `count` predictions."""
    order = jnp.argsort(~predicted, axis=1, stable=True)[:, :count].astype(jnp.int32)
    return order, jnp.take_along_axis(predicted, order, axis=1)


def negative_sampling_logits(similarity: jax.Array, logit_scale: jax.Array | float, floor: float = 0.0) -> jax.Array:
    """[B, B] log of ALBEF's negative-sampling weights (unnormalised; -inf on the diagonal).

    ALBEF (models/model_pretrain.py): "weights_i2t = F.softmax(sim_i2t[:,:bs],dim=1)",
    "weights_i2t.fill_diagonal_(0)", then "torch.multinomial(weights_i2t[b], 1)", where "sim_i2t =
    image_feat @ text_feat_all / self.temp": the ITC logits at the learned temperature (1 / logit_scale),
    not plain cosines (temperature 1 samples nearly uniformly). The softmax's normaliser includes the
    diagonal; with `floor` = 0 (ALBEF) that cancels in multinomial's renormalisation. `floor` > 0 is
    BLIP's variant (models/blip_pretrain.py: "F.softmax(sim_i2t[:,:bs],dim=1)+1e-4"), where it does not.
    """
    n = similarity.shape[0]
    assert similarity.shape == (n, n) and n >= 2, similarity.shape
    logits = jax.lax.stop_gradient(similarity).astype(jnp.float32) * jax.lax.stop_gradient(
        jnp.asarray(logit_scale, jnp.float32)
    )
    log_weights = jax.nn.log_softmax(logits, axis=1)
    if floor:
        log_weights = jnp.logaddexp(log_weights, math.log(floor))
    return jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, log_weights)


def choose_negatives(
    rng: jax.Array | None, similarity: jax.Array, choice: str, logit_scale: jax.Array | float, floor: float = 0.0
) -> jax.Array:
    """[B] int32: for each row (anchor) of `similarity` [B, B] a column that is not its own (the diagonal).

    'sample' draws it as ALBEF, with weights `negative_sampling_logits(similarity, logit_scale, floor)`
    (needs `rng`); 'hardest' takes the row's largest negative (GRIT-VLP's top-1; the scale is irrelevant);
    'uniform' draws any other column with equal probability (needs `rng`; the similarities are ignored).
    """
    assert choice in NEGATIVE_CHOICES, choice
    n = similarity.shape[0]
    assert similarity.shape == (n, n) and n >= 2, similarity.shape
    if choice == 'hardest':
        negatives = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, jax.lax.stop_gradient(similarity).astype(jnp.float32))
        return jnp.argmax(negatives, axis=1).astype(jnp.int32)
    assert rng is not None, f'choice {choice!r} needs an rng'
    if choice == 'uniform':
        logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, jnp.zeros((n, n), jnp.float32))
        return jax.random.categorical(rng, logits, axis=1).astype(jnp.int32)
    logits = negative_sampling_logits(similarity, logit_scale, floor)
    return jax.random.categorical(rng, logits, axis=1).astype(jnp.int32)


class Pairs(NamedTuple):
    """(image row, text row) pairs of the batch with their ITM label and weight (0 = an empty slot)."""

    image: jax.Array  # [P] int32
    text: jax.Array  # [P] int32
    label: jax.Array  # [P] int32: 1 match, 0 not
    weight: jax.Array  # [P] float32


def itm_pairs(negative_image: jax.Array, negative_text: jax.Array) -> Pairs:
    """ALBEF's 3B ITM pairs: the positives, each text with its negative image, each image with its negative text."""
    n = negative_image.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    return Pairs(
        image=jnp.concatenate([rows, negative_image.astype(jnp.int32), rows]),
        text=jnp.concatenate([rows, rows, negative_text.astype(jnp.int32)]),
        label=jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((2 * n,), jnp.int32)]),
        weight=jnp.ones((3 * n,), jnp.float32),
    )


def caption_pairs(n: int) -> Pairs:
    """Each caption with its own image: ALBEF's MLM pairs."""
    rows = jnp.arange(n, dtype=jnp.int32)
    return Pairs(rows, rows, jnp.ones((n,), jnp.int32), jnp.ones((n,), jnp.float32))


def mafa_pairs(
    i2t: Mapping[str, jax.Array],
    t2i: Mapping[str, jax.Array],
    high: float,
    low: float,
    converted_negative: bool = False,
) -> tuple[Pairs, Pairs]:
    """MAFA's ITM pairs (5B slots) and MLM pairs (3B) from COSMO's per-direction mining (regulators.cosmo_regulation).

    For image i (i2t: j1, j2 are texts) and text i (t2i: j1, j2 are images), q = the discriminator's
    score of (anchor, j1), with the official strict inequalities (MAFA models/model_pretrain_MAFA.py):
    q < low -> (anchor, j1) negative ("text_embeds[neg_idxs_i2t][itm_neg_wrtimg_score < low_threshold]");
    low < q < high -> (anchor, j2) negative ("(itm_neg_wrtimg_score > low_threshold)*(itm_neg_wrtimg_score
    < high_threshold)"); q > high -> (anchor, j1) an extra ITM positive and an extra MLM pair, and NO
    negative; q exactly at low or at high -> no ITM pair. Slots without a pair have weight 0.
    `converted_negative` (not official; this codebase's earlier choice) also gives a converted anchor
    the negative (anchor, j2), keeping one negative per converted anchor. Info keys read: 'hardest',
    'second', 'hardest_score' and 'converted' (q > high, what COSMO's ITC targets convert).
    """

    def negative(info):
        q = info['hardest_score']
        kept, dropped = q < low, (q > low) & (q < high)
        if converted_negative:
            dropped = dropped | info['converted']
        index = jnp.where(kept, info['hardest'], info['second']).astype(jnp.int32)
        return index, (kept | dropped).astype(jnp.float32)

    negative_image, weight_t2i = negative(t2i)  # per text
    negative_text, weight_i2t = negative(i2t)  # per image
    base = itm_pairs(negative_image, negative_text)
    n = i2t['hardest'].shape[0]
    base = base._replace(weight=jnp.concatenate([jnp.ones((n,), jnp.float32), weight_t2i, weight_i2t]))
    rows = jnp.arange(n, dtype=jnp.int32)
    convert_i2t = i2t['converted'].astype(jnp.float32)  # q > high: the ITC conversions, the same rule
    convert_t2i = t2i['converted'].astype(jnp.float32)
    j1_text, j1_image = i2t['hardest'].astype(jnp.int32), t2i['hardest'].astype(jnp.int32)
    extra = Pairs(
        image=jnp.concatenate([rows, j1_image]),
        text=jnp.concatenate([j1_text, rows]),
        label=jnp.ones((2 * n,), jnp.int32),
        weight=jnp.concatenate([convert_i2t, convert_t2i]),
    )
    itm = Pairs(*(jnp.concatenate([a, b]) for a, b in zip(base, extra)))
    mlm = Pairs(*(jnp.concatenate([a, b]) for a, b in zip(caption_pairs(n), extra)))
    return itm, mlm
