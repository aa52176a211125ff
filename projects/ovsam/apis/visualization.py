"""Drawing predictions with mmdet's ``DetLocalVisualizer``."""
import threading
from typing import Optional, Sequence

import numpy as np
import torch

from ..vocabulary import short_name

_LOCK = threading.Lock()
_NAME = 'ovsam_apis_visualizer'


def _visualizer():
    from mmdet.visualization import DetLocalVisualizer
    if DetLocalVisualizer.check_instance_created(_NAME):
        return DetLocalVisualizer.get_instance(_NAME)
    return DetLocalVisualizer.get_instance(_NAME, alpha=0.5, line_width=2)


def draw_predictions(image: np.ndarray,
                     masks: Optional[np.ndarray] = None,
                     boxes: Optional[np.ndarray] = None,
                     labels: Optional[Sequence[int]] = None,
                     scores: Optional[Sequence[float]] = None,
                     class_names: Optional[Sequence[str]] = None,
                     points: Optional[np.ndarray] = None,
                     point_labels: Optional[np.ndarray] = None,
                     draw_boxes: bool = True) -> np.ndarray:
    """Masks, boxes, labels ("name: score %") and prompt points on an RGB image.

    Args:
        image: (H, W, 3) RGB (or H x W gray), uint8 (floats in 0..255 are
            rounded and clipped).
        masks: (N, H, W) bool. Empty masks are skipped.
        boxes: (N, 4) x1, y1, x2, y2; default: each mask's box. With
            ``draw_boxes=False`` labels are written at the mask centres.
        labels: (N,) class indices into ``class_names``.
        scores: (N,) probabilities in [0, 1].
        points: (M, 2) x, y prompt points; ``point_labels`` (M,) 1 = foreground
            (green), 0 = background (red).
    Returns:
        The drawn (H, W, 3) uint8 RGB image.
    Raises:
        ValueError: naming the argument, for shapes that do not fit the image
            or each other, labels outside ``class_names``, NaN boxes or points.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from ..models.common import masks_to_boxes
    img = _check_image(image)
    h, w = img.shape[:2]
    masks, boxes, labels, scores, class_names, points, point_labels = _check_drawables(
        (h, w), masks, boxes, labels, scores, class_names, points, point_labels)
    inst = InstanceData()
    n = 0 if masks is None else len(masks)
    if n:
        m = torch.as_tensor(masks)
        keep = m.flatten(1).any(1)
        b = torch.as_tensor(boxes) if boxes is not None else masks_to_boxes(m.float())
        lab = torch.as_tensor(labels if labels is not None else np.zeros(n, dtype=np.int64))
        sc = torch.as_tensor(scores if scores is not None else np.ones(n, dtype=np.float32))
        names = list(class_names) if class_names else [f'class {i}' for i in range(int(lab.max()) + 1)]
        inst.masks = m[keep].numpy()
        inst.labels = lab[keep]
        inst.scores = sc[keep]
        if draw_boxes:
            inst.bboxes = b[keep]
        inst.label_names = [short_name(names[i]) for i in lab[keep].tolist()]
        meta_classes = [short_name(c) for c in names]
    else:
        meta_classes = [short_name(c) for c in (class_names or ['object'])]
    import warnings
    with _LOCK, warnings.catch_warnings():
        # mmengine warns for any box/polygon touching the right or bottom border
        warnings.filterwarnings('ignore', message='Warning: The .* is out of bounds', category=UserWarning)
        vis = _visualizer()
        vis.dataset_meta = dict(classes=meta_classes, palette='random')
        if len(inst) > 0:
            sample = DetDataSample()
            sample.pred_instances = inst
            vis.add_datasample('ovsam', img, sample, draw_gt=False, show=False, pred_score_thr=-1.0)
        else:
            vis.set_image(img)
        if points is not None and len(points):
            pts = points
            plab = np.ones(len(pts)) if point_labels is None else point_labels
            colors = [(0, 255, 0) if int(lb) == 1 else (255, 0, 0) for lb in plab]
            size = max(4, int(0.012 * max(img.shape[:2])))
            vis.draw_points(pts, colors=colors, sizes=np.full(len(pts), size ** 2), marker='o')
        out = vis.get_image()
    return np.ascontiguousarray(out)


def _check_image(image) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype.kind not in 'biuf' or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) \
            or 0 in arr.shape[:2]:
        raise ValueError(f'image must be a non-empty (H, W, 3) RGB or (H, W) gray array of numbers, got shape '
                         f'{arr.shape} and dtype {arr.dtype}; convert it with ovsam.apis.image_to_rgb')
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float64))), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _check_drawables(shape, masks, boxes, labels, scores, class_names, points, point_labels):
    h, w = shape

    def arr(x, name, dtype):
        try:
            a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
            if a.dtype.kind not in 'biuf':
                raise TypeError(f'dtype {a.dtype}')
            return a.astype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f'{name} must be an array of numbers ({e})') from None

    n = 0
    if masks is not None:
        masks = arr(masks, 'masks', bool)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(f'masks must have shape (N, {h}, {w}) to fit the image, got {masks.shape}')
        n = masks.shape[0]
    for name, value, cols in (('boxes', boxes, 4), ('labels', labels, None), ('scores', scores, None)):
        if value is None:
            continue
        a = arr(value, name, np.int64 if name == 'labels' else np.float32)
        want = (n, cols) if cols else (n, )
        if a.shape != want:
            raise ValueError(f'{name} must have shape {want}, one row per mask, got {a.shape}')
        if a.dtype.kind == 'f' and not np.isfinite(a).all():
            raise ValueError(f'{name} contain NaN or Inf')
        if name == 'labels' and n and a.min() < 0:
            raise ValueError(f'labels must be class indices >= 0, got {a.min()}')
        if name == 'labels' and n and class_names and a.max() >= len(class_names):
            raise ValueError(f'label {a.max()} is not an index of class_names ({len(class_names)} names)')
        if name == 'boxes':
            boxes = a
        elif name == 'labels':
            labels = a
        else:
            scores = a
    if class_names is not None and (isinstance(class_names, str) or
                                    not all(isinstance(c, str) for c in class_names)):
        raise ValueError('class_names must be a list of strings (one per class)')
    if points is not None:
        points = arr(points, 'points', np.float32).reshape(-1, 2) if np.size(points) % 2 == 0 else None
        if points is None or not np.isfinite(points).all():
            raise ValueError('points must be (M, 2) finite x, y pixel coordinates')
        if point_labels is not None:
            point_labels = arr(point_labels, 'point_labels', np.int64).reshape(-1)
            if len(point_labels) != len(points):
                raise ValueError(f'point_labels must have one label per point ({len(points)}), got '
                                 f'{len(point_labels)}')
    return masks, boxes, labels, scores, class_names, points, point_labels
