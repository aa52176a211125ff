"""Low-res mask logits -> masks at the original image size, in numpy.

The PyTorch predictor's post-processing (:func:`ovsam.models.common.postprocess_masks`):
bilinear (``align_corners=False``) up to the padded input frame, crop the
padding, bilinear to the original size; then SAM's stability score and the
mean foreground probability. Done a few prompts at a time so that only the
boolean masks are ever held for all prompts at full size (full-size float
logits only on request).
"""
from typing import Dict, Tuple

import numpy as np

#: full-size float values processed at once (bounds the temporary memory: 128 MiB)
CHUNK_VALUES = 1 << 25


def _taps(out_size: int, in_size: int, keep: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear source indices and weights (align_corners=False) of
    the first ``keep`` outputs of an ``in_size`` -> ``out_size`` resize."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(keep, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def _resize(x: np.ndarray, out_hw: Tuple[int, int], keep_hw: Tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, keep_h, keep_w): the top-left part of a bilinear resize
    to ``out_hw``; along x first, then y (PyTorch's order), in place where it can."""
    y0, y1, wy0, wy1 = _taps(out_hw[0], x.shape[1], keep_hw[0])
    x0, x1, wx0, wx1 = _taps(out_hw[1], x.shape[2], keep_hw[1])
    rows = np.take(x, x0, axis=2)
    rows *= wx0
    tmp = np.take(x, x1, axis=2)
    tmp *= wx1
    rows += tmp
    out = rows[:, y0]
    out *= wy0[:, None]
    tmp = rows[:, y1]
    tmp *= wy1[:, None]
    out += tmp
    return out


def upscale_logits(low_res: np.ndarray, input_size: int, img_shape: Tuple[int, int],
                   ori_shape: Tuple[int, int]) -> np.ndarray:
    """(N, 4E, 4E) low-res logits -> (N, H, W) float32 logits at the original size."""
    x = _resize(low_res.astype(np.float32, copy=False), (input_size, input_size), tuple(img_shape))
    return _resize(x, tuple(ori_shape), tuple(ori_shape))


def postprocess(low_res: np.ndarray, input_size: int, img_shape: Tuple[int, int], ori_shape: Tuple[int, int],
                return_logits: bool = False) -> Dict[str, np.ndarray]:
    """Masks (N, H, W) bool, ``stability`` (N,) (SAM's, offset 1), ``confidence``
    (N,) (mean probability inside the mask) and, on request, ``logits`` (N, H, W)."""
    n = low_res.shape[0]
    h, w = ori_shape
    masks = np.zeros((n, h, w), bool)
    stability = np.zeros(n, np.float32)
    confidence = np.zeros(n, np.float32)
    logits = np.zeros((n, h, w), np.float32) if return_logits else None
    step = max(1, CHUNK_VALUES // max(1, h * w))
    for s in range(0, n, step):
        full = upscale_logits(low_res[s:s + step, 0], input_size, img_shape, ori_shape)
        fg = full > 0
        masks[s:s + step] = fg
        # SAM's stability score: IoU of the masks thresholded at +1 and -1
        inter = np.count_nonzero(full > 1.0, axis=(1, 2)).astype(np.float32)
        union = np.count_nonzero(full > -1.0, axis=(1, 2)).astype(np.float32)
        with np.errstate(invalid='ignore', divide='ignore'):
            stability[s:s + step] = np.nan_to_num(inter / union, nan=0.0)
        prob = full.copy() if logits is not None else full
        np.negative(prob, out=prob)
        with np.errstate(over='ignore'):
            np.exp(prob, out=prob)
        prob += 1
        np.reciprocal(prob, out=prob)  # sigmoid, in place
        count = np.count_nonzero(fg, axis=(1, 2))
        confidence[s:s + step] = np.sum(prob, axis=(1, 2), where=fg) / np.maximum(count, 1)
        if logits is not None:
            logits[s:s + step] = full
    out = dict(masks=masks, stability=stability, confidence=confidence)
    if logits is not None:
        out['logits'] = logits
    return out
