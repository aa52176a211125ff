"""Prompt checks of the runtime, in numpy (the rules of the PyTorch
predictor's :func:`ovsam.apis.inputs.check_prompt_arrays`).

``point_coords`` (P, 2) / (N, P, 2) x, y pixels; ``point_labels`` (P,) / (N, P)
of 1 (foreground), 0 (background), -1 (padding), all 1 when not given;
``box`` (4,) / (N, 4) corners with x2 > x1 and y2 > y1; ``mask_input``
(N, 1, 4E, 4E) logits with |value| <= :data:`MAX_MASK_LOGIT`. Every given
prompt type needs the same N >= 1; a prompt needs a foreground point, a box
or a mask input. Values must be real and finite; points and boxes may lie
up to :data:`BORDER_TOL` pixels beyond the image border.
"""
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

BORDER_TOL = 1.0
MAX_MASK_LOGIT = 1e6


class PromptError(ValueError):
    """A prompt the model cannot use; the message names the argument and the fix."""


class Prompts(NamedTuple):
    """Checked prompts of N prompts in original pixels (None where not given)."""
    point_coords: Optional[np.ndarray]  #: (N, P, 2) float32
    point_labels: Optional[np.ndarray]  #: (N, P) int64 in {-1, 0, 1}
    boxes: Optional[np.ndarray]  #: (N, 4) float32
    mask_input: Optional[np.ndarray]  #: (N, 1, 4E, 4E) float32

    def __len__(self) -> int:
        return next(int(a.shape[0]) for a in self if a is not None)


def real_array(x: Any, name: str, allow_bool: bool = False) -> np.ndarray:
    """``x`` as a finite float64 array, or a :class:`PromptError` naming ``name``."""
    try:
        arr = np.array(x)
    except (TypeError, ValueError) as e:
        raise PromptError(f'{name} could not be read as a numeric array ({e}); give a list or array of '
                          'numbers with one row per prompt') from None
    kind = arr.dtype.kind
    if kind == 'c':
        raise PromptError(f'{name} holds complex numbers: give real numbers')
    if kind == 'b' and not allow_bool:
        raise PromptError(f'{name} holds booleans, not numbers: give pixel coordinates')
    if kind == 'O':
        if any(v is None for v in arr.ravel()):
            raise PromptError(f'{name} holds None: give a number for every coordinate (or leave out the prompt)')
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise PromptError(f'{name} must hold numbers only ({e}); remove None / strings / nested lists of '
                              'unequal length') from None
        kind = 'f'
    if kind not in 'biuf':
        raise PromptError(f'{name} must be numeric, got dtype {arr.dtype} ({type(x).__name__}); give numbers')
    arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise PromptError(f'{name} contains NaN or Inf (first at index {bad}); remove those prompts or give '
                          'finite values')
    return arr


def _outside(shape: Tuple[int, int]) -> str:
    return f'the image (h={shape[0]}, w={shape[1]} pixels)'


def _points(point_coords, point_labels, shape) -> Tuple[np.ndarray, np.ndarray]:
    coords = real_array(point_coords, 'point_coords')
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2:
        hint = '; one point is [[x, y]]' if np.shape(point_coords) == (2, ) else ''
        raise PromptError(f'point_coords must have shape (P, 2) for one prompt or (N, P, 2) for N prompts, as '
                          f'x, y in pixels; got shape {tuple(np.shape(point_coords))}{hint}')
    if coords.shape[0] == 0 or coords.shape[1] == 0:
        raise PromptError(f'point_coords holds no points (shape {tuple(coords.shape)}): give at least one point '
                          'per prompt, or leave point_coords out')
    h, w = shape
    out = ((coords[..., 0] < -BORDER_TOL) | (coords[..., 1] < -BORDER_TOL) | (coords[..., 0] > w + BORDER_TOL)
           | (coords[..., 1] > h + BORDER_TOL))
    if out.any():
        n, p = np.argwhere(out)[0].tolist()
        raise PromptError(f'point_coords: point {p} of prompt {n} at ({coords[n, p, 0]:.6g}, {coords[n, p, 1]:.6g}) '
                          f'is outside {_outside(shape)}; points are x, y (column, row): clip them or check '
                          'their coordinate frame')
    if point_labels is None:
        return coords.astype(np.float32), np.ones(coords.shape[:2], dtype=np.int64)
    labels = real_array(point_labels, 'point_labels', allow_bool=True)
    if labels.ndim == 1 and coords.shape[0] == 1:
        labels = labels[None]
    if labels.shape != coords.shape[:2]:
        raise PromptError(f'point_labels must have shape {tuple(coords.shape[:2])} to match point_coords (one '
                          f'label per point), got {tuple(np.shape(point_labels))}')
    if not np.isin(labels, (-1, 0, 1)).all():
        bad = sorted(set(labels[~np.isin(labels, (-1, 0, 1))].ravel().tolist()))[:6]
        raise PromptError(f'point_labels must be 1 (foreground), 0 (background) or -1 (padding), got values {bad}')
    return coords.astype(np.float32), labels.astype(np.int64)


def _boxes(box, shape) -> np.ndarray:
    boxes = real_array(box, 'box')
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise PromptError(f'box must have shape (4,) or (N, 4) as x1, y1, x2, y2 in pixels, got shape '
                          f'{tuple(np.shape(box))}')
    if boxes.shape[0] == 0:
        raise PromptError('box holds zero prompts: give at least one box, or leave it out')
    bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
    if len(bad):
        raise PromptError(f'box: degenerate boxes (x2 <= x1 or y2 <= y1) at indices {bad[:5].tolist()}, e.g. '
                          f'{boxes[bad[0]].tolist()}: boxes are x1, y1, x2, y2 corners in pixels, not x, y, w, h')
    h, w = shape
    out = ((boxes[:, 0] < -BORDER_TOL) | (boxes[:, 1] < -BORDER_TOL) | (boxes[:, 2] > w + BORDER_TOL)
           | (boxes[:, 3] > h + BORDER_TOL))
    if out.any():
        i = int(np.nonzero(out)[0][0])
        raise PromptError(f'box: box {i} {boxes[i].tolist()} is outside {_outside(shape)}: clip the boxes to the '
                          'image or check their coordinate frame')
    return boxes.astype(np.float32)


def _masks(mask_input, size) -> np.ndarray:
    masks = real_array(mask_input, 'mask_input')
    if masks.ndim == 2:
        masks = masks[None, None]
    elif masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != tuple(size):
        raise PromptError(f'mask_input must be low-res logits of shape (N, 1, {size[0]}, {size[1]}) (the '
                          f'low_res_logits of an earlier prediction), got shape {tuple(np.shape(mask_input))}')
    if masks.shape[0] == 0:
        raise PromptError(f'mask_input holds zero prompts: give one (1, {size[0]}, {size[1]}) map per prompt')
    big = float(np.abs(masks).max())
    if big > MAX_MASK_LOGIT:
        raise PromptError(f'mask_input holds values up to {big:.3g}, beyond +-{MAX_MASK_LOGIT:g}: it must hold '
                          'mask logits (e.g. the low_res_logits of an earlier prediction): clip them, e.g. '
                          'np.clip(x, -20, 20)')
    return masks.astype(np.float32)


def check_prompts(point_coords, point_labels, box, mask_input, image_shape: Tuple[int, int],
                  mask_input_size: Tuple[int, int]) -> Prompts:
    """Check prompts given in original image pixels (module rules).

    Returns:
        :class:`Prompts`, fresh arrays.
    Raises:
        PromptError (a ``ValueError``) naming the argument and the fix.
    """
    shape = tuple(int(s) for s in image_shape)
    counts = {}
    coords = labels = boxes = masks = None
    if point_coords is not None:
        coords, labels = _points(point_coords, point_labels, shape)
        counts['point_coords'] = coords.shape[0]
    elif point_labels is not None:
        raise PromptError('point_labels given without point_coords: give the points too, or leave the labels out')
    if box is not None:
        boxes = _boxes(box, shape)
        counts['box'] = boxes.shape[0]
    if mask_input is not None:
        masks = _masks(mask_input, mask_input_size)
        counts['mask_input'] = masks.shape[0]
    if not counts:
        raise PromptError('no prompt: give point_coords, box and/or mask_input')
    if len(set(counts.values())) > 1:
        shown = ', '.join(f'{k} has {v}' for k, v in counts.items())
        raise PromptError(f'prompt counts differ ({shown} prompts): every prompt type needs one row per prompt '
                          '(the same N); repeat a shared box or point per prompt')
    if coords is not None and boxes is None and masks is None:
        no_fg = ~(labels == 1).any(1)
        if no_fg.any():
            i = int(np.nonzero(no_fg)[0][0])
            raise PromptError(f'prompt {i} has no foreground point (point_labels {labels[i].tolist()}): background '
                              '(0) and padding (-1) points only say where the object is NOT; add a point with '
                              'label 1, or a box or mask_input')
    return Prompts(coords, labels, boxes, masks)
