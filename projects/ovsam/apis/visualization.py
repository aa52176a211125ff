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
        image: (H, W, 3) RGB, uint8 (floats in 0..255 are rounded).
        masks: (N, H, W) bool. Empty masks are skipped.
        boxes: (N, 4) x1, y1, x2, y2; default: each mask's box. With
            ``draw_boxes=False`` labels are written at the mask centres.
        labels: (N,) class indices into ``class_names``.
        scores: (N,) probabilities in [0, 1].
        points: (M, 2) x, y prompt points; ``point_labels`` (M,) 1 = foreground
            (green), 0 = background (red).
    Returns:
        The drawn (H, W, 3) uint8 RGB image.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from ..models.common import masks_to_boxes
    img = np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)
                               if image.dtype != np.uint8 else image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    inst = InstanceData()
    n = 0 if masks is None else len(masks)
    if n:
        m = torch.as_tensor(np.asarray(masks, dtype=bool))
        keep = m.flatten(1).any(1)
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)) if boxes is not None else masks_to_boxes(m.float())
        lab = torch.as_tensor(np.asarray(labels if labels is not None else np.zeros(n), dtype=np.int64))
        sc = torch.as_tensor(np.asarray(scores if scores is not None else np.ones(n), dtype=np.float32))
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
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            plab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
            colors = [(0, 255, 0) if int(lb) == 1 else (255, 0, 0) for lb in plab]
            size = max(4, int(0.012 * max(img.shape[:2])))
            vis.draw_points(pts, colors=colors, sizes=np.full(len(pts), size ** 2), marker='o')
        out = vis.get_image()
    return np.ascontiguousarray(out)
