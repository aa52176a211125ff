"""Inputs of the interactive tools: images to RGB arrays and the model's input
frame, prompts checked and moved to the input frame, option checks.

These are the conversions and checks of :class:`~ovsam.apis.OVSAMPredictor`
(and so of the automatic generator, the demos and the ONNX helpers), kept out
of the predictor so that it only holds image state. Both prompt entry points
(``predict`` in original pixels, ``predict_torch`` in the input frame) go
through one check, :func:`check_prompt_arrays`.

Images (:func:`image_to_rgb`) become a NEW (H, W, 3) RGB array, uint8 or
float32 in 0..255 (the caller's array is never kept), by these rules:

============================================  ==========================================
input                                         conversion
============================================  ==========================================
uint8                                         as is
bool (PIL mode ``'1'``)                       False -> 0, True -> 255
uint16 (PIL ``'I;16'``, ``'I;16B'``, ...)     x * 255 / 65535 (the full 16-bit range)
PIL ``'I'`` (32-bit ints, how Pillow opens    x * 255 / 65535; values must be 0..65535
some 16-bit files)
other integer arrays (int8..int64, uint32)    values must be 0..255 (8-bit data in a wider type)
float arrays / tensors (float16/32/64)        values must be in [0, 1]; x * 255
PIL ``'F'`` (32-bit floats)                   [0, 1]: x * 255; else values in [0, 255]: as is
other PIL modes (L, P, RGBA, LA, CMYK, ...)   ``image.convert('RGB')``
============================================  ==========================================

Anything else is a ``ValueError`` that names the input and the fix: empty
images, channel counts other than 1, 3 or 4, complex / object / string
arrays, NaN or Inf, values outside the rules above, batches (4-D arrays).
"""
import numbers
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovsam_onnx.image import image_to_rgb as _numpy_image_to_rgb

from ..models.prompts import PromptError

ArrayLike = Union[np.ndarray, Sequence, Tensor]

#: tolerance (pixels) for boxes and points on the image border after rounding
BORDER_TOL = 1.0
#: largest |value| accepted in ``mask_input`` (the model's own low-res logits stay far below)
MAX_MASK_LOGIT = 1e6


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------- images
def _tensor_to_numpy(t: Tensor, name: str) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_complex():
        raise ValueError(f'{name} is a complex tensor ({t.dtype}): pass real pixel values')
    if t.dtype in (torch.bfloat16, ):
        t = t.float()
    try:
        return t.numpy().copy()
    except TypeError:  # dtypes numpy lacks (e.g. torch.uint16 on old numpy)
        return t.to(torch.int64).numpy()


def image_to_rgb(image: Any, image_format: str = 'RGB', name: str = 'image') -> np.ndarray:
    """Any supported image -> a NEW (H, W, 3) RGB array, uint8 or float32 in [0, 255].

    Accepts numpy arrays (H x W gray, H x W x 1, H x W x 3 RGB/BGR, H x W x 4
    RGBA/BGRA), PIL images and torch tensors laid out as numpy arrays; values
    are converted by the rules of this module's docstring (16-bit data scaled
    from its full range, floats from [0, 1]). Alpha is dropped (not
    composited). The result never shares memory with ``image``.

    The rules themselves live in :func:`ovsam_onnx.image.image_to_rgb` (numpy
    only, so the torch-free runtime applies exactly the same ones); this adds
    torch tensors.

    Raises:
        ValueError: naming ``name`` and the fix, for anything the rules do not cover.
    """
    if isinstance(image, Tensor):
        image = _tensor_to_numpy(image, name)
    return _numpy_image_to_rgb(image, image_format, name)


def preprocess_image(model: torch.nn.Module, rgb: np.ndarray, size: int,
                     device: Union[str, torch.device]) -> Tuple[Tensor, Dict[str, Any]]:
    """An RGB image -> the model's (1, 3, size, size) input and its frame meta.

    The longest side is resized to ``size`` (bilinear, ratio kept, as mmdet's
    ``Resize(keep_ratio=True)``); the model's own data preprocessor normalises
    (its mean, std and channel order) and pads to ``size`` x ``size``.
    """
    import mmcv
    from mmdet.structures import DetDataSample
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    resized = rgb if (nh, nw) == (h, w) else mmcv.imresize(rgb, (nw, nh), interpolation='bilinear',
                                                          backend='cv2')
    if resized.ndim == 2:  # cv2 drops a singleton channel axis of 1-pixel images
        resized = resized[:, :, None]
    # mmdet pipelines hand BGR images to the data preprocessor, which then
    # applies the model's own channel conversion.
    bgr = np.ascontiguousarray(resized[:, :, ::-1])
    tensor = torch.from_numpy(bgr).permute(2, 0, 1).contiguous()
    sx, sy = nw / w, nh / h
    sample = DetDataSample(metainfo=dict(img_shape=(nh, nw), ori_shape=(h, w), scale_factor=(sx, sy)))
    dp = model.data_preprocessor
    inputs = dp(dict(inputs=[tensor], data_samples=[sample]), training=False)['inputs']
    ph, pw = inputs.shape[-2:]
    if ph > size or pw > size:
        raise RuntimeError(f'the data preprocessor padded the image to {(ph, pw)}, beyond the '
                           f'model input {size}x{size}: check pad_size_divisor')
    if (ph, pw) != (size, size):
        inputs = F.pad(inputs, (0, size - pw, 0, size - ph), value=float(getattr(dp, 'pad_value', 0)))
    meta = dict(img_shape=(nh, nw), ori_shape=(h, w), scale_factor=(sx, sy), batch_input_shape=(size, size),
                pad_shape=(size, size))
    return inputs.to(device), meta


# ---------------------------------------------------------------- prompts
class PromptArrays(NamedTuple):
    """Checked prompts of N prompts (None where not given)."""
    point_coords: Optional[np.ndarray]  #: (N, P, 2) float32 x, y
    point_labels: Optional[np.ndarray]  #: (N, P) int64 in {-1, 0, 1}
    boxes: Optional[np.ndarray]  #: (N, 4) float32 x1, y1, x2, y2
    mask_input: Optional[np.ndarray]  #: (N, 1, 4E, 4E) float32

    def to_tensors(self, device) -> Tuple[Optional[Tensor], ...]:
        return tuple(None if a is None else torch.from_numpy(a).to(device) for a in self)


def real_array(x: Any, name: str, allow_bool: bool = False) -> np.ndarray:
    """``x`` as a finite float64 array (a copy), or a :class:`PromptError` naming ``name``.

    Rejects complex numbers, strings, ``None`` inside lists, ragged lists,
    booleans (unless ``allow_bool``) and NaN / Inf.
    """
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            raise PromptError(f'{name} holds complex numbers ({x.dtype}): give real pixel values')
        x = x.double() if x.dtype in (torch.bfloat16, torch.float16) else x
        x = x.numpy()
    try:
        arr = np.array(x)
    except (TypeError, ValueError) as e:
        raise PromptError(f'{name} could not be read as a numeric array ({e}); give a list or array of '
                          'numbers with one row per prompt') from None
    kind = arr.dtype.kind
    if kind == 'c':
        raise PromptError(f'{name} holds complex numbers: give real numbers (x.real if the imaginary part is '
                          'zero)')
    if kind == 'b' and not allow_bool:
        raise PromptError(f'{name} holds booleans, not numbers: give pixel coordinates')
    if kind == 'O':
        if any(v is None for v in arr.ravel()):
            raise PromptError(f'{name} holds None: give a number for every coordinate (or leave out the prompt)')
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise PromptError(f'{name} must hold numbers only, got {type(x).__name__} with non-numeric items '
                              f'({e}); remove None / strings / nested lists of unequal length') from None
        kind = 'f'
    if kind not in 'biuf':
        raise PromptError(f'{name} must be numeric, got dtype {arr.dtype} ({type(x).__name__}); give numbers')
    arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise PromptError(f'{name} contains NaN or Inf (first at index {bad}); remove those prompts or give '
                          'finite values')
    return arr


def float_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite float32 array (see :func:`real_array`)."""
    return real_array(x, name).astype(np.float32)


def _where(frame: str, shape: Tuple[int, int]) -> str:
    h, w = shape
    if frame == 'input':
        return (f"the image inside the model's input frame (h={h}, w={w}; predict_torch takes input-frame "
                'pixels: use predict() for original image pixels)')
    return f'the image (h={h}, w={w} pixels)'


def _check_points(point_coords, point_labels, names, frame, shape, tol) -> Tuple[np.ndarray, np.ndarray]:
    cname, lname = names
    coords = real_array(point_coords, cname)
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2:
        hint = '; one point is [[x, y]]' if coords.shape == (1, 2) or np.shape(point_coords) == (2, ) else ''
        raise PromptError(f'{cname} must have shape (P, 2) for one prompt or (N, P, 2) for N prompts, as x, y '
                          f'in pixels; got shape {tuple(np.shape(point_coords))}{hint}')
    if coords.shape[0] == 0:
        raise PromptError(f'{cname} holds zero prompts (shape {tuple(coords.shape)}): give at least one point')
    if coords.shape[1] == 0:
        raise PromptError(f'{cname} has zero points per prompt (shape {tuple(coords.shape)}): give at least '
                          'one point, or leave point_coords out')
    h, w = shape
    tx, ty = tol
    out = ((coords[..., 0] < -tx) | (coords[..., 1] < -ty) | (coords[..., 0] > w + tx)
           | (coords[..., 1] > h + ty))
    if out.any():
        n, p = np.argwhere(out)[0].tolist()
        raise PromptError(f'{cname}: point {p} of prompt {n} at ({coords[n, p, 0]:.6g}, {coords[n, p, 1]:.6g}) '
                          f'is outside {_where(frame, shape)}; points are x, y (column, row): clip them or '
                          'check their coordinate frame')
    if point_labels is None:
        return coords.astype(np.float32), np.ones(coords.shape[:2], dtype=np.int64)
    labels = real_array(point_labels, lname, allow_bool=True)
    if labels.ndim == 1 and coords.shape[0] == 1:
        labels = labels[None]
    if labels.shape != coords.shape[:2]:
        want = f'({coords.shape[1]},) or {tuple(coords.shape[:2])}' if coords.shape[0] == 1 else \
            str(tuple(coords.shape[:2]))
        raise PromptError(f'{lname} must have shape {want} to match {cname} (one label per point), got '
                          f'{tuple(np.shape(point_labels))}')
    if not np.isin(labels, (-1, 0, 1)).all():
        bad = sorted(set(labels[~np.isin(labels, (-1, 0, 1))].ravel().tolist()))[:6]
        raise PromptError(f'{lname} must be 1 (foreground), 0 (background) or -1 (padding), got values {bad}')
    return coords.astype(np.float32), labels.astype(np.int64)


def _check_boxes(box, name, frame, shape, tol) -> np.ndarray:
    boxes = real_array(box, name)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise PromptError(f'{name} must have shape (4,) or (N, 4) as x1, y1, x2, y2 in pixels, got shape '
                          f'{tuple(np.shape(box))}')
    if boxes.shape[0] == 0:
        raise PromptError(f'{name} holds zero prompts (shape {tuple(boxes.shape)}): give at least one box, or '
                          'leave it out')
    bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
    if len(bad):
        raise PromptError(f'{name}: degenerate boxes (x2 <= x1 or y2 <= y1) at indices {bad[:5].tolist()}, e.g. '
                          f'{boxes[bad[0]].tolist()}: boxes are x1, y1, x2, y2 corners in pixels, not x, y, w, h')
    h, w = shape
    tx, ty = tol
    out = (boxes[:, 0] < -tx) | (boxes[:, 1] < -ty) | (boxes[:, 2] > w + tx) | (boxes[:, 3] > h + ty)
    if out.any():
        i = int(np.nonzero(out)[0][0])
        raise PromptError(f'{name}: box {i} {boxes[i].tolist()} is outside {_where(frame, shape)}: clip the '
                          'boxes to the image or check their coordinate frame')
    return boxes.astype(np.float32)


def _check_masks(mask_input, name, size) -> np.ndarray:
    masks = real_array(mask_input, name)
    if masks.ndim == 2:
        masks = masks[None, None]
    elif masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != tuple(size):
        raise PromptError(f'{name} must be low-res logits of shape (N, 1, {size[0]}, {size[1]}) (the '
                          f'low_res_logits of an earlier prediction), got shape {tuple(np.shape(mask_input))}')
    if masks.shape[0] == 0:
        raise PromptError(f'{name} holds zero prompts: give one (1, {size[0]}, {size[1]}) map per prompt')
    big = float(np.abs(masks).max())
    if big > MAX_MASK_LOGIT:
        raise PromptError(f'{name} holds values up to {big:.3g}, beyond +-{MAX_MASK_LOGIT:g}: it must hold mask '
                          'logits (e.g. the low_res_logits of an earlier prediction; larger values overflow '
                          'the prompt encoder): clip them, e.g. np.clip(x, -20, 20)')
    return masks.astype(np.float32)


def check_prompt_arrays(point_coords: Optional[ArrayLike],
                        point_labels: Optional[ArrayLike],
                        box: Optional[ArrayLike],
                        mask_input: Optional[ArrayLike],
                        image_shape: Tuple[int, int],
                        mask_input_size: Tuple[int, int],
                        frame: str = 'original',
                        box_name: str = 'box',
                        tol: Tuple[float, float] = (BORDER_TOL, BORDER_TOL)) -> PromptArrays:
    """The one prompt check of both predictor entry points.

    ``frame='original'``: coordinates in original image pixels, ``image_shape``
    is the original (h, w) (``predict``); ``frame='input'``: coordinates in
    the model's input frame, ``image_shape`` is the resized image inside it
    (``predict_torch``). Points and boxes may lie up to ``tol`` (x, y) pixels
    beyond the border (default :data:`BORDER_TOL`; ``predict_torch`` allows
    one original pixel in the input frame plus the rounding of the resize, so
    it accepts every prompt ``predict`` accepts).

    Rules: ``point_coords`` (P, 2) / (N, P, 2); ``point_labels`` (P,) / (N, P)
    of 1 (foreground), 0 (background), -1 (padding; booleans are read as 1/0),
    all 1 when not given; ``box`` (4,) / (N, 4) corners with x2 > x1, y2 > y1;
    ``mask_input`` (N, 1, 4E, 4E) logits with |value| <= :data:`MAX_MASK_LOGIT`.
    Every given prompt type needs the same N >= 1. A prompt needs something
    that says where the object is: a foreground point, a box or a mask input
    (background points alone are a :class:`PromptError`). Values must be real,
    finite numbers (no complex numbers, booleans as coordinates, strings or
    ``None``); finite but huge coordinates are outside the image.

    Returns:
        :class:`PromptArrays`, fresh copies (never the caller's memory).
    Raises:
        PromptError (a ``ValueError``) naming the argument and the fix.
    """
    if frame not in ('original', 'input'):
        raise ValueError(f"frame must be 'original' or 'input', got {frame!r}")
    shape = tuple(int(s) for s in image_shape)
    counts = {}
    coords = labels = boxes = masks = None
    if point_coords is not None:
        coords, labels = _check_points(point_coords, point_labels, ('point_coords', 'point_labels'), frame, shape,
                                      tol)
        counts['point_coords'] = coords.shape[0]
    elif point_labels is not None:
        raise PromptError('point_labels given without point_coords: give the points too, or leave the labels out')
    if box is not None:
        boxes = _check_boxes(box, box_name, frame, shape, tol)
        counts[box_name] = boxes.shape[0]
    if mask_input is not None:
        masks = _check_masks(mask_input, 'mask_input', mask_input_size)
        counts['mask_input'] = masks.shape[0]
    if not counts:
        raise PromptError(f'no prompt: give point_coords, {box_name} and/or mask_input')
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
                              f'label 1, or a {box_name} or mask_input')
    return PromptArrays(coords, labels, boxes, masks)


def transform_prompts(point_coords, point_labels, box, mask_input, meta: Dict[str, Any],
                      mask_input_size: Tuple[int, int], device) -> Tuple[Optional[Tensor], ...]:
    """Check prompts given in ORIGINAL image pixels; return them in the input frame.

    Returns ``(point_coords (N, P, 2), point_labels (N, P), boxes (N, 4),
    mask_input (N, 1, 4E, 4E))`` as tensors on ``device`` (None where not given).
    Raises :class:`PromptError` as :func:`check_prompt_arrays`.
    """
    p = check_prompt_arrays(point_coords, point_labels, box, mask_input, meta['ori_shape'], mask_input_size,
                            frame='original')
    scale = np.array(meta['scale_factor'], dtype=np.float32)
    p = p._replace(point_coords=None if p.point_coords is None else p.point_coords * scale,
                   boxes=None if p.boxes is None else p.boxes * np.tile(scale, 2))
    return p.to_tensors(device)


def check_input_frame_prompts(point_coords, point_labels, boxes, mask_input, meta: Dict[str, Any],
                              mask_input_size: Tuple[int, int], device) -> Tuple[Optional[Tensor], ...]:
    """The checks of :func:`transform_prompts` for prompts already in the model's
    input frame (``predict_torch``): same rules, bounds of the resized image."""
    sx, sy = meta['scale_factor']
    tol = (BORDER_TOL * sx + 0.5, BORDER_TOL * sy + 0.5)
    p = check_prompt_arrays(point_coords, point_labels, boxes, mask_input, meta['img_shape'], mask_input_size,
                            frame='input', box_name='boxes', tol=tol)
    return p.to_tensors(device)


def clip_boxes(boxes: Tensor, shape: Tuple[int, int]) -> Tensor:
    """Clamp (N, 4) x1, y1, x2, y2 boxes to an image of shape (h, w)."""
    h, w = shape
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                        boxes[:, 3].clamp(0, h)], dim=1)


# ---------------------------------------------------------------- options
def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, Tensor) and value.dtype == torch.bool)


def check_int(value: Any, name: str, minimum: Optional[int] = None, fix: str = '') -> int:
    """``value`` as an int >= ``minimum``; booleans and non-integral numbers are rejected."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not _is_bool(value) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f'{name} must be an integer, got {type(value).__name__} {value!r}'
                             f'{"; " + fix if fix else ""}')
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}{"; " + fix if fix else ""}')
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool: ``True`` / ``False`` (numpy and 0-d tensor booleans, and the ints 0 / 1, too);
    strings such as ``'no'`` and other objects are refused instead of read by their truth value."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f'{name} must be True or False, got {type(value).__name__} {value!r}'[:200])


def check_float(value: Any, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
                fix: str = '') -> float:
    """``value`` as a finite float in [lo, hi]; booleans, strings and NaN are rejected."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(f'{name} must be a number, got {type(value).__name__} {value!r}')
    value = float(value)
    if lo is not None and hi is not None:
        rng = f'in [{lo:g}, {hi:g}]'
    elif lo is not None or hi is not None:
        rng = f'>= {lo:g}' if lo is not None else f'<= {hi:g}'
    else:
        rng = '(not NaN or Inf)'
    if not np.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f'{name} must be a finite number {rng}, got {value!r}{"; " + fix if fix else ""}')
    return value


def check_top_k(top_k: Any, num_classes: int, name: str = 'top_k') -> int:
    """How many classes to report: ``None`` means all of them; an integer >= 1
    is capped at the vocabulary size."""
    if top_k is None:
        return max(1, int(num_classes))
    k = check_int(top_k, name, 1, fix='give how many classes to report per prompt, or None for all')
    return max(1, min(k, int(num_classes)))


def check_class_indices(classes: Any, class_names: Sequence[str], name: str = 'seen_classes') -> list:
    """Class indices (ints) or names of ``class_names`` -> sorted-by-input list of indices.

    Booleans are not indices (``[True]`` is rejected, not read as class 1);
    out-of-range indices, unknown names and duplicates are errors.
    """
    from ..vocabulary import match_class
    if isinstance(classes, str):
        classes = [classes]
    if isinstance(classes, (Tensor, np.ndarray)):
        if classes.dtype in (torch.bool, np.bool_):
            raise ValueError(f'{name} is a boolean mask; give class indices or names (e.g. '
                             f'np.nonzero(mask)[0].tolist())')
        classes = classes.tolist()
    try:
        items = list(classes)
    except TypeError:
        raise TypeError(f'{name} must be a list of class indices or names, got {type(classes).__name__}') \
            from None
    k = len(class_names)
    out = []
    for c in items:
        if _is_bool(c):
            raise ValueError(f'{name} holds the boolean {c!r}: booleans are not class indices; give indices '
                             f'(0..{k - 1}) or class names')
        if isinstance(c, str):
            idx = match_class(c, class_names)
            if idx is None:
                raise ValueError(f'{name}: class {c!r} is not in the vocabulary {list(class_names)[:8]}'
                                 f'{" ..." if k > 8 else ""}; give a name of the vocabulary or its index')
        elif isinstance(c, numbers.Integral):
            idx = int(c)
            if not 0 <= idx < k:
                raise ValueError(f'{name}: class index {idx} is not in the vocabulary (0..{k - 1})')
        else:
            raise ValueError(f'{name}: {c!r} ({type(c).__name__}) is neither a class index (int) nor a class '
                             'name (str)')
        if idx in out:
            raise ValueError(f'{name}: class {c!r} (index {idx}) is given twice; give each class once')
        out.append(idx)
    return out
