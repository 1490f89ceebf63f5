"""VQA accuracy as the official VQA evaluation computes it (GT-Vision-Lab/VQA, PythonEvaluationTools/
vqaEvaluation/vqaEval.py), in Python 3.

- The predicted answer is normalised: new lines and tabs to spaces, stripped, punctuation processed (`punctuation`:
  each of ; : / ' [ ] " ( ) = + \\ _ > < @ ` , ? removed when it touches a space or the text has a digit-comma-digit,
  else replaced by a space; a period not followed by a digit removed), then lower case, number words zero..ten
  (and 'none') to digits, the articles a/an/the dropped, contractions written with their apostrophe ('dont' ->
  'don’t').
- The human answers get the punctuation step only, and only when they are not all the same (as the official code).
- Accuracy of an answer: the mean over the human answers of min(1, #other humans who gave it / 3) (each human left
  out in turn), so with 10 humans 1, 2, 3 and 4+ matches score 0.3, 0.6, 0.9 and 1.0: "min(#humans that said
  ans / 3, 1)" averaged over the 10 choose-9 subsets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTRACTIONS = {
    'aint': 'ain’t', 'arent': 'aren’t', 'cant': 'can’t', 'couldve': 'could’ve', 'couldnt': 'couldn’t',
    'didnt': 'didn’t', 'doesnt': 'doesn’t', 'dont': 'don’t', 'hadnt': 'hadn’t', 'hasnt': 'hasn’t',
    'havent': 'haven’t', 'hed': 'he’d', 'hes': 'he’s', 'howd': 'how’d', 'howll': 'how’ll', 'hows': 'how’s',
    'Im': 'I’m', 'Ive': 'I’ve', 'isnt': 'isn’t', 'itd': 'it’d', 'itll': 'it’ll', 'maam': 'ma’am',
    'mightnt': 'mightn’t', 'mightve': 'might’ve', 'mustnt': 'mustn’t', 'mustve': 'must’ve', 'neednt': 'needn’t',
    'notve': 'not’ve', 'oclock': 'o’clock', 'oughtnt': 'oughtn’t', 'shant': 'shan’t', 'shouldve': 'should’ve',
    'shouldnt': 'shouldn’t', 'somebodyd': 'somebody’d', 'somebodyll': 'somebody’ll', 'somebodys': 'somebody’s',
    'someoned': 'someone’d', 'someonell': 'someone’ll', 'someones': 'someone’s', 'somethingd': 'something’d',
    'somethingll': 'something’ll', 'thats': 'that’s', 'thered': 'there’d', 'therere': 'there’re',
    'theres': 'there’s', 'theyd': 'they’d', 'theyll': 'they’ll', 'theyre': 'they’re', 'theyve': 'they’ve',
    'twas': '’twas', 'wasnt': 'wasn’t', 'weve': "we've", 'werent': 'weren’t', 'whatll': 'what’ll',
    'whatre': 'what’re', 'whats': 'what’s', 'whatve': 'what’ve', 'whens': 'when’s', 'whered': 'where’d',
    'wheres': "where's", 'whereve': 'where’ve', 'whod': 'who’d', 'wholl': 'who’ll', 'whos': 'who’s',
    'whove': "who've", 'whyll': 'why’ll', 'whyre': 'why’re', 'whys': 'why’s', 'wont': 'won’t',
    'wouldve': 'would’ve', 'wouldnt': 'wouldn’t', 'yall': 'y’all', 'youd': 'you’d', 'youll': 'you’ll',
    'youre': 'you’re', 'youve': 'you’ve',
}  # fmt: skip
_NUMBERS = {
    'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
    'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10',
}  # fmt: skip
_ARTICLES = ('a', 'an', 'the')
_PERIOD_STRIP = re.compile(r'(?!<=\d)(\.)(?!\d)')  # the official pattern, its odd look-ahead included
_COMMA_STRIP = re.compile(r'(\d)(\,)(\d)')
_PUNCT = [';', ':', '/', "'", '[', ']', '"', '(', ')', '=', '+', '\\', '_', '>', '<', '@', '`', ',', '?']


def punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + ' ' in text or ' ' + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    return _PERIOD_STRIP.sub('', out)


def digits_and_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return ' '.join(_CONTRACTIONS.get(w, w) for w in words)


def normalise_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it."""
    return digits_and_articles(punctuation(answer.replace('\n', ' ').replace('\t', ' ').strip()))


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """The official accuracy of one predicted answer against the question's human answers (usually 10)."""
    predicted = normalise_answer(answer)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [punctuation(h) for h in humans]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for j, h in enumerate(humans) if j != left_out and h == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)
