"""The input pipeline is a pure function of (seed, step): restarts and process slices agree."""

import numpy as np
import pytest
from conftest import train_pipeline, train_source

from vlp_jax import setup
from vlp_jax.data import batch as batch_spec
from vlp_jax.data.sources import Source
from vlp_jax.sampling.base import Sampler
from vlp_jax.sampling.random_sampler import random_order


@pytest.fixture()
def config(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.batch_size = 16
    config.data.shapes.train_size = 100
    return config


def _pipeline(config, process_index=0, process_count=1):
    return train_pipeline(config, process_index=process_index, process_count=process_count)


class GivenOrders(Sampler):
    """The random sampler's permutations, except for the epochs a test gives an order for; like GRIT,
    its next order is not known ahead, so the pipeline asks for it only when that epoch's first batch is."""

    order_known_ahead = False

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.given: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch):
        if epoch in self.given:
            return self.given[epoch]
        return random_order(self.context.dataset_size, self.context.seed, epoch)


def test_epoch_order_is_a_seeded_permutation(config):
    pipe = _pipeline(config)
    order = pipe.epoch_order(0)
    assert sorted(order.tolist()) == list(range(100))
    assert not np.array_equal(order, pipe.epoch_order(1))
    assert np.array_equal(order, _pipeline(config).epoch_order(0))
    steps = pipe.steps_per_epoch
    seen = np.concatenate([pipe.global_indices(s) for s in range(steps)])
    assert len(set(seen.tolist())) == steps * 16  # no index twice within an epoch


def test_process_slices_make_up_the_global_batch(config):
    whole = _pipeline(config).raw_batch(7)
    parts = [_pipeline(config, p, 4).raw_batch(7) for p in range(4)]
    assert set(whole) == set(parts[0])
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])


def test_restart_reproduces_batches(config):
    straight = list(_pipeline(config).iterate(0, 9))
    resumed = list(_pipeline(config).iterate(6, 9))
    assert len(straight) == 9 and len(resumed) == 3
    for a, b in zip(straight[6:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(straight[0]['image'], straight[1]['image'])


def test_augmented_batch_shapes_and_range(config):
    batch = next(_pipeline(config).iterate(0, 1))
    assert batch['image'].shape == (16, 64, 64, 3) and batch['image'].dtype == np.float32
    assert -1.0 - 1e-5 <= batch['image'].min() and batch['image'].max() <= 1.0 + 1e-5
    assert batch['text_ids'].shape == (16, config.model.max_text_len) and batch['text_ids'].dtype == np.int32
    assert (batch['text_ids'][:, 0] == 101).all()  # [CLS]


def test_flip_respects_left_right_words(config):
    pipe = _pipeline(config)
    lateral_flips = flips = 0
    for step in range(6):
        raw = pipe.raw_batch(step)
        examples = pipe.source.batch(pipe.local_indices(step))
        for row, flip in enumerate(raw['flip']):
            captions = examples['captions'][row]
            chosen = [
                c for c in captions if pipe.tokenizer([c])['text_ids'].tolist() == [raw['text_ids'][row].tolist()]
            ]
            lateral_flips += bool(flip and any(('left' in c or 'right' in c) for c in chosen))
            flips += bool(flip)
    assert flips > 0 and lateral_flips == 0


def test_crop_changes_the_image_but_not_too_much(config):
    pipe = _pipeline(config)
    raw = pipe.raw_batch(0)
    batch = next(pipe.iterate(0, 1))
    plain = raw['image'].astype(np.float32) / 127.5 - 1.0
    assert not np.allclose(batch['image'], plain)
    assert np.abs(batch['image'].mean() - plain.mean()) < 0.1


def test_a_given_epoch_order_is_used_from_its_epoch_on(config):
    source = train_source(config)
    random = setup.make_sampler(config, source)
    sampler = GivenOrders(random.settings, random.context)
    pipe = setup.pipeline(config, source, sampler)
    spe = pipe.steps_per_epoch
    given = np.arange(100)[::-1].copy()
    sampler.given[1] = given
    assert np.array_equal(pipe.global_indices(spe), given[:16])
    assert np.array_equal(pipe.global_indices(spe + 1), given[16:32])
    assert not np.array_equal(pipe.global_indices(0), given[:16])  # epoch 0 keeps its permutation
    batches = list(pipe.iterate(spe - 1, spe + 1))
    assert np.array_equal(batches[1]['index'], given[:16])


TOY_WORDS = batch_spec.declare_field(
    'toy_words', batch_spec.Field(np.int32, 2, batch_spec.TASK, '[B, L] a test-only text field', text=True)
)


class TaskToy(Source):
    """A source with task fields: a per-example image id, a label per caption, a second image (the negative
    of the first) and a text field, so each can be traced through the pipeline."""

    field_keys = ('image_id', 'label', 'image1', 'toy_words')

    def __init__(self, size: int, image_size: int):
        self.size, self.image_size = size, image_size

    def __len__(self):
        return self.size

    def batch(self, indices):
        indices = np.asarray(indices)
        shape = (self.image_size, self.image_size, 3)
        images = np.stack([np.random.default_rng(i).integers(0, 256, shape, np.uint8) for i in indices])
        return {
            'image': images,
            'captions': [[f'caption {i} a', f'caption {i} b', f'caption {i} c'] for i in indices],
            'fields': {
                'image_id': indices // 2,
                'label': np.stack([indices * 10, indices * 10 + 1, indices * 10 + 2], axis=1),
                'image1': 255 - images,
                'toy_words': [f'words of {i}' for i in indices],
            },
        }


def test_task_fields_pass_through_the_pipeline(config):
    """A per-example field arrives as given, a field of the caption as the chosen caption's (its label
    matches the caption's letter), a text field tokenised, and a second image gets the same crop and flip
    as the first (the negative image augments to exactly the negative)."""
    config.data.flip = 'always'
    pipe = train_pipeline(config, source=TaskToy(64, 64))
    raw = pipe.raw_batch(2)
    index = raw['index']
    np.testing.assert_array_equal(raw['image_id'], index // 2)
    slot = raw['label'] - index * 10
    assert set(slot.tolist()) <= {0, 1, 2} and len(set(slot.tolist())) > 1
    chosen = pipe.tokenizer([f'caption {i} {"abc"[s]}' for i, s in zip(index, slot)])
    np.testing.assert_array_equal(raw['text_ids'], chosen['text_ids'])
    np.testing.assert_array_equal(raw['toy_words'], pipe.tokenizer([f'words of {i}' for i in index])['text_ids'])
    batch = next(pipe.iterate(2, 3))
    assert batch['image1'].shape == batch['image'].shape and raw['flip'].any()
    np.testing.assert_allclose(batch['image1'], -batch['image'], atol=1e-5)
    assert set(batch) == {'image', 'text_ids', 'text_mask', 'index', 'replaced', *TaskToy.field_keys}


def test_random_order_keeps_blocks_whole():
    order = random_order(10, 3, 0, block=2)
    assert sorted(order.tolist()) == list(range(10))
    assert np.all(order[0::2] % 2 == 0) and np.all(order[1::2] == order[0::2] + 1)
    assert sorted(random_order(11, 3, 0, block=2).tolist()) == list(range(10))  # the unpaired last one is left out
    assert not np.array_equal(order, random_order(10, 3, 1, block=2))


def test_twins_share_their_batch(config):
    config.data.shapes.twins = True
    pipe = _pipeline(config)
    assert pipe.sampler.context.block == 2
    for step in (0, 3, 9):
        indices = pipe.global_indices(step)
        assert np.all(indices[1::2] == indices[0::2] + 1) and np.all(indices[0::2] % 2 == 0)
    scene = pipe.raw_batch(3)['scene']  # the pair's scenes differ in one object
    assert np.all(np.any(scene[0::2] != scene[1::2], axis=-1).sum(-1) == 1)


@pytest.mark.parametrize(
    'override, message', [(('batch_size', '15'), 'divisible by 2'), (('sampling.name', 'grit'), "use 'random'")]
)
def test_twins_refuse_a_batch_or_sampler_that_splits_them(config, override, message):
    from vlp_jax.checks import validate
    from vlp_jax.config import ConfigError, apply_overrides

    config.data.shapes.twins = True
    apply_overrides(config, [override])
    with pytest.raises(ConfigError, match=message):
        validate(config, 1)


def test_max_objects_reaches_the_world(config):
    config.data.shapes.max_objects = 1
    scene = _pipeline(config).raw_batch(0)['scene']
    assert np.all((scene[..., 0] >= 0).sum(-1) == 1)
