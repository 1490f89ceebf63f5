"""Tests of the procedural captioned-shapes world (vlp_jax/data/synthetic.py)."""

import dataclasses
import itertools

import numpy as np
import pytest

from vlp_jax.data import synthetic as sw
from vlp_jax.data import synthetic_render
from vlp_jax.data.synthetic import (
    COLOURS,
    MAX_MENTIONS,
    MAX_OBJECTS,
    SHAPES,
    ShapesWorld,
    ShapesWorldConfig,
    captions_true_of_scenes,
    classification_set,
    semantic_ids,
)

SMALL = ShapesWorldConfig(train_size=500, val_size=100, test_size=100)
MIN_OBJECT_CONTRAST = 40  # max channel difference between an object pixel and the background
BACKGROUND_RANGE = (10, 160)  # muted backgrounds: no channel near black or saturated


def _assert_example_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == 'captions':
            assert list(a[key]) == list(b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_example_matches_batch_row_and_is_deterministic():
    world = ShapesWorld(SMALL, seed=3, split='train')
    batch = world.batch(np.array([7, 42, 3, 42]))
    for row, index in enumerate([7, 42, 3, 42]):
        _assert_example_equal(world.example(index), {k: v[row] for k, v in batch.items()})
    _assert_example_equal(ShapesWorld(SMALL, seed=3, split='train').example(42), world.example(42))


def test_seeds_and_splits_give_different_examples():
    base = ShapesWorld(SMALL, seed=0, split='train').batch(np.arange(8))
    for other in (ShapesWorld(SMALL, seed=1, split='train'), ShapesWorld(SMALL, seed=0, split='val')):
        batch = other.batch(np.arange(8))
        assert not np.array_equal(batch['image'], base['image'])
        assert batch['captions'] != base['captions']


def test_shapes_dtypes_and_caption_counts():
    config = ShapesWorldConfig(image_size=48, captions_per_image=3, train_size=10, test_size=10)
    batch = ShapesWorld(config, 0, 'train').batch(np.arange(4))
    assert batch['image'].shape == (4, 48, 48, 3) and batch['image'].dtype == np.uint8
    assert batch['caption_spec'].shape == (4, 3, MAX_MENTIONS, 4) and batch['caption_spec'].dtype == np.int32
    assert batch['sem'].shape == (4, 3) and batch['sem'].dtype == np.int32
    assert batch['lateral'].shape == (4, 3) and batch['lateral'].dtype == bool
    assert batch['scene'].shape == (4, MAX_OBJECTS, 4) and batch['scene'].dtype == np.int32
    assert [len(c) for c in batch['captions']] == [3] * 4
    test = ShapesWorld(config, 0, 'test')
    assert test.captions_per_image == 5 and len(test.example(0)['captions']) == 5
    assert len(test) == 10


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='split'):
        ShapesWorld(SMALL, 0, 'training')
    with pytest.raises(ValueError, match='detail'):
        ShapesWorld(ShapesWorldConfig(detail='medium'), 0, 'train')
    with pytest.raises(ValueError, match='max_objects'):
        ShapesWorld(ShapesWorldConfig(max_objects=4), 0, 'train')
    world = ShapesWorld(SMALL, 0, 'val')
    for index in (100, -1):
        with pytest.raises(IndexError, match='out of range'):
            world.example(index)
    with pytest.raises(IndexError):
        world.batch(np.array([0, 100]))


def _reference_truth(spec: np.ndarray, scene: np.ndarray) -> bool:
    """Plain-Python statement of the rule: mentions match distinct objects on every stated attribute."""
    mentions = [m for m in spec.tolist() if any(v >= 0 for v in m)]
    objects = [o for o in scene.tolist() if o[0] >= 0]

    def agrees(m, o):
        return all(v < 0 or v == w for v, w in zip(m, o))

    return any(
        all(agrees(m, objects[j]) for m, j in zip(mentions, chosen))
        for chosen in itertools.permutations(range(len(objects)), len(mentions))
    )


def _random_specs_and_scenes(rng, n_specs, n_scenes):
    limits = [len(SHAPES), len(COLOURS), 2, 9]
    scenes = np.stack([rng.integers(0, hi, (n_scenes, MAX_OBJECTS)) for hi in limits], -1)
    for i, n in enumerate(rng.integers(1, MAX_OBJECTS + 1, n_scenes)):
        scenes[i, n:] = -1
    # Small attribute ranges in specs make matches common enough to test both outcomes.
    specs = np.stack([rng.integers(0, min(hi, 3), (n_specs, MAX_MENTIONS)) for hi in limits], -1)
    specs = np.where(rng.random(specs.shape) < 0.6, -1, specs)
    specs[rng.random(n_specs) < 0.3, 1] = -1  # single-mention captions
    specs[0] = -1  # empty spec: true of everything
    scenes[:, :, 0] = np.minimum(scenes[:, :, 0], 2) * (scenes[:, :, 0] >= 0) - (scenes[:, :, 0] < 0)
    scenes[:, :, 1] = np.where(scenes[:, :, 1] >= 0, scenes[:, :, 1] % 3, -1)
    return specs.astype(np.int32), scenes.astype(np.int32)


def test_truth_matches_python_reference():
    specs, scenes = _random_specs_and_scenes(np.random.default_rng(0), 40, 30)
    got = captions_true_of_scenes(specs, scenes)
    want = np.array([[_reference_truth(s, c) for c in scenes] for s in specs])
    assert got.dtype == bool and got.shape == (40, 30)
    np.testing.assert_array_equal(got, want)
    assert 0.1 < want.mean() < 0.9  # the test exercises both outcomes
    # Two identical mentions need two distinct matching objects.
    twin = np.array([[[0, 0, -1, -1], [0, 0, -1, -1]]], np.int32)
    one = np.array([[[0, 0, 0, 0], [1, 1, 0, 1], [-1] * 4]], np.int32)
    two = np.array([[[0, 0, 0, 0], [0, 0, 1, 1], [-1] * 4]], np.int32)
    np.testing.assert_array_equal(captions_true_of_scenes(twin, np.concatenate([one, two])), [[False, True]])


def test_clean_captions_are_true_of_their_own_image():
    batch = ShapesWorld(SMALL, 0, 'test').batch(np.arange(64))
    truth = captions_true_of_scenes(batch['caption_spec'].reshape(-1, MAX_MENTIONS, 4), batch['scene'])
    owner = np.repeat(np.arange(64), 5)
    assert truth[np.arange(len(owner)), owner].all()


@pytest.mark.parametrize('split', ['val', 'test'])
def test_evaluation_splits_ignore_caption_noise(split):
    """Evaluation labels must be right: each val/test caption is true of its own image, noise or not."""
    noisy = ShapesWorld(dataclasses.replace(SMALL, caption_noise=0.5, detail='fine'), 0, split)
    batch = noisy.batch(np.arange(64))
    per_image = noisy.captions_per_image
    truth = captions_true_of_scenes(batch['caption_spec'].reshape(-1, MAX_MENTIONS, 4), batch['scene'])
    assert truth[np.arange(64 * per_image), np.repeat(np.arange(64), per_image)].all()
    clean = ShapesWorld(dataclasses.replace(SMALL, caption_noise=0.0, detail='fine'), 0, split).batch(np.arange(64))
    assert batch['captions'] == clean['captions']


def test_caption_noise_replaces_about_that_fraction():
    noisy_cfg = ShapesWorldConfig(caption_noise=0.5, captions_per_image=4, train_size=5000)
    clean = ShapesWorld(dataclasses.replace(noisy_cfg, caption_noise=0.0), 0, 'train').batch(np.arange(200))
    noisy = ShapesWorld(noisy_cfg, 0, 'train').batch(np.arange(200))
    np.testing.assert_array_equal(noisy['image'], clean['image'])
    changed = np.array(noisy['captions']) != np.array(clean['captions'])
    assert 0.43 < changed.mean() < 0.57
    specs = noisy['caption_spec'].reshape(-1, MAX_MENTIONS, 4)
    own = captions_true_of_scenes(specs, noisy['scene'])[np.arange(800), np.repeat(np.arange(200), 4)]
    assert own[~changed.reshape(-1)].all()
    assert own[changed.reshape(-1)].mean() < 0.5  # swapped captions are mostly false of this image


def test_coarse_captions_have_false_negatives():
    batch = ShapesWorld(dataclasses.replace(SMALL, detail='coarse'), 0, 'train').batch(np.arange(64))
    truth = captions_true_of_scenes(batch['caption_spec'].reshape(-1, MAX_MENTIONS, 4), batch['scene'])
    others = truth.sum(1) - 1  # minus the caption's own image
    assert others.mean() > 1
    fine = ShapesWorld(dataclasses.replace(SMALL, detail='fine'), 0, 'train').batch(np.arange(64))
    fine_truth = captions_true_of_scenes(fine['caption_spec'].reshape(-1, MAX_MENTIONS, 4), fine['scene'])
    assert fine_truth.sum(1).mean() < truth.sum(1).mean()


def test_sem_is_canonical():
    a = np.array([[[0, 1, -1, -1], [2, 3, 1, 4]]], np.int32)
    swapped = a[:, ::-1]
    different = np.array([[[0, 1, -1, -1], [2, 3, 1, 5]]], np.int32)
    single = np.array([[[0, 1, -1, -1], [-1, -1, -1, -1]]], np.int32)
    sems = semantic_ids(np.concatenate([a, swapped, different, single]))
    assert sems.dtype == np.int32
    assert sems[0] == sems[1] and len({sems[0], sems[2], sems[3]}) == 3
    batch = ShapesWorld(SMALL, 0, 'test').batch(np.arange(64))
    specs = batch['caption_spec'].reshape(-1, MAX_MENTIONS, 4)
    canon = [tuple(sorted(map(tuple, s.tolist()))) for s in specs]
    sem = batch['sem'].reshape(-1)
    for i in range(0, len(canon), 7):
        np.testing.assert_array_equal(sem == sem[i], [c == canon[i] for c in canon])


def test_lateral_flag_matches_left_right_words():
    batch = ShapesWorld(dataclasses.replace(SMALL, detail='fine'), 0, 'train').batch(np.arange(64))
    words = np.array([[('left' in c or 'right' in c) for c in caps] for caps in batch['captions']])
    np.testing.assert_array_equal(batch['lateral'], words)
    assert words.any() and not words.all()


def test_objects_are_visible():
    config = ShapesWorldConfig(textured_background=1.0, train_size=20)
    world = ShapesWorld(config, 0, 'train')
    plans = synthetic_render.RenderPlans(1, config.textured_background)
    for index in range(20):
        u = world._uniforms(index)
        objects, jitter = sw._scene(u.tolist(), config.max_objects)
        plans.add(
            0, objects, jitter, config.image_size, u[sw._SCENE_DRAWS : sw._SCENE_DRAWS + synthetic_render.BG_DRAWS]
        )
        with_objects = plans.render(config.image_size)[0]
        np.testing.assert_array_equal(with_objects, world.example(index)['image'])
        plans.shape[:] = -1
        background = plans.render(config.image_size)[0].astype(int)
        diff = np.abs(with_objects.astype(int) - background).max(-1)
        on_object = diff > 0
        assert on_object.sum() >= len(objects) * 9  # every object covers pixels
        assert diff[on_object].min() >= MIN_OBJECT_CONTRAST
        assert BACKGROUND_RANGE[0] <= background.min() and background.max() <= BACKGROUND_RANGE[1]


def test_classification_set():
    for attribute, names in (('shape', SHAPES), ('colour', COLOURS)):
        data = classification_set(SMALL, seed=0, size=30, attribute=attribute)
        assert data['image'].shape == (30, 64, 64, 3) and data['image'].dtype == np.uint8
        assert data['class_names'] == list(names)
        assert data['label'].dtype == np.int32 and set(data['label'].tolist()) == set(range(len(names)))
        # exactly one object: the object's colour appears, and only one colour from the palette does.
        for image, label in zip(data['image'][:10], data['label'][:10]):
            present = [(image == rgb).all(-1).any() for rgb in synthetic_render.COLOUR_RGB]
            assert sum(present) == 1
            if attribute == 'colour':
                assert present[label]
    with pytest.raises(ValueError):
        classification_set(SMALL, 0, 5, 'size')
    for name, templates in sw.CLASSIFICATION_TEMPLATES.items():
        assert name in ('shape', 'colour') and all('{}' in t for t in templates)


def test_batch_speed_sanity():
    import time

    world = ShapesWorld(ShapesWorldConfig(), 0, 'train')
    world.batch(np.arange(32))
    start = time.perf_counter()
    world.batch(np.arange(256))
    assert (time.perf_counter() - start) / 256 < 2e-3  # loose: 2 ms/example even on a slow CI core


def test_twins_differ_from_their_sibling_in_one_objects_shape_only():
    """A twin is a negative only shape separates: same background, colours, sizes and places; one shape
    changed; the pixels outside that object's grid cell identical; its captions true of its own scene."""
    from vlp_jax.data.tasks.shapes_tasks import cell_box

    twins = ShapesWorld(dataclasses.replace(SMALL, twins=True), 0, 'train')
    plain = ShapesWorld(SMALL, 0, 'train').batch(np.arange(0, 40, 2))
    batch = twins.batch(np.arange(40))
    np.testing.assert_array_equal(batch['image'][0::2], plain['image'])  # siblings are the plain world's
    assert batch['captions'][0::2] == plain['captions']
    for k in range(20):
        a, b = batch['scene'][2 * k], batch['scene'][2 * k + 1]
        differs = np.any(a != b, axis=1)
        assert differs.sum() == 1, (a, b)
        row = int(np.flatnonzero(differs)[0])
        assert a[row, sw.SHAPE] != b[row, sw.SHAPE] and a[row, sw.SHAPE] >= 0
        np.testing.assert_array_equal(np.delete(a[row], sw.SHAPE), np.delete(b[row], sw.SHAPE))
        x, y, w, h = cell_box(int(a[row, synthetic_render.POSITION]), SMALL.image_size)
        outside = np.ones(batch['image'].shape[1:3], bool)
        outside[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = False
        changed = np.any(batch['image'][2 * k] != batch['image'][2 * k + 1], axis=-1)
        assert changed.any() and not changed[outside].any()
    specs = batch['caption_spec'].reshape(-1, MAX_MENTIONS, 4)
    owner = np.repeat(np.arange(40), twins.captions_per_image)
    assert captions_true_of_scenes(specs, batch['scene'])[np.arange(len(owner)), owner].all()
    assert twins.block == 2 and ShapesWorld(SMALL, 0, 'train').block == 1


@pytest.mark.parametrize('split', ['val', 'test'])
def test_twins_leave_evaluation_splits_alone(split):
    twins = ShapesWorld(dataclasses.replace(SMALL, twins=True), 0, split)
    np.testing.assert_array_equal(
        twins.batch(np.arange(8))['scene'], ShapesWorld(SMALL, 0, split).batch(np.arange(8))['scene']
    )
    assert twins.block == 1
