"""The numpy half of the pipeline: the tf.data graph's work for in-memory sources, without TensorFlow.

For a machine with JAX but no TensorFlow (data/backend.py chooses it). The loader is shared
(TrainPipeline.raw_batch draws the order, the crop boxes and the flips), so only what the
tf.data graph does after loading is redone here: the random resized crop
(`crop_and_resize`: tf.image.crop_and_resize's bilinear sampling, in float32 as TF's CPU kernel
computes it), the horizontal flip and the normalisation; then ordered parallel loading and
prefetch with a thread pool (`data.workers` batches in flight, `data.prefetch` more ahead).
Encoded images are not decoded here: such sources need the tf.data path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vlp_jax.data import batch as batch_spec

EXTRAPOLATION_VALUE = 0.0  # tf.image.crop_and_resize's value for samples outside the image


def crop_and_resize(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """float [B, H, W, C], normalised boxes [B, 4] (y0, x0, y1, x1) -> float32 [B, size, size, C].

    tf.image.crop_and_resize(images, boxes, range(B), [size, size], 'bilinear'): output row y
    samples input row y0 (H - 1) + y (y1 - y0) (H - 1) / (size - 1) (the box's centre when size is
    1), bilinear between its floor and ceiling; samples outside [0, H - 1] are 0.
    """
    images = np.asarray(images, np.float32)
    boxes = np.asarray(boxes, np.float32)
    height, width = images.shape[1:3]
    rows, rows_ok, row_lerp = _sample_positions(boxes[:, 0], boxes[:, 2], height, size)  # [B, S]
    cols, cols_ok, col_lerp = _sample_positions(boxes[:, 1], boxes[:, 3], width, size)
    b = np.arange(len(images))[:, None, None]
    top, bottom = rows[0][:, :, None], rows[1][:, :, None]
    left, right = cols[0][:, None, :], cols[1][:, None, :]
    col_lerp = col_lerp[:, None, :, None]
    upper = images[b, top, left] + (images[b, top, right] - images[b, top, left]) * col_lerp
    lower = images[b, bottom, left] + (images[b, bottom, right] - images[b, bottom, left]) * col_lerp
    crops = upper + (lower - upper) * row_lerp[:, :, None, None]
    inside = (rows_ok[:, :, None] & cols_ok[:, None, :])[..., None]
    return np.where(inside, crops, np.float32(EXTRAPOLATION_VALUE)).astype(np.float32)


def _sample_positions(
    start: np.ndarray, end: np.ndarray, extent: int, size: int
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """Along one axis: (floor, ceiling) indices [B, S], whether each sample is inside, and the lerp weight."""
    span = np.float32(extent - 1)
    if size > 1:
        scale = (end - start) * span / np.float32(size - 1)
        where = start[:, None] * span + np.arange(size, dtype=np.float32)[None, :] * scale[:, None]
    else:
        where = (0.5 * (start + end).astype(np.float64) * (extent - 1)).astype(np.float32)[:, None]  # TF: in double
    inside = (where >= 0) & (where <= span)
    low = np.floor(where)
    lerp = (where - low).astype(np.float32)
    low_index = np.clip(low, 0, extent - 1).astype(np.int64)
    high_index = np.clip(np.ceil(where), 0, extent - 1).astype(np.int64)
    return (low_index, high_index), inside, lerp


def flip(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Images [B, H, W, C] with the rows whose `flips` is set mirrored left to right."""
    return np.where(np.asarray(flips, bool)[:, None, None, None], images[:, :, ::-1], images)


def normalise(images: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] -> the model's input range, as the tf.data graph computes it."""
    return ((images - np.float32(batch_spec.PIXEL_MEAN)) / np.float32(batch_spec.PIXEL_STD)).astype(np.float32)


def augment(raw: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A loaded batch (TrainPipeline.raw_batch) -> the batch the tf.data graph would give: every image key
    cropped to its example's box, resized to `size`, flipped where asked and normalised; the
    augmentation keys are consumed."""
    batch = dict(raw)
    boxes, flips = batch.pop('crop_box'), batch.pop('flip')
    assert 'image_bytes' not in batch, 'encoded images need the tf.data path (data/backend.py refuses them)'
    for key in batch_spec.image_keys(tuple(batch)):
        pixels = batch.pop(key).astype(np.float32) / np.float32(255.0)
        batch[key] = normalise(flip(crop_and_resize(pixels, boxes, size), flips))
    return batch


def numpy_batches(pipeline, start_step: int, end_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Augmented batches for steps [start_step, end_step), in order, loaded ahead by a thread pool.

    `data.workers` threads each build whole batches (numpy's array work runs without the GIL), and
    up to `data.workers + data.prefetch` steps are in flight: the train loop finds the next batch
    ready while the device runs the current one.
    """

    def build(step: int) -> dict[str, np.ndarray]:
        return augment(pipeline.raw_batch(step), pipeline.image_size)

    ahead = pipeline.workers + pipeline.prefetch
    pending: deque[Future] = deque()
    next_step = start_step
    with ThreadPoolExecutor(pipeline.workers, thread_name_prefix='vlp_jax-input') as pool:
        try:
            while pending or next_step < end_step:
                while next_step < end_step and len(pending) < ahead:
                    pending.append(pool.submit(build, next_step))
                    next_step += 1
                yield pending.popleft().result()
        finally:  # a consumer that stops early: drop what was not started yet
            for future in pending:
                future.cancel()
