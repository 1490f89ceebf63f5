"""VQA (objectives/vqa.py, evaluators/vqa.py): ALBEF's weighted answer loss against a numpy reference that decodes
each answer alone, the evaluator's chunked ranking with k = every answer against the brute-force argmax, the
{"question_id", "answer"} lines and their official accuracy, the config checks, and (slow) a tiny fine-tune
with `vlp_jax.generate` answering a question about photos."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, read_metrics, run_cli

from vlp_jax.checks import validate
from vlp_jax.config import ConfigError, EvalSettings, settings_of
from vlp_jax.config_files import load_config_file
from vlp_jax.data.sources import SourceContext
from vlp_jax.data.tasks.shapes_vqa import ShapesVqaPlugin, VqaTaskSettings
from vlp_jax.data.tokenizer import BERT_PAD_ID, BERT_SEP_ID, shared_tokenizer
from vlp_jax.evaluators import vqa as vqa_eval
from vlp_jax.evaluators.base import EvalContext, EvalModel
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.evaluators.vqa_metrics import vqa_accuracy
from vlp_jax.models.decoder_config import DECODER_BOS_ID
from vlp_jax.objectives.lm import LmSettings
from vlp_jax.objectives.momentum import MOMENTUM_PARAMS, MomentumSettings
from vlp_jax.objectives.vqa import VqaObjective, VqaSettings

CONFIG = os.path.join(REPO, 'configs', 'finetune', 'vqa.py')
IMAGE, LEN, VOCAB, ANSWER_LEN = 16, 24, 30522, 8


class FakeModel:
    """Stands in for VLPModel in the fast tests (no compile of a real model): the word logits of a decoder position
    are a fixed function of the token it reads and of one number summing up its context, the masked mean of the
    fused question states (so a context repeated for the wrong answer, a shifted target or a scored pad changes
    them), and the fused states depend on the image and every question token."""

    config = SimpleNamespace(text=SimpleNamespace(vocab_size=VOCAB))

    def apply(self, variables, *args, method, **unused):
        return getattr(self, method)(*args)

    def image_tokens(self, image):
        return jnp.mean(image, axis=(1, 2))[:, None, :1]  # [B, 1, 1]

    def text_tokens(self, ids, mask):
        return (jnp.sin(0.01 * ids) * mask)[..., None].astype(jnp.float32)  # [B, L, 1]

    def fuse(self, text_tokens, mask, image_tokens):
        return text_tokens + image_tokens

    @staticmethod
    def summary(context, context_mask):
        m = context_mask.astype(jnp.float32)
        return jnp.sum(context[..., 0] * m, axis=1) / jnp.sum(m, axis=1)  # [B]

    @staticmethod
    def logits(c, tokens):
        """[B] summaries, [B, T] read tokens -> [B, T, VOCAB]."""
        v = jnp.arange(VOCAB, dtype=jnp.float32)
        return 3.0 * jnp.cos(1e-3 * v * (1 + tokens[..., None] % 7) + 5.0 * c[:, None, None])

    def decode(self, ids, mask, context, context_mask):
        c = self.summary(context, context_mask)
        return jnp.stack([ids.astype(jnp.float32), jnp.broadcast_to(c[:, None], ids.shape)], axis=-1)

    def lm_logits(self, hidden):
        return self.logits(hidden[:, 0, 1], hidden[..., 0].astype(jnp.int32))

    def decoder_cache(self, context, max_len):
        return {'context': context}

    def decoder_step(self, token, position, cache, context_mask):
        c = self.summary(cache['context'], context_mask)
        return self.logits(c, token[:, None])[:, 0], cache

    # Decoding's LM head is linear in lm_transform's output: logits = lm_transform(h) @ table.T + bias. `logits`
    # is that too, by cos(a + b) = cos a cos b - sin a sin b, over 14 features: (cos 5c, sin 5c) in the slot of
    # the read token's residue t % 7 and zeros elsewhere; the table's row v holds 3 (cos a, -sin a) per residue.
    def decoder_step_hidden(self, token, position, cache, context_mask):
        c = self.summary(cache['context'], context_mask)
        return jnp.stack([token.astype(jnp.float32), c], axis=-1), cache

    def lm_transform(self, hidden):
        residue = jax.nn.one_hot(hidden[..., 0].astype(jnp.int32) % 7, 7)
        angle = 5.0 * hidden[..., 1:2]
        return jnp.concatenate([residue * jnp.cos(angle), residue * jnp.sin(angle)], axis=-1)

    def lm_head_weights(self):
        a = 1e-3 * jnp.arange(VOCAB, dtype=jnp.float32)[:, None] * (1 + jnp.arange(7, dtype=jnp.float32))[None]
        return jnp.concatenate([3.0 * jnp.cos(a), -3.0 * jnp.sin(a)], axis=-1), jnp.zeros(VOCAB, jnp.float32)


def np_logits(c: float, tokens) -> np.ndarray:
    v = np.arange(VOCAB, dtype=np.float64)
    return np.stack([3.0 * np.cos(1e-3 * v * (1 + t % 7) + 5.0 * c) for t in tokens])


def np_fused_summary(image, ids, mask) -> np.ndarray:
    """FakeModel's context summary of each question, in numpy."""
    fused = np.sin(0.01 * ids) * mask + image.mean(axis=(1, 2))[:, :1]
    return (fused * mask).sum(1) / mask.sum(1)


def np_answer_loss(c: float, ids, smoothing: float = 0.0) -> float:
    """The summed (smoothed) token loss of one answer ([CLS] words [SEP] [PAD]...) read as [BOS] words [SEP]."""
    ids = [int(i) for i in ids if i != BERT_PAD_ID]
    seq = [DECODER_BOS_ID, *ids[1:]]
    z = np_logits(c, seq[:-1])
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -log_p[np.arange(len(seq) - 1), seq[1:]]
    return float(np.sum((1 - smoothing) * nll - smoothing * log_p.mean(-1)))


def _questions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)
    words = ('circle', 'square', 'cross', 'disc', 'box')
    tokens = shared_tokenizer(LEN)([f'what colour is the {w}?' for w in words][:n])
    return image, tokens['text_ids'], tokens['text_mask']


def test_weighted_answer_loss_matches_numpy():
    image, ids, mask = _questions(3)
    tokenizer = shared_tokenizer(LEN)
    answers = [['red', 'crimson', ''], ['top left', '', ''], ['round shape', 'disc', 'circle']]
    answer_ids = np.stack([tokenizer(row)['text_ids'] for row in answers])
    weights = np.asarray([[0.6, 0.3, 0.0], [1.0, 0.0, 0.0], [0.5, 0.4, 0.1]], np.float32)  # row 0: a dropped answer
    batch = {'image': image, 'text_ids': ids, 'text_mask': mask, 'answers': answer_ids, 'answer_weight': weights}
    summary = np_fused_summary(image, ids, mask)
    for smoothing in (0.0, 0.1):
        parts = SimpleNamespace(model=FakeModel(), steps_per_epoch=10)
        objective = VqaObjective(LmSettings(smoothing, ''), VqaSettings(ANSWER_LEN), MomentumSettings(), parts)
        loss, metrics, _ = jax.jit(objective.loss)({}, {}, {}, batch, jax.random.key(0), jnp.asarray(0))
        want = sum(
            weights[b, a] * np_answer_loss(summary[b], answer_ids[b, a, :ANSWER_LEN], smoothing)
            for b in range(3)
            for a in range(3)
        )
        np.testing.assert_allclose(float(loss), want / 3, rtol=1e-5)  # ALBEF: summed, then / questions
        assert 0.0 <= float(metrics['train/answer_accuracy']) <= 1.0


class ShiftedFakeModel(FakeModel):
    """FakeModel whose params matter: params['shift'] is added to every fused question state, so the online and
    the momentum params give different contexts and word logits."""

    def apply(self, variables, *args, method, **unused):
        out = getattr(self, method)(*args)
        return out + variables['params']['shift'] if method == 'fuse' else out


def np_distilled_answer_loss(c: float, c_momentum: float, ids, alpha: float) -> float:
    """xbert.py with soft_labels: per token (1 - alpha) * NLL + alpha * -sum(softmax(momentum) * log_softmax),
    summed over the answer's tokens (the momentum decoder reads the same tokens under its own context)."""
    ids = [int(i) for i in ids if i != BERT_PAD_ID]
    seq = [DECODER_BOS_ID, *ids[1:]]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p = log_softmax(np_logits(c, seq[:-1]))
    soft = np.exp(log_softmax(np_logits(c_momentum, seq[:-1])))
    nll = -log_p[np.arange(len(seq) - 1), seq[1:]]
    distill = -(soft * log_p).sum(-1)
    return float(np.sum((1 - alpha) * nll + alpha * distill))


def test_answer_distillation_from_the_momentum_model_matches_numpy_and_the_ema_follows():
    """ALBEF's VQA with distill: the momentum model's softmax is the soft target at weight alpha, alpha ramped
    over the first epoch (10 steps here: 0.4 * 3/10 at step 3); after an update the momentum params move to
    decay * m + (1 - decay) * params."""
    image, ids, mask = _questions(2)
    tokenizer = shared_tokenizer(LEN)
    answer_ids = np.stack([tokenizer(row)['text_ids'] for row in (['red', 'crimson'], ['top left', ''])])
    weights = np.asarray([[0.7, 0.3], [1.0, 0.0]], np.float32)
    batch = {'image': image, 'text_ids': ids, 'text_mask': mask, 'answers': answer_ids, 'answer_weight': weights}
    momentum = MomentumSettings(enabled=True, decay=0.9, distill_alpha=0.4, alpha_ramp_steps=-1)
    parts = SimpleNamespace(model=ShiftedFakeModel(), steps_per_epoch=10)
    objective = VqaObjective(LmSettings(0.0, ''), VqaSettings(ANSWER_LEN), momentum, parts)
    params = {'shift': jnp.float32(0.0)}
    extra = objective.init_extra(params, jax.random.key(0))
    np.testing.assert_array_equal(extra[MOMENTUM_PARAMS]['shift'], 0.0)  # starts as a copy
    extra = {MOMENTUM_PARAMS: {'shift': jnp.float32(0.3)}}
    loss, metrics, _ = jax.jit(objective.loss)(params, extra, {}, batch, jax.random.key(0), jnp.asarray(3))
    alpha = 0.4 * 3 / 10
    np.testing.assert_allclose(float(metrics['train/momentum/alpha']), alpha, rtol=1e-6)
    summary = np_fused_summary(image, ids, mask)
    want = sum(
        weights[b, a] * np_distilled_answer_loss(summary[b], summary[b] + 0.3, answer_ids[b, a, :ANSWER_LEN], alpha)
        for b in range(2)
        for a in range(2)
    )
    np.testing.assert_allclose(float(loss), want / 2, rtol=1e-5)
    plain = sum(
        weights[b, a] * np_answer_loss(summary[b], answer_ids[b, a, :ANSWER_LEN]) for b in range(2) for a in range(2)
    )
    assert abs(want - plain) > 1e-3 * abs(plain)  # the distillation term is not vacuous here
    _, moved = objective.after_update({'shift': jnp.float32(1.0)}, extra, {}, jnp.asarray(3))
    np.testing.assert_allclose(float(moved[MOMENTUM_PARAMS]['shift']), 0.9 * 0.3 + 0.1 * 1.0, rtol=1e-6)


def test_ranking_every_answer_in_chunks_is_the_brute_force_argmax(monkeypatch):
    answer_list = ['red', 'round shape', 'top left', 'yes', 'snow-white', 'no', '3', 'lower right']
    monkeypatch.setattr(vqa_eval, 'RANK_ROWS', 2 * len(answer_list))  # 2 questions per ranking call
    image, ids, mask = _questions(5, seed=1)
    data = vqa_eval.VqaSet(image, ids, mask, [], [])
    answerer = vqa_eval.VqaAnswerer(FakeModel(), LEN, ANSWER_LEN, batch_size=4)
    got = answerer.rank({}, data, answer_list, k=0)
    tokens = shared_tokenizer(LEN)(answer_list)['text_ids'][:, :ANSWER_LEN]
    want, summaries = [], np_fused_summary(image, ids, mask)
    for c in summaries:
        scores = [-np_answer_loss(c, row) for row in tokens]
        want.append(answer_list[int(np.argmax(scores))])
    assert got == want and len(set(want)) > 1  # the questions' contexts differ, so do their best answers
    # k = 1 keeps the best first token alone (the answers' first words all differ here)
    first = [answer_list[int(np.argmax(np_logits(c, [DECODER_BOS_ID])[0, tokens[:, 1]]))] for c in summaries]
    assert answerer.rank({}, data, answer_list, k=1) == first


def test_the_evaluator_writes_question_ids_and_answers_and_scores_them(tmp_path):
    config = load_config_file(CONFIG + ':tiny,pretrained=')
    config.eval.vqa.output = str(tmp_path / 'ranked.jsonl')
    config.eval.vqa.output_generate = str(tmp_path / 'generated.jsonl')
    config.eval.vqa.k = 4
    source = ShapesVqaPlugin(VqaTaskSettings(train_size=10, test_size=5), SourceContext(0, IMAGE)).open('test')
    context = EvalContext(settings_of(config, EvalSettings), IMAGE, LEN, config)
    evaluator = vqa_eval.VqaEvaluator(EvalSpec('vqa', 'shapes_vqa'), source, context)
    metrics = evaluator(EvalModel(None, None, 4, None, module=FakeModel(), params={}))
    humans = source.batch(np.arange(5))['fields']['human_answers']
    for name, path in (('accuracy', 'ranked.jsonl'), ('accuracy_generate', 'generated.jsonl')):
        lines = [json.loads(line) for line in (tmp_path / path).read_text().splitlines()]
        assert [line['question_id'] for line in lines] == [0, 1, 2, 3, 4]
        assert all(set(line) == {'question_id', 'answer'} and isinstance(line['answer'], str) for line in lines)
        want = np.mean([vqa_accuracy(line['answer'], h) for line, h in zip(lines, humans)])
        assert metrics[f'eval/vqa/{name}'] == pytest.approx(want)
    ranked = [json.loads(line)['answer'] for line in (tmp_path / 'ranked.jsonl').read_text().splitlines()]
    assert set(ranked) <= set(source.answer_list)


def test_generated_answers_stop_at_sep():
    from vlp_jax.evaluators.captioning import caption_texts

    words = shared_tokenizer(LEN)(['top left'])['text_ids'][0][1:3]
    tokens = np.array([[*words, BERT_SEP_ID, 2000, BERT_PAD_ID]])
    assert caption_texts(tokens, '', LEN) == ['top left']


def test_the_tiny_config_validates_and_refuses_what_vqa_cannot_train():
    config = load_config_file(CONFIG + ':tiny,pretrained=')
    validate(config, 1)
    assert config.objective == 'vqa' and config.model.decoder.context == 'fused'
    assert load_config_file(CONFIG + ':tiny,pretrained=,layout=separate').model.decoder.layout == 'separate'
    for edit, message in [
        (lambda c: c.model.decoder.update(context='image'), "must be 'fused'"),
        (lambda c: c.loss.update(regulators=('srcl',)), 'no contrastive loss'),
        (lambda c: c.loss.lm.update(prompt='a picture of '), 'without a prompt'),
        (lambda c: c.loss.vqa.update(answer_len=40), 'answer_len'),
        (lambda c: c.model.vision.update(width=48), 'vision.width'),
        (lambda c: c.data.update(name='shapes'), 'answers'),
        (lambda c: c.loss.momentum.update(enabled=True, queue_size=64), 'queue_size=0'),
    ]:
        bad = load_config_file(CONFIG + ':tiny,pretrained=')
        edit(bad)
        with pytest.raises(ConfigError, match=message):
            validate(bad, 1)


@pytest.mark.slow
def test_tiny_vqa_fine_tune_evaluates_writes_answers_and_generates(tmp_path):
    out = tmp_path / 'answers.jsonl'
    args = [
        '--config',
        CONFIG + ':tiny,steps=2,pretrained=',
        '--workdir',
        str(tmp_path / 'run'),
        *FAST_OVERRIDES,
        '--config.model.text.fusion_layers=1',
        '--config.eval_every=2',
        '--config.checkpoint_every=2',
        '--config.data.shapes_vqa.train_size=64',
        '--config.data.shapes_vqa.test_size=8',
        f'--config.eval.vqa.output={out}',
    ]
    run_cli('vlp_jax.train', args)
    metrics = read_metrics(tmp_path / 'run')
    assert 'train/vqa' in metrics[0]
    last = [r for r in metrics if 'eval/vqa/accuracy' in r][-1]
    assert 0 <= last['eval/vqa/accuracy'] <= 1 and 0 <= last['eval/vqa/accuracy_generate'] <= 1
    assert [json.loads(line)['question_id'] for line in out.read_text().splitlines()] == list(range(8))
    from vlp_jax.data.example_photos import photo_captions, skimage_data_dir

    photos = [os.path.join(skimage_data_dir(), p['image']) for p in photo_captions()[:2]]
    question = 'what colour is the circle?'
    printed = run_cli(
        'vlp_jax.generate', ['--workdir', str(tmp_path / 'run'), '--images', ','.join(photos), '--question', question]
    )
    rows = [json.loads(line) for line in printed.stdout.splitlines() if line.startswith('{')]
    assert [r['image'] for r in rows] == photos and all(r['question'] == question for r in rows)
    answers = ShapesVqaPlugin(VqaTaskSettings(), SourceContext(0, 64)).open('test').answer_list
    assert all(r['answer'] in answers for r in rows)
    printed = run_cli('vlp_jax.generate', ['--workdir', str(tmp_path / 'run'), '--answers', 'generate'])
    rows = [json.loads(line) for line in printed.stdout.splitlines() if line.startswith('{')]
    assert [r['question_id'] for r in rows] == list(range(8))
