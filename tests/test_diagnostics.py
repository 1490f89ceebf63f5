"""Ground-truth probe: false-negative mask orientation and pooled metrics on hand-built batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.data.synthetic import COLOURS, SHAPES, captions_true_of_scenes
from vlp_jax.data.synthetic_source import false_negative_mask_i2t
from vlp_jax.objectives.regulators import Cosmo, CosmoSettings, RegulatorContext, Srcl, SrclSettings
from vlp_jax.probes import false_negative_metrics

NO = -1  # attribute not said / no object
CIRCLE, SQUARE, TRIANGLE = (SHAPES.index(s) for s in ('circle', 'square', 'triangle'))
RED, GREEN, BLUE = (COLOURS.index(c) for c in ('red', 'green', 'blue'))
SMALL, LARGE = 0, 1


def ground_truth_metrics(false_negatives, aux):
    """What the train step logs with a probe: the false-negative counts, then each regulator's probe_metrics
    of its aux (DualEncoderContrastive.ground_truth_metrics: masks (i2t, t2i))."""
    context = RegulatorContext(batch_size=3, total_steps=1, steps_per_epoch=1, loss_form='softmax', model_kind='dual')
    regulators = {'srcl': Srcl(SrclSettings(), context), 'cosmo': Cosmo(CosmoSettings(), context)}
    metrics = false_negative_metrics(false_negatives)
    for name, regulator_aux in aux.items():
        metrics.update(regulators[name].probe_metrics(regulator_aux, (false_negatives, false_negatives.T)))
    return metrics


def _hand_batch():
    """image 0: red circle; image 1: blue square; image 2: red circle + green triangle.

    caption 0 'a red circle' (true of images 0 and 2), caption 1 'a blue square' (image 1),
    caption 2 'a green triangle' (image 2). The only false negative: (image 2, caption 0).
    """
    empty = [NO, NO, NO, NO]
    scene = np.array(
        [
            [[CIRCLE, RED, SMALL, 0], empty, empty],
            [[SQUARE, BLUE, LARGE, 4], empty, empty],
            [[CIRCLE, RED, LARGE, 2], [TRIANGLE, GREEN, SMALL, 6], empty],
        ],
        np.int32,
    )
    spec = np.array(
        [
            [[CIRCLE, RED, NO, NO], empty],
            [[SQUARE, BLUE, NO, NO], empty],
            [[TRIANGLE, GREEN, NO, NO], empty],
        ],
        np.int32,
    )
    return spec, scene


def test_hand_batch_truth_table():
    spec, scene = _hand_batch()
    true_of = captions_true_of_scenes(spec, scene)  # [caption, image]
    np.testing.assert_array_equal(true_of, [[1, 0, 1], [0, 1, 0], [0, 0, 1]])


def test_false_negative_mask_is_i2t_oriented():
    spec, scene = _hand_batch()
    mask = np.asarray(false_negative_mask_i2t({'caption_spec': jnp.asarray(spec), 'scene': jnp.asarray(scene)}))
    expected = np.zeros((3, 3), bool)
    expected[2, 0] = True  # row = image 2, column = caption 0 (true of it, but not its pair)
    np.testing.assert_array_equal(mask, expected)
    # t2i (rows captions) is the transpose: for caption 0, image 2 is the false negative.
    assert mask.T[0, 2] and not mask.T[2, 0]


def test_ground_truth_metrics_pool_both_directions():
    spec, scene = _hand_batch()
    log_w = np.log(np.array([[1.0, 0.5, 1.5], [1.2, 1.0, 0.8], [0.25, 1.75, 1.0]], np.float32))
    i2t = jnp.asarray(log_w)
    aux = {
        'srcl': {'alpha': jnp.float32(0.5), 'log_w': (i2t, i2t.T)},
        'cosmo': {  # i2t: image 2 converts caption 0 (right); t2i: caption 1 converts image 0 (wrong)
            'i2t': {'hardest': jnp.array([1, 2, 0]), 'converted': jnp.array([False, False, True])},
            't2i': {'hardest': jnp.array([1, 0, 0]), 'converted': jnp.array([False, True, False])},
        },
    }
    mask = false_negative_mask_i2t({'caption_spec': jnp.asarray(spec), 'scene': jnp.asarray(scene)})
    metrics = {k: float(v) for k, v in ground_truth_metrics(mask, aux).items()}
    assert metrics['train/false_negative_fraction'] == pytest.approx(1 / 6)
    # The FN pair (2, 0) has weight 0.25 in i2t and, in t2i (log_w.T at [0, 2]), also 0.25.
    np.testing.assert_allclose(metrics['train/srcl/weight_false_negative'], 0.25, rtol=1e-6)
    others = [0.5, 1.5, 1.2, 0.8, 1.75]
    np.testing.assert_allclose(metrics['train/srcl/weight_true_negative'], np.mean(others), rtol=1e-6)
    assert metrics['train/srcl/alpha'] == 0.5
    # 2 conversions, 1 right; the only hardest negative that is truly false: i2t row 2 -> caption 0.
    assert metrics['train/cosmo/num_converted'] == 2 and metrics['train/cosmo/num_true_positive'] == 1
    assert metrics['train/cosmo/precision'] == 0.5
    assert metrics['train/cosmo/num_hardest_false_negative'] == 1 and metrics['train/cosmo/recall'] == 1.0
    assert metrics['train/cosmo/converted_fraction'] == pytest.approx(2 / 6)


def test_no_false_negatives_gives_nan_means_not_errors():
    spec, scene = (array[:2] for array in _hand_batch())
    aux = {'srcl': {'alpha': jnp.float32(1.0), 'log_w': (jnp.zeros((2, 2)), jnp.zeros((2, 2)))}}
    metrics = ground_truth_metrics(
        false_negative_mask_i2t({'caption_spec': jnp.asarray(spec), 'scene': jnp.asarray(scene)}), aux
    )
    assert float(metrics['train/false_negative_fraction']) == 0.0
    assert np.isnan(float(metrics['train/srcl/weight_false_negative']))
    assert float(metrics['train/srcl/weight_true_negative']) == 1.0
