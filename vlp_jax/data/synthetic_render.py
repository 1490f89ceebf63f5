"""The shapes world's renderer: scene plans (object geometry, colours, background draws) to uint8 images.

Split from synthetic.py so the world's sampling and caption logic read apart from the pixel code; every
function here is elementwise float32 numpy, so a row never depends on the rest of its batch.
"""

from __future__ import annotations

import numpy as np

from vlp_jax.data.synthetic_captions import COLOUR, GRID, MAX_OBJECTS, NOT_SAID, POSITION, SHAPE, SHAPES, SIZE

# Object appearance. Saturated colours on muted backgrounds keep objects visible.
COLOUR_RGB = np.array(
    [(225, 30, 30), (40, 195, 60), (40, 90, 235), (245, 225, 40), (160, 60, 220), (250, 140, 20), (245, 245, 245)],
    np.uint8,
)
_RADIUS_FRACTION = (0.25, 0.42)  # object radius / grid-cell size, per SIZES
_JITTER_FRACTION = 0.8  # share of the in-cell slack used to jitter centres
_SHAPE_EXTENT = {'square': 0.8, 'diamond': 1.1, 'cross_arm': 0.33, 'triangle_base': 0.75, 'triangle_slope': 1.75}

# Background: grey in [lo, hi] with a small tint, optional texture of amplitude in [lo, hi].
_BG_GREY = (55.0, 105.0)
_BG_TINT = 12.0
_TEXTURE_AMPLITUDE = (8.0, 20.0)
_STRIPE_PERIOD = (6.0, 14.0)  # pixels
_STRIPE_DIRECTIONS = np.array([(1.0, 0.0), (0.0, 1.0), (0.7071, 0.7071), (0.7071, -0.7071)], np.float32)
_NOISE_CELLS = 8  # blocky noise: NOISE_CELLS x NOISE_CELLS random levels
_PLAIN, _STRIPES, _NOISE = range(3)

BG_DRAWS = 1 + 1 + 3 + 1 + 3 + _NOISE_CELLS * _NOISE_CELLS  # kind, grey, tint, amp, stripes, noise


class RenderPlans:
    """Per-batch render parameters, filled one example at a time and rendered at once."""

    def __init__(self, size: int, textured: float):
        self.textured = textured
        self.geometry = np.zeros((size, MAX_OBJECTS, 3), np.float32)  # cx, cy, radius
        self.shape = np.full((size, MAX_OBJECTS), NOT_SAID, np.int64)
        self.colour = np.zeros((size, MAX_OBJECTS), np.int64)
        self.bg = np.zeros((size, BG_DRAWS), np.float32)

    def add(self, b: int, objects, jitter, image_size: int, bg_draws: np.ndarray) -> None:
        cell = image_size / GRID
        for k, (obj, (jx, jy)) in enumerate(zip(objects, jitter)):
            radius = _RADIUS_FRACTION[obj[SIZE]] * cell
            slack = _JITTER_FRACTION * max(cell / 2 - radius, 0.0)
            row, col = divmod(obj[POSITION], GRID)
            self.geometry[b, k] = ((col + 0.5) * cell + jx * slack, (row + 0.5) * cell + jy * slack, radius)
            self.shape[b, k], self.colour[b, k] = obj[SHAPE], obj[COLOUR]
        self.bg[b] = bg_draws

    def render(self, image_size: int) -> np.ndarray:
        """uint8 [B, S, S, 3]; elementwise float32 ops only, so a row never depends on the batch."""
        coords = np.arange(image_size, dtype=np.float32) + np.float32(0.5)
        xs, ys = coords[None, None, :], coords[None, :, None]
        bg = self.bg
        kind_u = bg[:, 0]
        kind = np.where(kind_u < self.textured, np.where(kind_u < self.textured / 2, _STRIPES, _NOISE), _PLAIN)
        grey = _BG_GREY[0] + bg[:, 1] * (_BG_GREY[1] - _BG_GREY[0])
        base = grey[:, None] + (2 * bg[:, 2:5] - 1) * _BG_TINT
        amp = _TEXTURE_AMPLITUDE[0] + bg[:, 5] * (_TEXTURE_AMPLITUDE[1] - _TEXTURE_AMPLITUDE[0])
        texture = np.zeros((len(bg), image_size, image_size), np.float32)
        sel = np.flatnonzero(kind == _STRIPES)
        if sel.size:
            period = _STRIPE_PERIOD[0] + bg[sel, 6] * (_STRIPE_PERIOD[1] - _STRIPE_PERIOD[0])
            direction = _STRIPE_DIRECTIONS[(bg[sel, 7] * len(_STRIPE_DIRECTIONS)).astype(int)]
            t = (xs * direction[:, 0, None, None] + ys * direction[:, 1, None, None]) / period[:, None, None] + bg[
                sel, 8, None, None
            ]
            texture[sel] = np.where(t % 1.0 < 0.5, 1.0, -1.0)
        sel = np.flatnonzero(kind == _NOISE)
        if sel.size:
            cells = (np.arange(image_size) * _NOISE_CELLS) // image_size
            levels = 2 * bg[sel, -(_NOISE_CELLS**2) :].reshape(-1, _NOISE_CELLS, _NOISE_CELLS) - 1
            texture[sel] = levels[:, cells[:, None], cells[None, :]]
        # Value range stays inside [0, 255] by the _BG_* / _TEXTURE_* constants, so no clip.
        image = (base[:, None, None, :] + (amp[:, None, None] * texture)[..., None]).astype(np.uint8)
        self._paint_objects(image, coords)
        return image

    def _paint_objects(self, image: np.ndarray, coords: np.ndarray) -> None:
        """Paint every object's mask pixels, evaluated on a small window around the object."""
        size = image.shape[1]
        window = min(size, int(np.ceil(2 * self.geometry[..., 2].max(initial=0.0))) + 2)
        b_idx, k_idx = np.nonzero(self.shape >= 0)
        cx, cy, r = (self.geometry[b_idx, k_idx, j] for j in range(3))
        x0 = np.clip(np.floor(cx - window / 2).astype(int), 0, size - window)
        y0 = np.clip(np.floor(cy - window / 2).astype(int), 0, size - window)
        local = coords[:window]
        shapes, colours = self.shape[b_idx, k_idx], COLOUR_RGB[self.colour[b_idx, k_idx]]
        for s in range(len(SHAPES)):
            sel = np.flatnonzero(shapes == s)
            if sel.size:
                rs = r[sel, None, None]
                u = (local[None, None, :] + x0[sel, None, None] - cx[sel, None, None]) / rs
                v = (local[None, :, None] + y0[sel, None, None] - cy[sel, None, None]) / rs
                n, yy, xx = np.nonzero(shape_mask(s, u, v))
                # Objects never overlap (distinct grid cells), so scatter order is irrelevant.
                image[b_idx[sel][n], y0[sel][n] + yy, x0[sel][n] + xx] = colours[sel][n]


def shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of a unit-radius shape in object coordinates (u right, v down); all within |u|,|v| <= 1."""
    au, av = np.abs(u), np.abs(v)
    name = SHAPES[shape]
    if name == 'circle':
        return u * u + v * v <= 1.0
    if name == 'square':
        return np.maximum(au, av) <= _SHAPE_EXTENT['square']
    if name == 'diamond':
        return (au + av <= _SHAPE_EXTENT['diamond']) & (au <= 1.0) & (av <= 1.0)
    if name == 'triangle':  # apex up at v = -1, base at v = triangle_base
        return (v <= _SHAPE_EXTENT['triangle_base']) & (au <= (v + 1.0) / _SHAPE_EXTENT['triangle_slope'])
    arm = _SHAPE_EXTENT['cross_arm']  # cross
    return ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0))
