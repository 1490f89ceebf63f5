"""Greedy and beam-search decoding with the image-grounded decoder (models/decoder.py), jit-compiled with static
shapes, with or without the key/value cache.

A decoded sequence is [BOS] + the prompt (given, not scored) + at most `max_len` generated tokens. With the cache
(`cache=True`) each new token runs one position through the decoder (`VLPModel.decoder_step_hidden`: its keys and
values written into the cache in place) and the context's cross-attention keys/values are projected once, before
the loop; without it every step re-runs the whole fixed-length buffer, context keys/values included
(`VLPModel.decode`, causal, so the positions not yet written change nothing) — what a user gets without a cache,
the reference the cache is tested and benchmarked against (benchmarks/decode_cache.py). Both apply the LM head
to the one position a step needs (`Stepper.head`); docs/decoder.md has the costs.

The rules, the same in greedy and beam search (so that beam width 1 is greedy, tests/test_decoding.py):

- logits are the first `vocab_size` words; [PAD] is never generated;
- repetition penalty r (CTRL, Keskar et al. 2019; HF's RepetitionPenaltyLogitsProcessor): the logit z of a token
  already in the sequence (start token and prompt included) becomes z / r if z > 0 else z * r;
- before `min_len` tokens have been generated, [SEP] (the end) is not allowed;
- a sequence ends at [SEP] (kept in the output) or after `max_len` tokens; the rest is [PAD].

Beam search (HF's BeamSearchScorer, the rules of BLIP's `generate(num_beams=3, ...)`): every step keeps the
`beam` best unfinished sequences by summed log-probability (log-softmax of the penalised logits); a candidate
that ends with [SEP] and ranks among the step's best `beam` candidates becomes a hypothesis scored
sum_logprob / generated_len ** length_penalty (generated_len counts the [SEP]); the best `beam` hypotheses are
kept; after `max_len` steps the unfinished sequences join the hypotheses scored the same way. The search runs
all `max_len` steps: HF's early stop only skips steps that cannot change the kept hypotheses.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from vlp_jax.data.tokenizer import BERT_PAD_ID, BERT_SEP_ID
from vlp_jax.models.decoder_config import DECODER_BOS_ID

Array = jax.Array
PyTree = Any
NEG_INF = -1.0e30


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode (hashable: a static argument of the jitted searches)."""

    max_len: int = 20  # generated tokens at most, [SEP] included
    min_len: int = 1  # generated tokens before [SEP] may come
    beam: int = 1  # 1: greedy
    length_penalty: float = 1.0  # beam hypotheses scored sum_logprob / len ** length_penalty
    repetition_penalty: float = 1.0  # 1: none
    prompt: tuple[int, ...] = ()  # token ids after the start token (e.g. 'a picture of ')
    eos_id: int = BERT_SEP_ID
    pad_id: int = BERT_PAD_ID
    bos_id: int = DECODER_BOS_ID

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len or self.beam < 1 or self.repetition_penalty <= 0:
            raise ValueError(f'need 1 <= min_len <= max_len, beam >= 1, repetition_penalty > 0: {self}')

    @property
    def prefix(self) -> tuple[int, ...]:
        return (self.bos_id, *self.prompt)


def penalised_logits(logits: Array, seq: Array, upto: Array, generated: Array, s: DecodeSettings) -> Array:
    """[N, V] logits of the token after position `upto` of sequences `seq` [N, T] -> the logits the searches rank:
    repetition penalty over tokens at positions <= upto, [PAD] never, [SEP] not before `min_len` generated."""
    n, vocab = logits.shape
    logits = logits.astype(jnp.float32)
    if s.repetition_penalty != 1.0:
        written = jnp.arange(seq.shape[1])[None] <= upto
        index = jnp.where(written, seq, vocab)  # unwritten positions land in a dropped extra column
        seen = jnp.zeros((n, vocab + 1), bool).at[jnp.arange(n)[:, None], index].set(True)[:, :vocab]
        r = s.repetition_penalty
        logits = jnp.where(seen, jnp.where(logits > 0, logits / r, logits * r), logits)
    banned = jnp.arange(vocab) == s.pad_id
    banned = banned | ((jnp.arange(vocab) == s.eos_id) & (generated < s.min_len))
    return jnp.where(banned[None], NEG_INF, logits)


class Stepper:
    """The logits of the next token of every sequence, by the cache or by re-running the buffer.

    Both paths end in the same LM head, applied to the one position each step needs: the MLM head's transform
    (`VLPModel.lm_transform`) and the tied word table, whose `vocab_size` rows and bias are sliced once here,
    outside the loop (`VLPModel.lm_head_weights`); no [N, T, V] logits are formed."""

    def __init__(self, model, params, context, context_mask, length: int, use_cache: bool):
        self.model, self.params, self.use_cache = model, params, use_cache
        self.context, self.context_mask = context, context_mask
        self.table, self.bias = self._apply(method='lm_head_weights')
        self.cache = self._apply(context, length, method='decoder_cache') if use_cache else None

    def _apply(self, *args, method):
        return self.model.apply({'params': self.params}, *args, method=method)

    def hidden(self, seq: Array, position: Array, cache: PyTree) -> tuple[Array, PyTree]:
        """The decoder's hidden state [N, D] after `position` (its token read from `seq` [N, T]), the new cache."""
        if self.use_cache:
            token = jax.lax.dynamic_index_in_dim(seq, position, axis=1, keepdims=False)
            return self._apply(token, position, cache, self.context_mask, method='decoder_step_hidden')
        hidden = self._apply(seq, jnp.ones_like(seq), self.context, self.context_mask, method='decode')
        return jax.lax.dynamic_index_in_dim(hidden, position, axis=1, keepdims=False), cache

    def head(self, hidden: Array) -> Array:
        """Hidden states [N, D] -> float32 logits [N, vocab]: the model's `lm_logits(hidden)[..., :vocab]`."""
        hidden = self._apply(hidden, method='lm_transform').astype(self.table.dtype)
        logits = jax.lax.dot_general(hidden, self.table, (((1,), (1,)), ((), ())))  # hidden @ table.T
        return logits.astype(jnp.float32) + self.bias

    def __call__(self, seq: Array, position: Array, cache: PyTree) -> tuple[Array, PyTree]:
        """Float32 logits [N, vocab] of the token after `position`, the new cache."""
        hidden, cache = self.hidden(seq, position, cache)
        return self.head(hidden), cache

    def prefill(self, seq: Array, prefix_len: int) -> PyTree:
        """The cache after the prefix's first `prefix_len - 1` tokens (the last one is the first step's input)."""
        if not self.use_cache:
            return None

        def body(p, cache):
            return self.hidden(seq, p, cache)[1]

        return jax.lax.fori_loop(0, prefix_len - 1, body, self.cache)


def best_token(logits: Array) -> tuple[Array, Array]:
    """[N, V] -> (argmax [N] (the first of equal maxima, as jnp.argmax), its log-softmax [N]). max + min-index
    instead of argmax's (value, index) reduction, which XLA's CPU backend runs several times slower."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    vocab = jnp.arange(logits.shape[-1])
    token = jnp.min(jnp.where(logits == best, vocab, logits.shape[-1] - 1), axis=-1)
    return token, -jnp.log(jnp.sum(jnp.exp(logits - best), axis=-1))


def top_log_probs(logits: Array, k: int) -> tuple[Array, Array]:
    """[N, V] -> the k largest log-softmax values [N, k] (sorted, the lower index first among equals, as
    jax.lax.top_k) and their tokens, without writing the [N, V] log-probabilities."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    shifted = logits - best
    top, token = jax.lax.top_k(shifted, k)
    return top - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)), token


def _start(batch: int, s: DecodeSettings, dtype=jnp.int32) -> Array:
    prefix = jnp.asarray(s.prefix, dtype)
    seq = jnp.full((batch, len(s.prefix) + s.max_len), s.pad_id, dtype)
    return seq.at[:, : len(s.prefix)].set(prefix[None])


@functools.partial(jax.jit, static_argnames=('model', 'settings', 'cache'))
def greedy(
    model, params: PyTree, context: Array, context_mask: Array | None, settings: DecodeSettings, cache: bool = True
) -> tuple[Array, Array]:
    """-> (tokens [B, max_len]: the generated ids, [SEP] then [PAD] after the end; summed log-probs [B] of the
    penalised distributions). `context` [B, N, Dc] is what the decoder's cross-attention reads."""
    s = settings
    batch, start = context.shape[0], len(s.prefix)
    stepper = Stepper(model, params, context, context_mask, start + s.max_len, cache)
    seq = _start(batch, s)
    state = (seq, stepper.prefill(seq, start), jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))

    def body(i, state):
        seq, kv, done, score = state
        position = start - 1 + i
        logits, kv = stepper(seq, position, kv)
        token, logp = best_token(penalised_logits(logits, seq, position, i, s))
        token = token.astype(seq.dtype)
        score = score + jnp.where(done, 0.0, logp)
        token = jnp.where(done, s.pad_id, token)
        seq = jax.lax.dynamic_update_slice_in_dim(seq, token[:, None], position + 1, axis=1)
        return seq, kv, done | (token == s.eos_id), score

    seq, _, _, score = jax.lax.fori_loop(0, s.max_len, body, state)
    return seq[:, start:], score


def _gather(x: Array, index: Array) -> Array:
    """x [B, K, ...] rows `index` [B, M] per item -> [B, M, ...]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'settings', 'cache'))
def beam_search(
    model, params: PyTree, context: Array, context_mask: Array | None, settings: DecodeSettings, cache: bool = True
) -> tuple[Array, Array]:
    """-> (tokens [B, max_len] of the best hypothesis, its score [B]) (module docstring: the rules)."""
    s = settings
    k, batch, start = s.beam, context.shape[0], len(s.prefix)
    length = start + s.max_len
    flat = lambda x: x.reshape((batch * k,) + x.shape[2:])
    context = jnp.repeat(context, k, axis=0)
    context_mask = None if context_mask is None else jnp.repeat(context_mask, k, axis=0)
    stepper = Stepper(model, params, context, context_mask, length, cache)
    seq = _start(batch * k, s)
    kv = stepper.prefill(seq, start)
    alive_seq = seq.reshape(batch, k, length)
    alive_logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))  # one start beam
    done_seq = alive_seq
    done_score = jnp.full((batch, k), NEG_INF, jnp.float32)
    penalty = lambda n: jnp.asarray(n, jnp.float32) ** s.length_penalty

    def body(i, state):
        alive_seq, alive_logp, done_seq, done_score, kv = state
        position = start - 1 + i
        logits, kv = stepper(flat(alive_seq), position, kv)
        # The best 2k of the k * V continuations are among each beam's best 2k: rank those alone.
        logp, token = top_log_probs(penalised_logits(logits, flat(alive_seq), position, i, s), 2 * k)
        logp = logp.reshape(batch, k * 2 * k) + jnp.repeat(alive_logp, 2 * k, axis=1)
        top, index = jax.lax.top_k(logp, 2 * k)  # sorted, best first; ties: lower beam, then lower token
        beam = index // (2 * k)
        token = jnp.take_along_axis(token.reshape(batch, k * 2 * k), index, axis=1).astype(alive_seq.dtype)
        cand_seq = _gather(alive_seq, beam)
        cand_seq = jax.lax.dynamic_update_slice_in_dim(cand_seq, token[..., None], position + 1, axis=2)
        ends = token == s.eos_id
        # A hypothesis: a candidate ending here among the step's best k (HF: "beam_token_rank >= num_beams").
        finished = jnp.where(ends & (jnp.arange(2 * k) < k)[None] & (top > NEG_INF / 2), top / penalty(i + 1), NEG_INF)
        done_score, keep = jax.lax.top_k(jnp.concatenate([done_score, finished], axis=1), k)
        done_seq = _gather(jnp.concatenate([done_seq, cand_seq], axis=1), keep)
        alive_logp, keep = jax.lax.top_k(jnp.where(ends, NEG_INF, top), k)
        alive_seq = _gather(cand_seq, keep)
        if kv is not None:
            rows = (jnp.arange(batch)[:, None] * k + _gather(beam, keep)).reshape(-1)
            kv = {**kv, 'self': jax.tree_util.tree_map(lambda x: x[rows], kv['self'])}  # 'cross': same per item
        return alive_seq, alive_logp, done_seq, done_score, kv

    state = (alive_seq, alive_logp, done_seq, done_score, kv)
    alive_seq, alive_logp, done_seq, done_score, _ = jax.lax.fori_loop(0, s.max_len, body, state)
    # After max_len steps, the unfinished sequences are hypotheses too (HF's BeamSearchScorer.finalize).
    final = jnp.where(alive_logp > NEG_INF / 2, alive_logp / penalty(s.max_len), NEG_INF)
    score, keep = jax.lax.top_k(jnp.concatenate([done_score, final], axis=1), 1)
    best = _gather(jnp.concatenate([done_seq, alive_seq], axis=1), keep)[:, 0]
    return best[:, start:], score[:, 0]


def decode(model, params, context, context_mask, settings: DecodeSettings, cache: bool = True):
    """Greedy for beam 1, else beam search."""
    search = greedy if settings.beam == 1 else beam_search
    return search(model, params, context, context_mask, settings, cache)


def answer_log_likelihoods(model, params, context: Array, context_mask: Array | None, ids: Array, mask: Array):
    """log p(answer | context) [N]: the decoder's summed log-probabilities of each answer's tokens and its [SEP]
    (no label smoothing), answers tokenised as captions ([CLS] words [SEP] [PAD]...) [N, L], context [N, ...]."""
    from vlp_jax.objectives.lm import decoder_batch  # objectives import decoding's module only lazily

    lm = decoder_batch(ids, mask)
    apply = lambda *args, method: model.apply({'params': params}, *args, method=method)
    hidden = apply(lm.inputs, lm.mask, context, context_mask, method='decode')
    vocab = model.config.text.vocab_size
    log_p = jax.nn.log_softmax(apply(hidden, method='lm_logits')[..., :vocab].astype(jnp.float32), axis=-1)
    token = jnp.take_along_axis(log_p, lm.targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token * lm.weights, axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'k'))
def rank_answers(
    model, params: PyTree, context: Array, context_mask: Array | None, answer_ids: Array, answer_mask: Array, k: int
) -> tuple[Array, Array]:
    """ALBEF's VQA ranking (model_vqa.py `rank_answer`): every candidate's first token scored from [BOS] alone,
    the `k` best candidates kept, those re-scored by the full answer's log-likelihood (first token, the rest and
    [SEP]); -> (the best candidate's index [Q], its log-likelihood [Q]). `context` [Q, N, D] (the fused question
    for a 'fused' decoder), answers [A, L] tokenised as captions; k = A is the brute-force argmax."""
    q = context.shape[0]
    apply = lambda *args, method: model.apply({'params': params}, *args, method=method)
    start = jnp.full((q, 1), DECODER_BOS_ID, answer_ids.dtype)
    hidden = apply(start, jnp.ones_like(start), context, context_mask, method='decode')
    vocab = model.config.text.vocab_size
    first = jax.nn.log_softmax(apply(hidden, method='lm_logits')[:, 0, :vocab].astype(jnp.float32), axis=-1)
    _, top = jax.lax.top_k(first[:, answer_ids[:, 1]], k)  # [Q, k]; answer token 0 is [CLS]
    rows = top.reshape(-1)
    repeat = lambda x: None if x is None else jnp.repeat(x, k, axis=0)
    scores = answer_log_likelihoods(
        model, params, repeat(context), repeat(context_mask), answer_ids[rows], answer_mask[rows]
    ).reshape(q, k)
    best = jnp.argmax(scores, axis=-1)
    return jnp.take_along_axis(top, best[:, None], axis=1)[:, 0], jnp.max(scores, axis=-1)
