"""The image check of `prepare`: bytes in, the bytes to store (or why not) out.

Every image is decoded once, whole. Images the tf.data graph decodes as they are (JPEG, PNG, WebP,
GIF, BMP in the usual modes) are stored byte for byte. Anything else Pillow or tifffile reads (TIFF,
multi-page files, 16-bit, 32-bit integer and float pixels, CMYK) is converted to an 8-bit RGB PNG,
and the report says how (`converted`): the first page of a multi-page file; 16-bit integers scaled by
1/257 as TF scales a 16-bit PNG; floats in [0, 1] times 255, other ranges stretched from their min and max.
An image that decodes but cannot become RGB (a 5-channel TIFF, complex pixels, a compression tifffile
cannot decode) is `unsupported_image` with the reason; `not_an_image` is kept for bytes that no reader
recognises, `corrupt_image` for an image whose data is damaged.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

FORMAT_ALIASES = {'mpo': 'jpeg'}  # camera JPEGs that PIL names by their multi-picture extension
# The Pillow modes tf.io.decode_image(channels=3, dtype=uint8) reads correctly, per format: stored as given.
TF_READS = {
    'jpeg': ('L', 'RGB'),
    'png': ('1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'I;16', 'I;16B', 'I'),
    'webp': ('RGB', 'RGBA'),
    'gif': ('L', 'P', 'RGB', 'RGBA'),
    'bmp': ('1', 'L', 'P', 'RGB', 'RGBA'),
}
RAW_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F')  # Pillow modes whose pixels are read as numbers
TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')  # classic and BigTIFF, both byte orders
DETAIL_CHARS = 200


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    """What to store (None: dropped), its format, why it was dropped, and how it was converted or failed."""

    data: bytes | None
    format: str = ''
    reason: str | None = None
    detail: str = ''


class Unsupported(Exception):
    """An image that decodes but has no 8-bit RGB form here."""


def _short(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'[:DETAIL_CHARS]


def check_image(data: bytes) -> CheckedImage:
    """Decodes the whole image once: bytes kept as given, converted to PNG, or dropped with a reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            name = (image.format or '').lower()
            image_format = FORMAT_ALIASES.get(name, name)
            frames = int(getattr(image, 'n_frames', 1) or 1)
            image.load()
            if image.width < 1 or image.height < 1:
                return CheckedImage(None, reason='corrupt_image', detail='the image has no pixels')
            if image.mode in TF_READS.get(image_format, ()):
                return CheckedImage(data, image_format)
            array, how = _pil_pixels(image)
            how = f'{image_format.upper() or "image"} in mode {image.mode}{_pages(frames)}, {how}'
    except UnidentifiedImageError as error:
        if data[:4] in TIFF_MAGIC:
            return _from_tiff(data, error)
        return CheckedImage(None, reason='not_an_image', detail='no image reader recognises these bytes')
    except Unsupported as error:
        return CheckedImage(None, reason='unsupported_image', detail=str(error))
    except Exception as error:  # truncated or damaged data, decompression bombs: PIL raises many types
        if data[:4] in TIFF_MAGIC:
            return _from_tiff(data, error)
        return CheckedImage(None, reason='corrupt_image', detail=_short(error))
    return _as_png(array, how)


def _pages(count: int) -> str:
    return f', page 1 of {count}' if count > 1 else ''


def _pil_pixels(image) -> tuple[np.ndarray, str]:
    """The first frame's pixels: numbers for RAW_MODES, else Pillow's own RGB conversion (CMYK, YCbCr, ...)."""
    image.seek(0)
    if image.mode in RAW_MODES:
        return to_rgb8(np.asarray(image))
    try:
        return np.asarray(image.convert('RGB')), 'converted to RGB'
    except (ValueError, OSError) as error:
        raise Unsupported(f'mode {image.mode} has no RGB conversion ({error})') from None


def _from_tiff(data: bytes, pil_error: BaseException) -> CheckedImage:
    """A TIFF Pillow cannot read (float or signed pixels, BigTIFF): the first page through tifffile."""
    try:
        import tifffile
    except ImportError:
        return CheckedImage(None, reason='unsupported_image', detail=f'TIFF Pillow cannot read ({_short(pil_error)})')
    try:
        tiff = tifffile.TiffFile(io.BytesIO(data))
    except Exception as error:  # not even its directory reads: damaged
        return CheckedImage(None, reason='corrupt_image', detail=f'TIFF: {_short(error)}')
    try:
        with tiff:
            if not len(tiff.pages):
                return CheckedImage(None, reason='corrupt_image', detail='TIFF: it holds no page')
            page = tiff.pages[0]
            pages, axes = len(tiff.pages), str(page.axes)
            array = page.asarray()
        if array.ndim == 3 and axes.startswith('S'):  # planar RGB: samples first
            array = np.moveaxis(array, 0, -1)
        rgb, how = to_rgb8(array)
    except Unsupported as error:
        return CheckedImage(None, reason='unsupported_image', detail=f'TIFF: {error}')
    except tifffile.TiffFileError as error:  # a damaged structure
        return CheckedImage(None, reason='corrupt_image', detail=f'TIFF: {_short(error)}')
    except Exception as error:  # a compression or layout tifffile cannot decode
        return CheckedImage(None, reason='unsupported_image', detail=f'TIFF: {_short(error)}')
    return _as_png(rgb, f'{array.dtype} TIFF{_pages(pages)}, {how}')


def to_rgb8(array: np.ndarray) -> tuple[np.ndarray, str]:
    """[H, W] or [H, W, 1|3|4] pixels of any real dtype -> (uint8 [H, W, 3], how they were scaled)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise Unsupported(f'pixels of shape {array.shape} are neither grey, RGB nor RGBA')
    if array.dtype.kind not in 'buif':
        raise Unsupported(f'{array.dtype} pixels have no RGB form')
    if array.ndim == 3:
        array = array[..., :3]  # alpha dropped
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise Unsupported('no pixel value is finite')
    lo, hi = float(values[finite].min()), float(values[finite].max())
    kind = array.dtype
    if kind == np.uint8:
        scaled, how = values, 'kept'
    elif kind == np.bool_:
        scaled, how = values * 255, 'booleans as 0 and 255'
    elif kind == np.uint16 or (kind.kind in 'iu' and lo >= 0 and 255 < hi <= 65535):
        scaled, how = values / 257, f'{kind} scaled by 1/257'
    elif kind.kind in 'iu' and lo >= 0 and hi <= 255:
        scaled, how = values, f'{kind} values 0-255 kept'
    elif kind.kind == 'f' and lo >= 0 and hi <= 1:
        scaled, how = values * 255, f'{kind} values in [0, 1] times 255'
    else:
        span = hi - lo if hi > lo else 1.0
        scaled, how = (values - lo) / span * 255, f'{kind} values {lo:g}..{hi:g} stretched to 0-255'
    if not finite.all():
        how += ' (non-finite values as 0)'
    pixels = np.where(finite, np.clip(np.rint(scaled), 0, 255), 0).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels, how


def _as_png(pixels: np.ndarray, how: str) -> CheckedImage:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), 'RGB').save(buffer, format='PNG')
    return CheckedImage(buffer.getvalue(), 'png', None, f'converted to an 8-bit RGB PNG from {how}')
