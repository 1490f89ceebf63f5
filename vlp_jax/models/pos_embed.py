"""A ViT's position embeddings resized to another patch grid, as ALBEF's `interpolate_pos_embed` does when it
starts a 256-px model from DeiT's 224-px weights: the class row is kept, the square grid of patch rows is
resized by torch's `F.interpolate(mode='bicubic', align_corners=False)`, and flattened back row by row.

Written in numpy so that an import needs no torch. The kernel is torch's (aten/src/ATen/native/UpSample.h):
Keys' cubic convolution with a = -0.75; output pixel o samples the input at src = (o + 0.5) * in / out - 0.5
(half-pixel centres, not clamped: the cubic taps reach one pixel beyond); taps floor(src) - 1 .. floor(src) + 2
are clamped to the edge. The two axes are separable, so the resize is one [out, in] matrix per axis. Computed
in float64 and rounded once to float32 (torch computes in float32: the two agree to float32 rounding).
"""

from __future__ import annotations

import math

import numpy as np

CUBIC_A = -0.75  # torch's (and OpenCV's) cubic convolution coefficient
CLASS_ROWS = 1  # rows before the patch grid: ViT's and CLIP's class token


def cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix of torch's 1-D bicubic resize (align_corners=False), so that a
    resize along an axis is a matmul; each row sums to 1."""
    a = CUBIC_A
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    first = np.floor(src)
    t = src - first

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
    weights = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for k, tap in enumerate(taps):
        np.add.at(weights, (rows, np.clip(first.astype(np.int64) - 1 + k, 0, in_size - 1)), tap)
    return weights


def resize_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """[h, w, c] -> [size, size, c]: torch's bicubic F.interpolate (align_corners=False) on each channel."""
    rows, cols = cubic_weights(grid.shape[0], size), cubic_weights(grid.shape[1], size)
    out = np.einsum('ph,hwc,qw->pqc', rows, grid.astype(np.float64), cols, optimize=True)
    return out.astype(grid.dtype)


def square_grid(rows: int) -> int | None:
    """The side of the square patch grid of a position table of `rows` rows (class row first), else None."""
    patches = rows - CLASS_ROWS
    side = math.isqrt(patches) if patches > 0 else 0
    return side if side and side * side == patches else None


def interpolate_pos_embedding(table: np.ndarray, size: int) -> np.ndarray:
    """[1 + g*g, width] -> [1 + size*size, width]: the class row as it is, the g x g grid of patch rows
    (row-major, as patches are numbered) resized bicubically to size x size (ALBEF's interpolate_pos_embed)."""
    side = square_grid(table.shape[0])
    assert side is not None, f'{table.shape[0]} rows are not a class row and a square grid'
    grid = table[CLASS_ROWS:].reshape(side, side, table.shape[1])
    resized = resize_grid(grid, size).reshape(size * size, table.shape[1])
    return np.concatenate([table[:CLASS_ROWS], resized])
