"""VQA accuracy (evaluators/vqa_metrics.py) against the official evaluation's documented behaviour: 1, 2, 3, 4+
matching humans out of 10 score 0.3, 0.6, 0.9, 1.0 (the 10-choose-9 average of min(#humans / 3, 1)), and its
answer normalisation (visualqa.org/evaluation: lower case, numbers to digits, articles and punctuation removed,
contractions given their apostrophe)."""

import pytest

from vlp_jax.evaluators.vqa_metrics import normalise_answer, vqa_accuracy


@pytest.mark.parametrize('matches, want', [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_accuracy_of_an_answer_given_by_some_of_ten_humans(matches, want):
    humans = ['2'] * matches + ['3'] * (10 - matches)
    assert vqa_accuracy('2', humans) == pytest.approx(want)


@pytest.mark.parametrize(
    'raw, want',
    [
        ('Two', '2'),
        ('the dog.', 'dog'),
        ('A Red Ball', 'red ball'),
        ('dont', 'don’t'),
        ('yes, it is', 'yes it is'),
        ('10,000', '10000'),
        ('3.5', '3.5'),
        ('  left\tside\n', 'left side'),
        ('black/white', 'black white'),
    ],
)
def test_answer_normalisation_follows_the_official_rules(raw, want):
    assert normalise_answer(raw) == want


def test_normalised_prediction_meets_the_humans_raw_answers():
    assert vqa_accuracy('Two.', ['2'] * 10) == 1.0
    assert vqa_accuracy('the blue', ['blue'] * 3 + ['red'] * 7) == pytest.approx(0.9)
