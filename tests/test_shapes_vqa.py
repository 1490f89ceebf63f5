"""The synthetic VQA source ('shapes_vqa', data/tasks/shapes_vqa.py): every human answer is true of the scene,
judged by re-reading the question's words and counting in the world's own scene record (not through the
generator); the answers are balanced enough that the most frequent answer is a weak baseline; the fields the
'vqa' objective reads, and the pipeline's tokenisation of a field of several answers per question."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vlp_jax.data.sources import SourceContext
from vlp_jax.data.synthetic import COLOURS, SHAPES
from vlp_jax.data.tasks.shapes_vqa import (
    ANSWER_SLOTS,
    HUMANS,
    ShapesVqaPlugin,
    VqaTaskSettings,
    answer_list,
    baselines,
)
from vlp_jax.data.tasks.vqa_fields import weighted_answers
from vlp_jax.data.tokenizer import shared_tokenizer

# What a human may say for each truth, written out here (not read from the generator's tables).
SAYS = {
    'red': {'red', 'crimson', 'scarlet'},
    'green': {'green', 'emerald'},
    'blue': {'blue', 'cobalt'},
    'yellow': {'yellow', 'golden', 'lemon'},
    'purple': {'purple', 'violet'},
    'orange': {'orange', 'tangerine'},
    'white': {'white', 'ivory', 'snow-white'},
    'circle': {'circle', 'disc', 'round shape'},
    'square': {'square', 'box', 'block'},
    'triangle': {'triangle', 'triangular shape'},
    'diamond': {'diamond', 'rhombus', 'lozenge'},
    'cross': {'cross', 'plus sign'},
}
CELLS = [
    {'top left', 'upper left'},
    {'top', 'top middle'},
    {'top right', 'upper right'},
    {'left', 'middle left'},
    {'center', 'middle', 'centre'},
    {'right', 'middle right'},
    {'bottom left', 'lower left'},
    {'bottom', 'bottom middle'},
    {'bottom right', 'lower right'},
]
SHAPE_OF = {
    'circles': 'circle',
    'squares': 'square',
    'triangles': 'triangle',
    'diamonds': 'diamond',
    'crosses': 'cross',
}


def plugin(train: int = 300, test: int = 120) -> ShapesVqaPlugin:
    return ShapesVqaPlugin(VqaTaskSettings(train_size=train, test_size=test), SourceContext(seed=0, image_size=32))


def truth(question: str, scene: np.ndarray) -> set[str]:
    """The answers a correct human may give, from the question's words and the scene's rows
    [shape, colour, size, cell] (-1 rows pad)."""
    objects = [(SHAPES[r[0]], COLOURS[r[1]], int(r[3])) for r in scene if r[0] >= 0]

    def matching(shape=None, colour=None):
        return [o for o in objects if shape in (None, o[0]) and colour in (None, o[1])]

    if m := re.fullmatch(r'what colou?r is the (\w+)\?', question):
        (only,) = matching(shape=m[1])
        return SAYS[only[1]]
    if m := re.fullmatch(r'what (?:shape is|is the shape of) the (\w+) (?:object|thing)\?', question):
        (only,) = matching(colour=m[1])
        return SAYS[only[0]]
    if question == 'how many objects are there?':
        return {str(len(objects))}
    if m := re.fullmatch(r'how many (\w+) objects are there\?', question):
        return {str(len(matching(colour=m[1])))}
    if m := re.fullmatch(r'how many (\w+) are there\?', question):
        return {str(len(matching(shape=SHAPE_OF[m[1]])))}
    if m := re.fullmatch(r'is there a (\w+) (\w+)\?', question):
        return {'yes' if matching(shape=m[2], colour=m[1]) else 'no'}
    if m := re.fullmatch(r'is there a (\w+)\?', question):
        return {'yes' if matching(shape=m[1]) else 'no'}
    if m := re.fullmatch(r'is there anything (\w+)\?', question):
        return {'yes' if matching(colour=m[1]) else 'no'}
    if m := re.fullmatch(r'where is the (?:(\w+) )?(\w+)\?', question):
        (only,) = matching(shape=m[2], colour=m[1])
        return CELLS[only[2]]
    raise AssertionError(f'a question of no known form: {question!r}')


@pytest.mark.parametrize('split', ['train', 'test'])
def test_every_human_answer_is_true_of_the_scene(split):
    source = plugin().open(split)
    indices = np.arange(len(source))
    batch = source.batch(indices)
    scenes = source.world.batch(indices // source.per_image)['scene']  # the world's record, not the generator's
    kinds = set()
    for row, index in enumerate(indices):
        question = batch['captions'][row][0]
        humans = batch['fields']['human_answers'][row]
        assert len(humans) == HUMANS and set(humans) <= truth(question, scenes[row]), (question, humans)
        assert set(humans) <= set(source.answer_list)
        kinds.add(source.question(int(index)).kind)
        lateral = any(word in h for h in humans for word in ('left', 'right'))
        assert bool(batch['flip_sensitive'][row, 0]) == lateral
    assert kinds == {'colour', 'shape', 'count', 'exists', 'where'}


def test_fields_weights_and_question_ids():
    source = plugin().open('test')
    batch = source.batch(np.array([5, 0, 7]))
    fields = batch['fields']
    np.testing.assert_array_equal(fields['question_id'], [5, 0, 7])
    assert fields['answer_weight'].shape == (3, ANSWER_SLOTS) and len(fields['answers'][0]) == ANSWER_SLOTS
    for answers, weights, humans in zip(fields['answers'], fields['answer_weight'], fields['human_answers']):
        np.testing.assert_allclose(weights.sum(), 1.0)
        for answer, weight in zip(answers, weights):
            assert weight == pytest.approx(humans.count(answer) / len(humans)) if answer else weight == 0
    # the same question, the same answers, whatever batch it is read in
    again = source.batch(np.array([7]))
    assert again['captions'][0] == batch['captions'][2]
    np.testing.assert_array_equal(again['image'][0], batch['image'][2])
    assert len(answer_list()) == len(set(answer_list()))


def test_weighted_answers_by_hand():
    answers, weights = weighted_answers(['red'] * 6 + ['crimson'] * 3 + ['scarlet'], 4)
    assert answers == ['red', 'crimson', 'scarlet', ''] and weights == pytest.approx([0.6, 0.3, 0.1, 0.0])
    answers, weights = weighted_answers(['a', 'b', 'c', 'a'], 2)  # the rarest ('b' and 'c' tie: by name) dropped
    assert answers == ['a', 'b'] and weights == pytest.approx([0.5, 0.25])


def test_the_most_frequent_answer_is_a_weak_baseline():
    figures = baselines(plugin(train=900, test=300).open('train'), plugin(train=900, test=300).open('test'))
    print(figures)
    assert figures['most_frequent_accuracy'] < 0.15  # 'no' or 'yes': ~10% of the questions
    assert figures['most_frequent_accuracy'] < figures['kind_prior_accuracy'] < 0.35


def test_the_pipeline_tokenises_each_answer_like_a_caption():
    from types import SimpleNamespace

    from vlp_jax.data.pipeline import TrainPipeline

    source = plugin().open('train')
    order = SimpleNamespace(epoch_order=lambda epoch: np.arange(len(source)), order_known_ahead=True)
    data = SimpleNamespace(crop_scale=(1.0, 1.0), flip='auto', workers=1, prefetch=1, backend='auto')
    pipeline = TrainPipeline(source, order, data, seed=0, batch_size=4, image_size=32, max_text_len=12)
    raw = pipeline.raw_batch(0)
    assert raw['answers'].shape == (4, ANSWER_SLOTS, 12) and raw['answer_weight'].shape == (4, ANSWER_SLOTS)
    examples = source.batch(np.arange(4))
    tokenizer = shared_tokenizer(12)
    for row in range(4):
        want = tokenizer(examples['fields']['answers'][row])['text_ids']
        np.testing.assert_array_equal(raw['answers'][row], want)
        np.testing.assert_array_equal(raw['text_ids'][row], tokenizer(examples['captions'][row])['text_ids'][0])
    np.testing.assert_array_equal(raw['question_id'], np.arange(4))
