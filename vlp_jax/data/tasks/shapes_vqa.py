"""'shapes_vqa': the shapes world asks questions about its scenes, answered from the scene spec (exact truth).

Question `q` is about world image `q // questions_per_image` of its split; its kind is drawn uniformly from

- 'colour': "what colour is the circle?" (a shape the scene holds once) -> a colour;
- 'shape': "what shape is the red object?" (a colour the scene holds once) -> a shape;
- 'count': "how many objects are there?" / "how many circles are there?" / "how many red objects are there?"
  (the shape or colour one of the scene's half the time, any one else) -> '0'..'3';
- 'exists': "is there a red circle?" / "is there a circle?" / "is there anything red?" -> 'yes' / 'no' (drawn
  first: balanced; a 'no' names a shape/colour/pair the scene lacks);
- 'where': "where is the circle?" / "where is the red circle?" (an object its words single out) -> its grid
  cell, 'top left' .. 'center' .. 'bottom right';

a kind the scene cannot ask (no shape held once, ...) is replaced by the next of a drawn order. Ten "humans"
answer each question: each gives the canonical answer, or with probability `HUMAN_SYNONYM_RATE` one of its
synonyms ('crimson' for 'red', 'disc' for 'circle', 'upper left' for 'top left'), so answers carry ALBEF's
frequency weights and the official accuracy's min(#humans / 3, 1) matters. Every answer is true of the scene.
The answer list (the ranking evaluator's candidates) is every answer a human can give (`answer_list()`).

Fields (data/tasks/vqa_fields.py): 'answers', 'answer_weight', 'question_id' (= the question's index), and
'human_answers'; 'flip_sensitive' marks the questions whose answer says left or right (the pipeline does not
flip those images). Baselines on the default test split (600 questions): tests/test_shapes_vqa.py and
docs/decoder.md (`python -m vlp_jax.data.tasks.shapes_vqa` prints them).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from vlp_jax.config import key, positive_int
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.data.synthetic import COLOURS, SHAPES, SPLIT_IDS, ShapesWorld, ShapesWorldConfig, _scene_array
from vlp_jax.data.synthetic_captions import COLOUR, COLOUR_WORDS, GRID, POSITION, POSITIONS, SHAPE, SHAPE_WORDS
from vlp_jax.data.tasks.vqa_fields import ANSWER_WEIGHT, ANSWERS, HUMAN_ANSWERS, QUESTION_ID, weighted_answers
from vlp_jax.evaluators.vqa_metrics import vqa_accuracy
from vlp_jax.registry import SOURCES

VQA_STREAM = 130_363  # keeps the questions' draws apart from the world's and the other tasks'
KINDS = ('colour', 'shape', 'count', 'exists', 'where')
HUMANS = 10
HUMAN_SYNONYM_RATE = 0.25
PLURALS = {'cross': 'crosses'}
# The answers humans give for a grid cell (first = canonical, POSITIONS' order).
POSITION_ANSWERS = (
    ('top left', 'upper left'),
    ('top', 'top middle'),
    ('top right', 'upper right'),
    ('left', 'middle left'),
    ('center', 'middle', 'centre'),
    ('right', 'middle right'),
    ('bottom left', 'lower left'),
    ('bottom', 'bottom middle'),
    ('bottom right', 'lower right'),
)
COUNT_ANSWERS = tuple((str(n),) for n in range(4))
YES_NO_ANSWERS = (('yes',), ('no',))
ANSWER_SLOTS = max(len(words) for words in (*COLOUR_WORDS, *SHAPE_WORDS, *POSITION_ANSWERS))
assert tuple(words[0] for words in POSITION_ANSWERS) == POSITIONS


@dataclasses.dataclass(frozen=True)
class VqaTaskSettings:
    """Synthetic VQA: questions about the shapes world's scenes (a few per image)."""

    train_size: int = key(6000, 'training questions', check=positive_int)
    test_size: int = key(600, 'test questions', check=positive_int)
    questions_per_image: int = key(3, 'questions asked of each image', check=positive_int)


def answer_list() -> tuple[str, ...]:
    """Every answer a human of this world can give, each once: the ranking evaluator's candidates."""
    groups = (*COLOUR_WORDS, *SHAPE_WORDS, *COUNT_ANSWERS, *YES_NO_ANSWERS, *POSITION_ANSWERS)
    return tuple(dict.fromkeys(word for words in groups for word in words))


def _plural(shape: str) -> str:
    return PLURALS.get(shape, shape + 's')


def _once(values: np.ndarray) -> list[int]:
    """The values that occur exactly once, in increasing order."""
    kinds, counts = np.unique(values, return_counts=True)
    return [int(v) for v, c in zip(kinds, counts) if c == 1]


def ask(scene: np.ndarray, rng: np.random.Generator) -> tuple[str, str, tuple[str, ...], bool]:
    """(question, kind, the answer's words (canonical first), flip-sensitive) of one question about `scene`
    (rows [shape, colour, size, position], -1 rows pad)."""
    objects = scene[scene[:, SHAPE] >= 0]
    shapes, colours = objects[:, SHAPE], objects[:, COLOUR]
    for kind in [KINDS[int(i)] for i in rng.permutation(len(KINDS))]:
        if kind == 'colour' and _once(shapes):
            shape = _once(shapes)[int(rng.integers(len(_once(shapes))))]
            row = objects[shapes == shape][0]
            template = ('what colour is the {}?', 'what color is the {}?')[int(rng.integers(2))]
            return template.format(SHAPES[shape]), kind, COLOUR_WORDS[row[COLOUR]], False
        if kind == 'shape' and _once(colours):
            colour = _once(colours)[int(rng.integers(len(_once(colours))))]
            row = objects[colours == colour][0]
            template = ('what shape is the {} object?', 'what is the shape of the {} thing?')[int(rng.integers(2))]
            return template.format(COLOURS[colour]), kind, SHAPE_WORDS[row[SHAPE]], False
        if kind == 'count':
            which = int(rng.integers(3))
            if which == 0:
                return 'how many objects are there?', kind, COUNT_ANSWERS[len(objects)], False
            column, names = (SHAPE, SHAPES) if which == 1 else (COLOUR, COLOURS)
            present = rng.random() < 0.5
            value = int(objects[int(rng.integers(len(objects))), column]) if present else int(rng.integers(len(names)))
            count = int(np.sum(objects[:, column] == value))
            text = (
                f'how many {_plural(names[value])} are there?'
                if which == 1
                else f'how many {names[value]} objects are there?'
            )
            return text, kind, COUNT_ANSWERS[count], False
        if kind == 'exists':
            yes = rng.random() < 0.5
            which = int(rng.integers(3))  # pair, shape, colour
            columns = ((SHAPE, COLOUR), (SHAPE,), (COLOUR,))[which]
            held = {tuple(int(v) for v in row[list(columns)]) for row in objects}
            if yes:
                value = tuple(int(v) for v in objects[int(rng.integers(len(objects))), list(columns)])
            else:
                sizes = [len(SHAPES) if c == SHAPE else len(COLOURS) for c in columns]
                absent = [v for v in np.ndindex(*sizes) if tuple(v) not in held]
                value = tuple(int(v) for v in absent[int(rng.integers(len(absent)))])
            words = dict(zip(columns, value))
            if which == 0:
                text = f'is there a {COLOURS[words[COLOUR]]} {SHAPES[words[SHAPE]]}?'
            elif which == 1:
                text = f'is there a {SHAPES[words[SHAPE]]}?'
            else:
                text = f'is there anything {COLOURS[words[COLOUR]]}?'
            return text, kind, YES_NO_ANSWERS[0 if yes else 1], False
        if kind == 'where':
            for index in rng.permutation(len(objects)):
                row = objects[int(index)]
                alone = int(np.sum(shapes == row[SHAPE])) == 1
                pair_alone = int(np.sum((shapes == row[SHAPE]) & (colours == row[COLOUR]))) == 1
                if not pair_alone:
                    continue
                if alone and rng.random() < 0.5:
                    text = f'where is the {SHAPES[row[SHAPE]]}?'
                else:
                    text = f'where is the {COLOURS[row[COLOUR]]} {SHAPES[row[SHAPE]]}?'
                lateral = int(row[POSITION]) % GRID != GRID // 2
                return text, kind, POSITION_ANSWERS[int(row[POSITION])], lateral
    raise AssertionError('count and exists questions can always be asked')


def human_answers(words: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """HUMANS answers: the canonical word, or with probability HUMAN_SYNONYM_RATE one of its synonyms."""
    out = []
    for _ in range(HUMANS):
        synonym = len(words) > 1 and rng.random() < HUMAN_SYNONYM_RATE
        out.append(words[1 + int(rng.integers(len(words) - 1))] if synonym else words[0])
    return out


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: int
    image: int  # the world image it is about
    text: str
    kind: str
    humans: tuple[str, ...]
    flip_sensitive: bool


class VqaSource(Source):
    """Questions about a world split's images (module docstring)."""

    field_keys = (ANSWERS, ANSWER_WEIGHT, QUESTION_ID)

    def __init__(self, world: ShapesWorld, size: int, per_image: int):
        self.world, self.size, self.per_image = world, size, per_image
        self.answer_list = answer_list()

    def __len__(self) -> int:
        return self.size

    def question(self, index: int) -> Question:
        image = int(index) // self.per_image
        objects, _ = self.world.content(image)
        rng = np.random.default_rng([self.world.seed, SPLIT_IDS[self.world.split], int(index), VQA_STREAM])
        text, kind, words, lateral = ask(_scene_array(objects), rng)
        return Question(int(index), image, text, kind, tuple(human_answers(words, rng)), lateral)

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        questions = [self.question(int(i)) for i in np.asarray(indices).reshape(-1)]
        weighted = [weighted_answers(q.humans, ANSWER_SLOTS) for q in questions]
        rendered = self.world.batch(np.asarray([q.image for q in questions], np.int64))
        return {
            'image': rendered['image'],
            'captions': [[q.text] for q in questions],
            'flip_sensitive': np.asarray([[q.flip_sensitive] for q in questions]),
            'fields': {
                ANSWERS: [answers for answers, _ in weighted],
                ANSWER_WEIGHT: np.asarray([weights for _, weights in weighted], np.float32),
                QUESTION_ID: np.asarray([q.question_id for q in questions], np.int64),
                HUMAN_ANSWERS: [list(q.humans) for q in questions],
            },
        }


@SOURCES.register('shapes_vqa')
class ShapesVqaPlugin(SourcePlugin):
    """VQA on the shapes world: questions with ten human answers each (evaluator 'vqa')."""

    Settings = VqaTaskSettings

    def open(self, split: str, where: str = '', captions: bool = True, labels: bool = False) -> Source:
        from vlp_jax.data.errors import DataError

        if where:
            raise DataError(f"source 'shapes_vqa' has no set {where!r}")
        settings = self.settings
        size = settings.train_size if split == 'train' else settings.test_size
        images = -(-size // settings.questions_per_image)
        world = ShapesWorld(
            ShapesWorldConfig(
                image_size=int(self.context.image_size),
                captions_per_image=1,
                detail='coarse',
                train_size=images,
                val_size=images,
                test_size=images,
            ),
            self.context.seed,
            split,
        )
        return VqaSource(world, size, settings.questions_per_image)

    def train_size(self) -> int:
        return self.settings.train_size

    def default_eval_sets(self) -> tuple[tuple[str, str, str], ...]:
        return (('vqa', '', ''),)


def most_frequent_answer(source: VqaSource) -> str:
    """The answer the most human answers of `source` give (the trivial baseline's one answer)."""
    counts = Counter(answer for i in range(len(source)) for answer in source.question(i).humans)
    return max(sorted(counts), key=lambda answer: counts[answer])


def baselines(train: VqaSource, test: VqaSource) -> dict[str, Any]:
    """VQA accuracy on `test` of the trivial answerers fitted on `train`: the most frequent answer, and the most
    frequent answer of the question's kind (a question-only prior that sees no image)."""
    top = most_frequent_answer(train)
    by_kind: dict[str, Counter] = {}
    for i in range(len(train)):
        q = train.question(i)
        by_kind.setdefault(q.kind, Counter()).update(q.humans)
    questions = [test.question(i) for i in range(len(test))]
    prior = {kind: max(sorted(c), key=lambda a: c[a]) for kind, c in by_kind.items()}
    return {
        'most_frequent_answer': top,
        'most_frequent_accuracy': float(np.mean([vqa_accuracy(top, q.humans) for q in questions])),
        'kind_prior_accuracy': float(np.mean([vqa_accuracy(prior[q.kind], q.humans) for q in questions])),
        'kinds': dict(Counter(q.kind for q in questions)),
    }


def main() -> None:
    """Prints the baselines of the default settings (seed 0, 64 px): `python -m vlp_jax.data.tasks.shapes_vqa`."""
    from vlp_jax.data.sources import SourceContext

    plugin = ShapesVqaPlugin(VqaTaskSettings(), SourceContext(seed=0, image_size=64))
    figures = baselines(plugin.open('train'), plugin.open('test'))
    for name, value in figures.items():
        print(f'{name}: {value:.4f}' if isinstance(value, float) else f'{name}: {value}')


if __name__ == '__main__':
    main()
