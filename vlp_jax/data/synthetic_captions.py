"""Caption grammar of the captioned-shapes world (see synthetic.py).

Kept apart from the renderer so the vocabulary (canonical names, synonyms,
templates) can be read in one place. Every caption is produced together with a
machine-readable spec of what it claims, so ground truth never depends on
parsing text.
"""

from __future__ import annotations

# Canonical attribute names; an attribute id is the index into its tuple.
SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle', 'diamond', 'cross')
COLOURS: tuple[str, ...] = ('red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white')
SIZES: tuple[str, ...] = ('small', 'large')
POSITIONS: tuple[str, ...] = (
    'top left',
    'top',
    'top right',
    'left',
    'center',
    'right',
    'bottom left',
    'bottom',
    'bottom right',
)
MAX_OBJECTS = 3
MAX_MENTIONS = 2

# Columns of scene rows and caption-spec mention rows.
SHAPE, COLOUR, SIZE, POSITION = range(4)
NUM_ATTRIBUTES = 4
NOT_SAID = -1
GRID = 3  # positions form a GRID x GRID grid, row-major
CENTRE_COLUMN = 1  # positions in this column carry no left/right words

DETAILS = ('coarse', 'mixed', 'fine')
LEVELS = ('coarse', 'medium', 'fine')

# Synonyms, aligned with the canonical tuples above (first = canonical word).
SHAPE_WORDS = (
    ('circle', 'disc', 'round shape'),
    ('square', 'box', 'block'),
    ('triangle', 'triangular shape'),
    ('diamond', 'rhombus', 'lozenge'),
    ('cross', 'plus sign'),
)
COLOUR_WORDS = (
    ('red', 'crimson', 'scarlet'),
    ('green', 'emerald'),
    ('blue', 'cobalt'),
    ('yellow', 'golden', 'lemon'),
    ('purple', 'violet'),
    ('orange', 'tangerine'),
    ('white', 'ivory', 'snow-white'),
)
SIZE_WORDS = (('small', 'tiny', 'little'), ('large', 'big', 'huge'))
POSITION_WORDS = (
    ('at the top left', 'in the top left corner', 'in the upper left'),
    ('at the top', 'at the top centre', 'near the top middle'),
    ('at the top right', 'in the top right corner', 'in the upper right'),
    ('at the middle left', 'in the centre left'),
    ('in the center', 'in the middle', 'in the centre'),
    ('at the middle right', 'in the centre right'),
    ('at the bottom left', 'in the bottom left corner', 'in the lower left'),
    ('at the bottom', 'at the bottom centre', 'near the bottom middle'),
    ('at the bottom right', 'in the bottom right corner', 'in the lower right'),
)
SHAPELESS_NOUNS = ('shape', 'object', 'thing')
PREFIXES = ('', 'a picture of ', 'an image of ', 'there is ', 'a photo showing ')
JOINS = (' and ', ' with ', ', and also ', ' as well as ')

# Which attributes a mention states, per detail level.
_ALL = (SHAPE, COLOUR, SIZE, POSITION)
_COARSE_ONE = ((SHAPE,), (SHAPE, COLOUR), (COLOUR,))
_COARSE_WEIGHTS = (0.35, 0.45, 0.2)  # shape only / colour+shape / colour only
_MEDIUM_ONE = ((SHAPE, COLOUR, SIZE), (SHAPE, COLOUR, POSITION))
_FINE_SECOND = ((SHAPE, COLOUR), (SHAPE, COLOUR, SIZE))
_PAIR_PROBABILITY = 1 / 3  # medium captions naming two objects, when possible
_SOMETHING_PROBABILITY = 0.3  # "something red" instead of "a red object"

# Uniform draws a caption consumes (fixed, so streams stay aligned).
CAPTION_DRAWS = 16
_U_LEVEL, _U_VARIANT, _U_OBJ1, _U_OBJ2, _U_JOIN, _U_PREFIX, _U_SOMETHING = range(7)
_U_WORDS = 7  # then per mention: shape, colour, size, position words (2 x 4 = 8)
_VOWELS = 'aeiou'


def _pick(options, u: float):
    """Choose from a sequence with a uniform draw in [0, 1)."""
    return options[min(int(u * len(options)), len(options) - 1)]


def _article(word: str) -> str:
    return 'an' if word[0] in _VOWELS else 'a'


def _phrase(row: list[int], u: list[float], something: bool) -> str:
    """Noun phrase stating exactly the attributes that are set in `row`."""
    size = _pick(SIZE_WORDS[row[SIZE]], u[SIZE]) if row[SIZE] >= 0 else None
    colour = _pick(COLOUR_WORDS[row[COLOUR]], u[COLOUR]) if row[COLOUR] >= 0 else None
    if row[SHAPE] >= 0:
        noun = _pick(SHAPE_WORDS[row[SHAPE]], u[SHAPE])
    elif something and size is None and row[POSITION] < 0:
        return f'something {colour}'
    else:
        noun = _pick(SHAPELESS_NOUNS, u[SHAPE])
    words = [w for w in (size, colour, noun) if w is not None]
    text = ' '.join([_article(words[0])] + words)
    if row[POSITION] >= 0:
        text += ' ' + _pick(POSITION_WORDS[row[POSITION]], u[POSITION])
    return text


def _mention(obj: list[int], said: tuple[int, ...]) -> list[int]:
    return [obj[a] if a in said else NOT_SAID for a in range(NUM_ATTRIBUTES)]


def make_caption(objects: list[list[int]], u: list[float], detail: str) -> tuple[str, list[list[int]], bool]:
    """One caption of a scene: (text, spec rows [MAX_MENTIONS][4], lateral).

    `objects` are the scene's real objects (>= 1), `u` holds CAPTION_DRAWS
    uniforms. The spec states exactly what the text claims, so the caption is
    true of this scene by construction.
    """
    n = len(objects)
    if detail == 'mixed':
        level = _pick(LEVELS, u[_U_LEVEL])
    else:
        level = 'coarse' if detail == 'coarse' else 'fine'
    first = _pick(objects, u[_U_OBJ1])
    others = [o for o in objects if o is not first]
    second = _pick(others, u[_U_OBJ2]) if others else None
    v = u[_U_VARIANT]
    said2 = None
    if level == 'coarse':
        said1 = _COARSE_ONE[-1]
        cumulative = 0.0
        for option, weight in zip(_COARSE_ONE, _COARSE_WEIGHTS):
            cumulative += weight
            if v < cumulative:
                said1 = option
                break
    elif level == 'medium':
        if n >= 2 and v < _PAIR_PROBABILITY:
            said1 = said2 = (SHAPE, COLOUR)
        else:
            said1 = _pick(_MEDIUM_ONE, v)
    else:
        said1 = _ALL
        if second is not None:
            said2 = _pick(_FINE_SECOND, v)
    rows = [_mention(first, said1)]
    if said2 is not None:
        rows.append(_mention(second, said2))
    something = u[_U_SOMETHING] < _SOMETHING_PROBABILITY
    phrases = [_phrase(r, u[_U_WORDS + NUM_ATTRIBUTES * k :], something) for k, r in enumerate(rows)]
    text = _pick(PREFIXES, u[_U_PREFIX]) + _pick(JOINS, u[_U_JOIN]).join(phrases)
    lateral = any(r[POSITION] >= 0 and r[POSITION] % GRID != CENTRE_COLUMN for r in rows)
    rows += [[NOT_SAID] * NUM_ATTRIBUTES] * (MAX_MENTIONS - len(rows))
    return text, rows, lateral
