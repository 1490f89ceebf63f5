"""The tf.data half of the pipeline: parallel deterministic loading and TF image augmentation.

Loading a batch is a numpy function of the step (tf.numpy_function, run by
`data.workers` parallel calls, order kept); the random resized crop, flip and
normalisation are TF ops (C++ kernels, no GIL). TensorFlow is told to stay off the
accelerators and to use few threads so the train step keeps the cores.
"""
from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402

from vlp_jax.data.pipeline import PIXEL_MEAN, PIXEL_STD  # noqa: E402
from vlp_jax.data.synthetic_captions import MAX_MENTIONS, MAX_OBJECTS, NUM_ATTRIBUTES  # noqa: E402

_RAW_KEYS = ('image', 'text_ids', 'text_mask', 'index', 'sem', 'caption_spec', 'scene', 'crop_box', 'flip')
_RAW_DTYPES = (tf.uint8, tf.int32, tf.int32, tf.int64, tf.int32, tf.int32, tf.int32, tf.float32, tf.bool)
_TF_CONFIGURED = False


def _configure_tensorflow() -> None:
    """Keep TF away from GPUs/TPUs (JAX owns them) and from most CPU threads."""
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # already initialised by an earlier dataset in this process
        pass
    _TF_CONFIGURED = True


def build_dataset(pipeline, start_step: int, end_step: int) -> tf.data.Dataset:
    _configure_tensorflow()
    batch, size, length = pipeline.local_batch_size, pipeline.image_size, pipeline.tokenizer.max_len
    shapes = {'image': None, 'text_ids': [batch, length], 'text_mask': [batch, length], 'index': [batch],
              'sem': [batch], 'caption_spec': [batch, MAX_MENTIONS, NUM_ATTRIBUTES],
              'scene': [batch, MAX_OBJECTS, NUM_ATTRIBUTES], 'crop_box': [batch, 4], 'flip': [batch]}

    def load(step):
        raw = pipeline.raw_batch(int(step))
        return tuple(raw[key] for key in _RAW_KEYS)

    def load_tf(step):
        values = tf.numpy_function(load, [step], _RAW_DTYPES, stateful=False)
        out = dict(zip(_RAW_KEYS, values))
        for key, shape in shapes.items():
            if shape is not None:
                out[key] = tf.ensure_shape(out[key], shape)
        out['image'] = tf.ensure_shape(out['image'], [batch, None, None, 3])
        return out

    def augment(raw):
        images = tf.cast(raw.pop('image'), tf.float32) / 255.0
        boxes = raw.pop('crop_box')
        images = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size], method='bilinear')
        flip = raw.pop('flip')
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
        raw['image'] = (images - PIXEL_MEAN) / PIXEL_STD
        return raw

    dataset = tf.data.Dataset.range(start_step, end_step)
    dataset = dataset.map(load_tf, num_parallel_calls=pipeline.workers, deterministic=True)
    dataset = dataset.map(augment, num_parallel_calls=pipeline.workers, deterministic=True)
    dataset = dataset.prefetch(pipeline.prefetch)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return dataset.with_options(options)
