"""Images for the image encoder: any RGB/BGR/gray/RGBA array or PIL image ->
RGB pixels, resized so that the longest side is the model's input size.

The same rules as the PyTorch predictor (:func:`ovsam.apis.inputs.image_to_rgb`
and :func:`~ovsam.apis.inputs.preprocess_image`), in numpy: uint8 as is,
bool -> 0 / 255, 16-bit (uint16, PIL ``I;16*`` and ``I``) scaled from
0..65535, other integers must hold 0..255, floats must hold [0, 1] (PIL
``'F'`` also [0, 255]), other PIL modes converted to RGB; alpha is dropped.

The resize is OpenCV's bilinear ``cv2.resize`` (what mmcv's ``imresize``
calls) re-done in numpy: for uint8 images the same fixed-point arithmetic
(11-bit weights, the rounding of its SIMD rows), bit-exact with ``cv2.resize``
(tested against it); for float images the same sampling in float32 (within
0.05 grey levels).
"""
import os
from typing import Any, Dict, Tuple

import numpy as np

_PIL_16BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def image_to_rgb(image: Any, image_format: str = 'RGB', name: str = 'image') -> np.ndarray:
    """Any supported image -> a NEW (H, W, 3) RGB array, uint8 or float32 in [0, 255].

    Accepts numpy arrays (H x W gray, H x W x 1, H x W x 3 RGB/BGR, H x W x 4
    RGBA/BGRA) and PIL images (``ovsam.apis.inputs.image_to_rgb`` adds torch
    tensors and follows these rules: this is their one owner); values
    are converted by the rules of ``ovsam.apis.inputs``' docstring (16-bit data scaled
    from its full range, floats from [0, 1]). Alpha is dropped (not
    composited). The result never shares memory with ``image``.

    Raises:
        ValueError: naming ``name`` and the fix, for anything the rules do not cover.
    """
    if not isinstance(image_format, str) or image_format.upper() not in ('RGB', 'BGR'):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    fmt = image_format.upper()
    pil_mode = None
    if image is None:
        raise ValueError(f'{name} is None: pass an H x W x 3 RGB array (or a PIL image)')
    if isinstance(image, (str, bytes, os.PathLike)):
        raise ValueError(f'{name} is a path or bytes ({str(image)[:80]!r}), not pixels: read the file first '
                         '(e.g. np.asarray(PIL.Image.open(path).convert("RGB")))')
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with mmcv/matplotlib
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        pil_mode = image.mode
        if pil_mode in _PIL_16BIT + ('I', 'F', '1'):
            arr = np.array(image)
        else:
            arr = np.array(image.convert('RGB'))
        fmt = 'RGB'
    else:
        try:
            arr = np.asarray(image)
        except (TypeError, ValueError) as e:
            raise ValueError(f'{name} could not be read as an array ({e}): pass an H x W x 3 array of numbers') \
                from None
    kind = arr.dtype.kind
    if kind in 'OUSVMm':
        raise ValueError(f'{name} has dtype {arr.dtype} (not pixel numbers; a ragged nested list?): pass an '
                         'H x W x 3 uint8 array, or floats in [0, 1]')
    if kind == 'c':
        raise ValueError(f'{name} holds complex numbers ({arr.dtype}): pass real pixel values '
                         '(e.g. np.abs(x) or x.real, scaled to uint8 or to [0, 1])')
    if arr.ndim == 4:
        raise ValueError(f'{name} has shape {arr.shape}, a batch of images: pass one H x W x C image at a time')
    if arr.ndim not in (2, 3):
        raise ValueError(f'{name} must be an H x W or H x W x C array, got shape {arr.shape}')
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f'{name} is empty (shape {arr.shape}): pass an image with at least one pixel')
    if c not in (1, 3, 4):
        raise ValueError(f'{name} must have 1, 3 or 4 channels on its last axis, got {c} (shape {arr.shape}); '
                         'channel-first arrays must be transposed (np.transpose(x, (1, 2, 0)))')
    arr = _pixel_values(arr, name, pil_mode)
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[:, :, :3]
    if fmt == 'BGR':
        arr = arr[:, :, ::-1]
    out = np.array(arr, order='C', copy=True)  # never a view of the caller's memory
    return out


def _pixel_values(arr: np.ndarray, name: str, pil_mode) -> np.ndarray:
    """uint8 or float32 in 0..255 by the module's rules."""
    kind = arr.dtype.kind
    if kind == 'b':
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8:
        return arr
    if kind == 'f':
        arr = arr.astype(np.float32) if arr.dtype.itemsize <= 4 else arr
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f'{name} contains NaN or Inf at {int((~finite).sum())} of {arr.size} values: replace '
                             'them (e.g. np.nan_to_num(x, nan=0.0)) before passing the image')
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= -1e-6 and hi <= 1 + 1e-6:
            return (np.clip(arr, 0, 1) * 255.0).astype(np.float32)
        if pil_mode == 'F' and lo >= 0 and hi <= 255:
            return arr.astype(np.float32)
        what = "PIL 'F' images must hold values in [0, 1] or [0, 255]" if pil_mode == 'F' else \
            'float images must hold values in [0, 1]'
        raise ValueError(f'{what}; {name} holds [{lo:.6g}, {hi:.6g}]: divide 0..255 data by 255 (or pass '
                         'uint8), and scale other data to [0, 1] yourself (e.g. (x - x.min()) / np.ptp(x))')
    if kind in 'iu':
        lo, hi = int(arr.min()), int(arr.max())
        sixteen = (kind == 'u' and arr.dtype.itemsize == 2) or pil_mode in _PIL_16BIT + ('I', )
        if sixteen:
            if lo < 0 or hi > 65535:
                raise ValueError(f"{name} (PIL mode {pil_mode!r}) holds {lo}..{hi}, outside the 16-bit range "
                                 '0..65535: scale it to uint8, or to floats in [0, 1]')
            return (arr.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.float32)
        if lo < 0 or hi > 255:
            raise ValueError(f'{name} has dtype {arr.dtype} with values {lo}..{hi}: integer images other than '
                             'uint16 must hold 0..255; pass uint16 for 16-bit data, or convert to uint8 or to '
                             'floats in [0, 1]')
        return arr.astype(np.uint8)
    raise ValueError(f'{name} has unsupported dtype {arr.dtype}: pass uint8, uint16, or floats in [0, 1]')


# ---------------------------------------------------------------- resize
def _taps(dst: int, src: int, clamp_weight: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's linear taps: source indices (i0, i1) and the weight of i1.

    ``fx = (dx + 0.5) * scale - 0.5`` in float32. Along x OpenCV zeroes the
    weight where a tap falls off the image (``clamp_weight``); along y it
    keeps the weight and clamps the row index.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = (f - i).astype(np.float32)
    if clamp_weight:
        f[i < 0] = 0
        i[i < 0] = 0
        f[i >= src - 1] = 0
        i[i >= src - 1] = src - 1
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), f


def _fixed(w: np.ndarray) -> np.ndarray:
    """``saturate_cast<short>(w * 2048)`` (INTER_RESIZE_COEF_SCALE)."""
    return np.clip(np.rint(w * np.float32(2048)), -32768, 32767).astype(np.int64)


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)`` in numpy.

    ``img``: (H, W, C) uint8 (fixed point, bit-exact) or float32.
    """
    h, w = img.shape[:2]
    x0, x1, fx = _taps(width, w, True)
    y0, y1, fy = _taps(height, h, False)
    if img.dtype == np.uint8:
        src = img.astype(np.int64)
        rows = src[:, x0] * _fixed(1 - fx)[None, :, None] + src[:, x1] * _fixed(fx)[None, :, None]
        b0, b1 = _fixed(1 - fy)[:, None, None], _fixed(fy)[:, None, None]
        # vertical pass as OpenCV's SIMD rows: (S >> 4) * b >> 16 per row, then (+2) >> 2
        out = (((rows[y0] >> 4) * b0 >> 16) + ((rows[y1] >> 4) * b1 >> 16) + 2) >> 2
        return np.clip(out, 0, 255).astype(np.uint8)
    src = img.astype(np.float32)
    rows = src[:, x0] * (1 - fx)[None, :, None] + src[:, x1] * fx[None, :, None]
    return (rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None]).astype(np.float32)


def resize_longest_side(rgb: np.ndarray, size: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Resize ``rgb`` so that its longest side is ``size`` (ratio kept, as the
    PyTorch predictor and mmdet's ``Resize(keep_ratio=True)``).

    Returns the resized image as float32 (the image encoder's ``image``) and
    the frame meta: ``ori_shape``, ``img_shape``, ``scale_factor`` (sx, sy).
    """
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    resized = rgb if (nh, nw) == (h, w) else resize_bilinear(rgb, nw, nh)
    meta = dict(ori_shape=(h, w), img_shape=(nh, nw), scale_factor=(nw / w, nh / h), input_size=size)
    return np.ascontiguousarray(resized, dtype=np.float32), meta
