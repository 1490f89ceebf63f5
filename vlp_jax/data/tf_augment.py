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

from vlp_jax.data import batch as batch_spec  # noqa: E402

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
    """Augmented batches for steps [start_step, end_step): the pipeline's loaded keys minus augmentation keys."""
    _configure_tensorflow()
    batch, size = pipeline.local_batch_size, pipeline.image_size
    keys = pipeline.loaded_keys
    dtypes = tuple(tf.as_dtype(batch_spec.FIELDS[key].loader_dtype) for key in keys)

    def load(step):
        raw = pipeline.raw_batch(int(step))
        return tuple(raw[key] for key in keys)

    def load_tf(step):
        values = tf.numpy_function(load, [step], dtypes, stateful=False)
        # Ranks from the spec; the batch axis is static, the rest is whatever the source gives.
        return {
            key: tf.ensure_shape(value, [batch] + [None] * (batch_spec.ndim(key) - 1))
            for key, value in zip(keys, values)
        }

    def augment(raw):
        images = tf.cast(raw.pop('image'), tf.float32) / 255.0
        boxes = raw.pop('crop_box')
        images = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size], method='bilinear')
        flip = raw.pop('flip')
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
        raw['image'] = (images - batch_spec.PIXEL_MEAN) / batch_spec.PIXEL_STD
        return raw

    dataset = tf.data.Dataset.range(start_step, end_step)
    dataset = dataset.map(load_tf, num_parallel_calls=pipeline.workers, deterministic=True)
    dataset = dataset.map(augment, num_parallel_calls=pipeline.workers, deterministic=True)
    dataset = dataset.prefetch(pipeline.prefetch)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return dataset.with_options(options)
