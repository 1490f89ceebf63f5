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


def crop_and_resize(
    images: np.ndarray, boxes: np.ndarray, size: int, divisor: float = 1.0, flips: np.ndarray | None = None
) -> np.ndarray:
    """[B, H, W, C] pixels, normalised boxes [B, 4] (y0, x0, y1, x1) -> float32 [B, size, size, C].

    tf.image.crop_and_resize(tf.cast(images, tf.float32) / divisor, boxes, range(B), [size, size],
    'bilinear'), then tf.reverse along the width for the examples `flips` marks: output row y samples
    input row y0 (H - 1) + y (y1 - y0) (H - 1) / (size - 1) (the box's centre when size is 1),
    bilinear between its floor and ceiling; samples outside [0, H - 1] are 0. As in TF's kernel, the
    two columns are mixed first, then the two rows, in float32. Separable: the columns each output
    column needs are gathered once (from the pixels as given, converted after the gather: the same
    values, a quarter of the memory traffic for uint8), then the rows; a flip reverses the order in
    which the output columns are gathered, so it costs no pass of its own.
    """
    boxes = np.asarray(boxes, np.float32)
    count, height, width = images.shape[:3]
    (top, bottom), rows_inside, row_lerp = _sample_positions(boxes[:, 0], boxes[:, 2], height, size)  # [B, S]
    (left, right), cols_inside, col_lerp = _sample_positions(boxes[:, 1], boxes[:, 3], width, size)
    if flips is not None:  # output column x of a flipped example is the unflipped crop's column S - 1 - x
        mirrored = np.asarray(flips, bool)[:, None]
        left, right, cols_inside, col_lerp = (
            np.where(mirrored, a[:, ::-1], a) for a in (left, right, cols_inside, col_lerp)
        )
    example = np.arange(count)[:, None]
    by_column = np.asarray(images).transpose(0, 2, 1, 3)  # [B, W, H, C]: index columns like rows
    divisor = np.float32(divisor)
    across = by_column[example, left].astype(np.float32) / divisor  # [B, S, H, C]: the left columns
    rights = by_column[example, right].astype(np.float32) / divisor
    rights -= across
    rights *= col_lerp[:, :, None, None]
    across += rights  # left + (right - left) * lerp
    across = np.ascontiguousarray(across.transpose(0, 2, 1, 3))  # [B, H, S, C]
    crops, bottoms = across[example, top], across[example, bottom]  # [B, S, S, C]
    bottoms -= crops
    bottoms *= row_lerp[:, :, None, None]
    crops += bottoms  # top + (bottom - top) * lerp
    if not (rows_inside.all() and cols_inside.all()):  # a box reaching outside the image (never the pipeline's)
        inside = rows_inside[:, :, None, None] & cols_inside[:, None, :, None]
        crops = np.where(inside, crops, np.float32(EXTRAPOLATION_VALUE))
    return crops


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


def normalise(images: np.ndarray) -> np.ndarray:
    """float32 pixels in [0, 1] -> the model's input range, as the tf.data graph computes it (in place)."""
    images -= np.float32(batch_spec.PIXEL_MEAN)
    images /= np.float32(batch_spec.PIXEL_STD)
    return images


def augment(raw: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A loaded batch (TrainPipeline.raw_batch) -> the batch the tf.data graph would give: every image key
    cropped to its example's box, resized to `size`, flipped where asked and normalised; the
    augmentation keys are consumed."""
    batch = dict(raw)
    boxes, flips = batch.pop('crop_box'), batch.pop('flip')
    assert 'image_bytes' not in batch, 'encoded images need the tf.data path (data/backend.py refuses them)'
    for key in batch_spec.image_keys(tuple(batch)):
        crops = crop_and_resize(batch.pop(key), boxes, size, divisor=255.0, flips=flips)  # uint8 -> [0, 1]
        batch[key] = normalise(crops)
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
