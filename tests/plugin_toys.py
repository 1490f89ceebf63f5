"""Plug-ins registered from outside the package (no file under vlp_jax/ knows them): a regulator, a
sampler, a data source and an evaluator, each the smallest real one of its kind.

Used by tests/test_plugins.py, by name through the `plugins` config key (tests/ is on PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from vlp_jax.config import key
from vlp_jax.data.batch import normalise_images
from vlp_jax.data.sources import Source, SourcePlugin
from vlp_jax.evaluators.base import Evaluator
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.objectives.regulators import DIRECTIONS, Regulator, TileTargets
from vlp_jax.objectives.regulators.base import WEIGHTS
from vlp_jax.registry import EVALUATORS, REGULATORS, SAMPLERS, SOURCES
from vlp_jax.sampling.base import Sampler

COLOURS = ('red', 'green', 'blue', 'yellow', 'white', 'black', 'orange', 'purple')
RGB = np.array(
    [
        (220, 30, 30),
        (30, 200, 30),
        (30, 30, 220),
        (230, 230, 40),
        (250, 250, 250),
        (10, 10, 10),
        (250, 150, 20),
        (140, 40, 170),
    ],
    np.uint8,
)


@dataclasses.dataclass(frozen=True)
class ToyCloseSettings:
    """Negatives closer than the row's mean negative cosine get this weight."""

    weight: float = key(0.5, 'weight of a negative closer to the anchor than the row mean')


@REGULATORS.register('toy_close')
class ToyClose(Regulator):
    """log_w_ij = log(weight) where cos_ij exceeds the mean of row i's negative cosines (a per-row statistic)."""

    Settings = ToyCloseSettings
    stage = WEIGHTS

    def init_rows(self, rows: int):
        return {'sum': jnp.zeros((rows,)), 'count': jnp.zeros((rows,))}

    def update_rows(self, state, tile, scalars):
        off = ~tile.diag
        return {
            'sum': state['sum'] + jnp.sum(jnp.where(off, tile.sim, 0.0), axis=1),
            'count': state['count'] + jnp.sum(off, axis=1),
        }

    def decide(self, stats, scalars, answers):
        rows = {d: {'mean': stats[d]['sum'] / stats[d]['count']} for d in DIRECTIONS}
        return rows, {'mean': rows['i2t']['mean']}

    def apply(self, targets: TileTargets, tile, rows, scalars) -> TileTargets:
        close = ~tile.diag & (tile.sim > rows['mean'][:, None])
        log_w = jnp.where(close, math.log(self.settings.weight), 0.0)
        return TileTargets(log_w if targets.log_w is None else targets.log_w + log_w, targets.y0)

    def metrics(self, aux):
        return {'train/toy_close/row_mean': jnp.mean(aux['mean'])}


@SAMPLERS.register('toy_reverse')
class ToyReverse(Sampler):
    """Every epoch the dataset backwards, rolled by the epoch; counts the steps it was told about."""

    needs_feedback = True

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.observed = 0

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.roll(np.arange(self.context.dataset_size)[::-1], epoch)

    def observe(self, step_done, feedback):
        assert feedback['index'].shape == (self.context.batch_size,)
        self.observed += 1

    def abstract_state(self):
        return {'observed': np.zeros((), np.int64)}

    def state(self):
        return {'observed': np.asarray(self.observed, np.int64)}

    def load(self, state):
        self.observed = int(state['observed'])


@dataclasses.dataclass(frozen=True)
class ToyColoursSettings:
    """Plain colour squares captioned by their colour."""

    size: int = key(256, 'images in the training split')


class ColourSquares(Source):
    def __init__(self, size: int, image_size: int, offset: int):
        self.size, self.image_size, self.offset = size, image_size, offset
        self.name = 'toy_colours'

    def __len__(self) -> int:
        return self.size

    def batch(self, indices):
        colours = (np.asarray(indices) + self.offset) % len(COLOURS)
        images = np.broadcast_to(RGB[colours][:, None, None, :], (len(colours), self.image_size, self.image_size, 3))
        return {
            'image': np.ascontiguousarray(images),
            'captions': [[f'a {COLOURS[c]} square', f'something {COLOURS[c]}'] for c in colours],
            'fields': {},
        }


@SOURCES.register('toy_colours')
class ToyColours(SourcePlugin):
    Settings = ToyColoursSettings

    def open(self, split, where='', captions=True, labels=False):
        size = self.settings.size if split == 'train' else 32
        return ColourSquares(size, self.context.image_size, 0 if split == 'train' else 3)

    def default_eval_sets(self):
        return (('retrieval', '', ''), ('toy_count', '', 'colours'))


@EVALUATORS.register('toy_count')
class ToyCount(Evaluator):
    """How many images a set has, and the mean norm of their embeddings (1 for a unit-norm encoder)."""

    def __init__(self, spec, source, context):
        super().__init__(spec, source, context)
        batch = source.batch(np.arange(len(source)))
        self.images = normalise_images(batch['image'])

    def __call__(self, model):
        embed = embed_in_batches(model.encode_images, (self.images,), model.batch_size, model.mesh)
        name = self.spec.name
        return {
            f'eval/toy_count/{name}/images': float(len(self.images)),
            f'eval/toy_count/{name}/mean_norm': float(np.mean(np.linalg.norm(embed, axis=1))),
        }
