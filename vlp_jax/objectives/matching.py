"""The pieces of ALBEF's ITM and MLM that do not need the model: masking tokens, choosing ITM negatives.

MLM (BERT, as ALBEF): each maskable token is selected with probability `mask_ratio`; a
selected token becomes [MASK] with probability 0.8, a random word with 0.1, and stays
itself with 0.1; it is predicted either way. [CLS], [SEP] and padding are never selected.

ITM negatives (METHODS.md): per anchor one in-batch negative, never the positive, either
sampled with probability softmax(similarity) over the negatives (ALBEF, 'sample') or the
most similar one (GRIT-VLP, 'hardest'). Both run on the global [B, B] similarities, so
every device agrees on the choice.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MASK_PROBABILITY, RANDOM_PROBABILITY = 0.8, 0.1  # of selected tokens; the remaining 0.1 keep their id
NEGATIVE_CHOICES = ('sample', 'hardest')


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids the masking must know: which tokens are never selected, what a mask is, how many words exist."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    vocab_size: int


def mask_tokens(
    rng: jax.Array, text_ids: jax.Array, text_mask: jax.Array, mask_ratio: float, special: SpecialTokens
) -> tuple[jax.Array, jax.Array]:
    """(input ids with BERT's 80/10/10 corruption, bool [B, L] which positions are predicted)."""
    select_key, action_key, word_key = jax.random.split(rng, 3)
    maskable = (
        (text_mask > 0) & (text_ids != special.cls_id) & (text_ids != special.sep_id) & (text_ids != special.pad_id)
    )
    selected = maskable & jax.random.bernoulli(select_key, mask_ratio, text_ids.shape)
    action = jax.random.uniform(action_key, text_ids.shape)
    random_words = jax.random.randint(word_key, text_ids.shape, 0, special.vocab_size, dtype=text_ids.dtype)
    corrupted = jnp.where(action < MASK_PROBABILITY, special.mask_id, text_ids)
    corrupted = jnp.where(
        (action >= MASK_PROBABILITY) & (action < MASK_PROBABILITY + RANDOM_PROBABILITY), random_words, corrupted
    )
    return jnp.where(selected, corrupted, text_ids), selected


def choose_negatives(rng: jax.Array | None, similarity: jax.Array, choice: str) -> jax.Array:
    """[B] int32: for each row (anchor) of `similarity` [B, B] a column that is not its own (the diagonal).

    'sample' draws it with probability softmax over the row's negatives (needs `rng`);
    'hardest' takes the row's largest negative.
    """
    assert choice in NEGATIVE_CHOICES, choice
    n = similarity.shape[0]
    assert similarity.shape == (n, n) and n >= 2, similarity.shape
    negatives = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, jax.lax.stop_gradient(similarity).astype(jnp.float32))
    if choice == 'hardest':
        return jnp.argmax(negatives, axis=1).astype(jnp.int32)
    assert rng is not None, "choice 'sample' needs an rng"
    return jax.random.categorical(rng, negatives, axis=1).astype(jnp.int32)
