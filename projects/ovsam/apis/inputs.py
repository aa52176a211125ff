"""Inputs of the interactive tools: images to RGB arrays and the model's input
frame, prompts checked in the original frame and moved to the input frame.

These are the conversions of :class:`~ovsam.apis.OVSAMPredictor` (and so of the
automatic generator, the demos and the ONNX helpers), kept out of the predictor
so that it only holds image state.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import Tensor

from ..models.prompts import PromptError, check_prompts

ArrayLike = Union[np.ndarray, Sequence, Tensor]


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def image_to_rgb(image: Any, image_format: str = 'RGB') -> np.ndarray:
    """Any supported image -> (H, W, 3) RGB array, uint8 or float32 in [0, 255].

    Accepts numpy arrays (H x W gray, H x W x 1, H x W x 3 RGB/BGR, H x W x 4
    RGBA/BGRA; uint8, other integer types with values 0..255, bool, or floats in
    [0, 1]), PIL images and torch tensors laid out as numpy arrays. Alpha is
    dropped (not composited).
    """
    fmt = image_format.upper()
    if fmt not in ('RGB', 'BGR'):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert('RGB'))
            fmt = 'RGB'
    except ImportError:  # pragma: no cover - PIL ships with mmcv/matplotlib
        pass
    arr = to_numpy(image)
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise ValueError(f'image must be an H x W or H x W x C array, got shape {arr.shape} '
                         f'and dtype {arr.dtype}')
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f'empty image of shape {arr.shape}')
    if c not in (1, 3, 4):
        raise ValueError(f'image must have 1, 3 or 4 channels (last axis), got {c} '
                         f'(shape {arr.shape}); channel-first arrays are not accepted')
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError('image contains NaN or Inf')
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f'float images must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}]; '
                             'pass uint8 for 0..255 data')
        arr = np.clip(arr, 0, 1) * 255.0
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 255:
                raise ValueError(f'integer images must hold values in 0..255, got {lo}..{hi} '
                                 f'(dtype {arr.dtype}); convert to uint8 or float in [0, 1]')
            arr = arr.astype(np.uint8)
    else:
        raise ValueError(f'unsupported image dtype {arr.dtype}')
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[:, :, :3]
    if fmt == 'BGR':
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


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


def float_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite float32 array, or a :class:`PromptError` naming ``name``."""
    try:
        arr = to_numpy(x).astype(np.float32)
    except (TypeError, ValueError) as e:
        raise PromptError(f'{name} must be numeric, got {type(x).__name__} ({e})') from e
    if not np.isfinite(arr).all():
        raise PromptError(f'{name} contains NaN or Inf')
    return arr


def _points(point_coords, point_labels) -> Tuple[np.ndarray, np.ndarray]:
    coords = float_array(point_coords, 'point_coords')
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
        raise PromptError(f'point_coords must have shape (P, 2) for one prompt or (N, P, 2) '
                          f'as x, y in pixels, got {tuple(np.shape(point_coords))}')
    if point_labels is None:
        return coords, np.ones(coords.shape[:2], dtype=np.int64)
    labels = to_numpy(point_labels)
    if labels.ndim == 1 and coords.shape[0] == 1:
        labels = labels[None]
    if labels.shape != coords.shape[:2]:
        raise PromptError(f'point_labels must have shape {coords.shape[:2]} to match '
                          f'point_coords, got {tuple(labels.shape)}')
    if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels).all():
        raise PromptError('point_labels must be numbers (1 foreground, 0 background, -1 ignore)')
    if not np.isin(labels, (-1, 0, 1)).all():
        raise PromptError(f'point_labels must be 1 (foreground), 0 (background) or -1 '
                          f'(padding), got values {sorted(set(labels.ravel().tolist()))[:6]}')
    return coords, labels.astype(np.int64)


def _boxes(box) -> np.ndarray:
    boxes = float_array(box, 'box')
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise PromptError(f'box must have shape (4,) or (N, 4) as x1, y1, x2, y2, got {tuple(np.shape(box))}')
    return boxes


def _mask_inputs(mask_input, size: Tuple[int, int]) -> np.ndarray:
    masks = float_array(mask_input, 'mask_input')
    if masks.ndim == 2:
        masks = masks[None, None]
    elif masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != tuple(size):
        raise PromptError(f'mask_input must be low-res logits of shape (N, 1, {size[0]}, {size[1]}) '
                          f'(the low_res_logits of an earlier prediction), got {tuple(np.shape(mask_input))}')
    return masks


def transform_prompts(point_coords, point_labels, box, mask_input, meta: Dict[str, Any],
                      mask_input_size: Tuple[int, int], device) -> Tuple[Optional[Tensor], ...]:
    """Check prompts given in ORIGINAL image pixels; return them in the input frame.

    Returns ``(point_coords (N, P, 2), point_labels (N, P), boxes (N, 4),
    mask_input (N, 1, 4E, 4E))`` as tensors on ``device`` (None where not given).
    Raises :class:`PromptError` for wrong shapes, NaN, unequal prompt counts,
    boxes or points outside the image.
    """
    counts = {}
    coords = labels = boxes = masks = None
    if point_coords is not None:
        coords, labels = _points(point_coords, point_labels)
        counts['point_coords'] = coords.shape[0]
    elif point_labels is not None:
        raise PromptError('point_labels given without point_coords')
    if box is not None:
        boxes = _boxes(box)
        counts['box'] = boxes.shape[0]
    if mask_input is not None:
        masks = _mask_inputs(mask_input, mask_input_size)
        counts['mask_input'] = masks.shape[0]
    if not counts:
        raise PromptError('no prompt: give point_coords, box and/or mask_input')
    if len(set(counts.values())) > 1:
        raise PromptError(f'prompt counts differ: {counts}; every prompt type needs the same N')
    if min(counts.values()) == 0:
        raise PromptError('zero prompts given')
    inst = InstanceData()
    if coords is not None:
        inst.point_coords = torch.from_numpy(coords)
    if boxes is not None:
        inst.bboxes = torch.from_numpy(boxes)
    check_prompts(inst, meta['ori_shape'])
    scale = np.array(meta['scale_factor'], dtype=np.float32)

    def tensor(a):
        return None if a is None else torch.from_numpy(a).to(device)

    return (tensor(None if coords is None else coords * scale), tensor(labels),
            tensor(None if boxes is None else boxes * np.tile(scale, 2)), tensor(masks))


def clip_boxes(boxes: Tensor, shape: Tuple[int, int]) -> Tensor:
    """Clamp (N, 4) x1, y1, x2, y2 boxes to an image of shape (h, w)."""
    h, w = shape
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                        boxes[:, 3].clamp(0, h)], dim=1)
