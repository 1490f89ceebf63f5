"""The tf.data half of the pipeline: parallel deterministic loading, decoding and TF image augmentation.

Loading a batch is a numpy function of the step (tf.numpy_function, run by
`data.workers` parallel calls, order kept); decoding of encoded images, the random
resized crop, flip and normalisation are TF ops (C++ kernels, no GIL). Encoded images
of any size are decoded and cropped one example at a time (unbatch -> map -> batch), the
crop box's aspect ratio taken in pixels; evaluation takes the central square
(aspect-preserving resize to `image_size`, then centre crop). TensorFlow is told to stay off the
accelerators and to use few threads so the train step keeps the cores.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
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


def _tf_dtype(dtype) -> tf.DType:
    return tf.string if dtype is np.object_ else tf.as_dtype(dtype)


def build_dataset(pipeline, start_step: int, end_step: int) -> tf.data.Dataset:
    """Augmented batches for steps [start_step, end_step): the pipeline's loaded keys minus augmentation keys."""
    _configure_tensorflow()
    batch, size = pipeline.local_batch_size, pipeline.image_size
    keys = pipeline.loaded_keys
    dtypes = tuple(_tf_dtype(batch_spec.FIELDS[key].loader_dtype) for key in keys)

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

    def decode_example(raw):
        image = decode_crop(raw.pop('image_bytes'), raw.pop('crop_box'), size)
        raw['image'] = tf.where(raw.pop('flip'), tf.reverse(image, axis=[1]), image)
        raw['image'] = (raw['image'] - batch_spec.PIXEL_MEAN) / batch_spec.PIXEL_STD
        return raw

    def augment(raw):
        boxes, flip = raw.pop('crop_box'), raw.pop('flip')
        for key in batch_spec.image_keys(keys):  # 'image' and any image field: the example's crop and flip
            images = tf.cast(raw.pop(key), tf.float32) / 255.0
            images = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size], method='bilinear')
            images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
            raw[key] = (images - batch_spec.PIXEL_MEAN) / batch_spec.PIXEL_STD
        return raw

    dataset = tf.data.Dataset.range(start_step, end_step)
    dataset = dataset.map(load_tf, num_parallel_calls=pipeline.workers, deterministic=True)
    if pipeline.encoded:
        dataset = dataset.unbatch().map(decode_example, num_parallel_calls=pipeline.workers, deterministic=True)
        dataset = dataset.batch(batch, drop_remainder=True)
    else:
        dataset = dataset.map(augment, num_parallel_calls=pipeline.workers, deterministic=True)
    dataset = dataset.prefetch(pipeline.prefetch)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return dataset.with_options(options)


def decode(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> float32 [H, W, 3] in [0, 1] (greyscale and alpha become RGB)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.cast(image, tf.float32) / 255.0


def decode_crop(data: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image -> its random resized crop, float32 [size, size, 3] in [0, 1].

    A JPEG decodes only the crop window (decode_and_crop_jpeg: most of a large photo is never
    decompressed); other formats decode whole, then crop_and_resize.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        pixels = pixel_box(box, shape) * tf.cast(tf.concat([shape[:2], shape[:2]], 0), tf.float32)
        top, left = tf.cast(tf.floor(pixels[0]), tf.int32), tf.cast(tf.floor(pixels[1]), tf.int32)
        height = tf.clip_by_value(tf.cast(tf.round(pixels[2] - pixels[0]), tf.int32), 1, shape[0] - top)
        width = tf.clip_by_value(tf.cast(tf.round(pixels[3] - pixels[1]), tf.int32), 1, shape[1] - left)
        crop = tf.io.decode_and_crop_jpeg(data, tf.stack([top, left, height, width]), channels=3)
        return tf.image.resize(tf.cast(crop, tf.float32) / 255.0, [size, size], method='bilinear')

    def other():
        image = decode(data)
        box_in_pixels = pixel_box(box, tf.shape(image))
        return tf.image.crop_and_resize(image[None], box_in_pixels[None], [0], [size, size], method='bilinear')[0]

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def pixel_box(box: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """A crop box drawn for a square image, re-fitted to an H x W image: the same area fraction,
    the same aspect ratio in pixels (clipped to the image) and the same relative position."""
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    box_height, box_width = box[2] - box[0], box[3] - box[1]
    area, aspect = box_height * box_width, box_width / box_height
    new_height = tf.minimum(1.0, tf.sqrt(area * width / (aspect * height)))
    new_width = tf.minimum(1.0, area / new_height)
    relative_top = tf.math.divide_no_nan(box[0], 1.0 - box_height)
    relative_left = tf.math.divide_no_nan(box[1], 1.0 - box_width)
    top, left = relative_top * (1.0 - new_height), relative_left * (1.0 - new_width)
    return tf.stack([top, left, top + new_height, left + new_width])


def central_box(shape: tf.Tensor) -> tf.Tensor:
    """The largest centred square of an H x W image, normalised (resize shorter side + centre crop)."""
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    side = tf.minimum(height, width)
    box_height, box_width = side / height, side / width
    top, left = (1.0 - box_height) / 2.0, (1.0 - box_width) / 2.0
    return tf.stack([top, left, top + box_height, left + box_width])


def decodes(data: bytes) -> bool:
    """Whether TF decodes these image bytes (checks one suspect record; not on the hot path)."""
    _configure_tensorflow()
    try:
        decode(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError):
        return False
    return True


def eval_images(encoded: list[bytes], size: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N', size, size, 3] centre crops, indices [N'] of the images that decoded), in order."""
    _configure_tensorflow()
    count = len(encoded)
    positions = tf.data.Dataset.range(count)
    data = tf.data.Dataset.from_tensor_slices(tf.constant(encoded if count else [b''], dtype=tf.string))

    def crop(position, value):
        image = decode(value)
        image = tf.image.crop_and_resize(image[None], central_box(tf.shape(image))[None], [0], [size, size])[0]
        return position, tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)

    dataset = tf.data.Dataset.zip((positions, data.take(count))).map(crop, workers, deterministic=True)
    dataset = dataset.ignore_errors()  # an undecodable eval image is left out (the caller counts it)
    kept, images = [], []
    for position, image in dataset.as_numpy_iterator():
        kept.append(position)
        images.append(image)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(kept, np.int64)
