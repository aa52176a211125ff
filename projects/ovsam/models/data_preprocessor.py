"""Data preprocessor: mmdet's normalise/pad plus prompt sampling.

Training (CLIP2SAM): each image's ground-truth instances are repeated (in a
random order) or cut to ``num_prompts``; a ``point_ratio`` share of them are
prompted with one random point inside the mask, the rest with the box.
Only instances with a mask get points (``prompts.instance_has_mask``): in
co-training, detection and image-level instances are always prompted by box.
Evaluation: prompts are the ground-truth boxes (``eval_prompt='box'``) or one
point per instance, the mask pixel farthest from the border
(``eval_prompt='point'``, OpenCV's distance transform).
"""
from typing import Optional

import cv2
import numpy as np
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from torch import Tensor

from ..registry import MODELS
from .prompts import choose_point_prompts, instance_has_mask


def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask pixel farthest from the mask border (or the image border)."""
    m = np.pad(mask.astype(np.uint8), 1)
    if not m.any():
        raise ValueError('empty mask has no centre point')
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return np.array([x, y], dtype=np.float32)


def random_points_in_masks(masks: Tensor, boxes: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One uniformly random pixel (x, y) inside each mask (N, H, W); the box
    centre for empty masks. Returns (N, 2) in pixels."""
    n, h, w = masks.shape
    flat = masks.reshape(n, -1).bool()
    counts = flat.sum(1)
    empty = counts == 0
    # The k-th mask pixel in raster order, k uniform in [0, count): a cumulative
    # sum and a binary search (torch.multinomial over H*W weights was ~12 ms
    # per image, a sixth of a toy training iteration).
    k = (torch.rand(n, generator=generator, device=masks.device) * counts).long()
    k = torch.minimum(k, (counts - 1).clamp(min=0))
    idx = torch.searchsorted(flat.cumsum(1), (k + 1)[:, None]).squeeze(1).clamp(max=h * w - 1)
    pts = torch.stack([idx % w, idx // w], dim=1).float()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return torch.where(empty[:, None], centres, pts)


def _mask_tensor(masks, device) -> Tensor:
    if hasattr(masks, 'to_tensor'):
        return masks.to_tensor(torch.bool, device)
    return masks.to(device=device, dtype=torch.bool)


@MODELS.register_module()
class OVSAMDataPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` that also makes the prompts.

    Args:
        num_prompts: prompts per image in training (0 keeps every instance once).
        point_ratio: share of training prompts given as one point.
        eval_prompt: ``'box'``, ``'point'``, ``'box+point'`` or None (use the
            prompts already in the data samples, e.g. detector proposals).
        Other arguments: see ``DetDataPreprocessor``.
    """

    def __init__(self, num_prompts: int = 40, point_ratio: float = 0.5,
                 eval_prompt: Optional[str] = 'box', **kwargs) -> None:
        kwargs.setdefault('pad_mask', True)
        super().__init__(**kwargs)
        if eval_prompt not in (None, 'box', 'point', 'box+point'):
            raise ValueError(f"eval_prompt must be 'box', 'point', 'box+point' or None, got {eval_prompt!r}")
        self.num_prompts = num_prompts
        self.point_ratio = point_ratio
        self.eval_prompt = eval_prompt

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data, training)
        for sample in data['data_samples']:
            if 'gt_instances' not in sample:
                continue
            if training:
                sample.gt_instances = self.sample_train_prompts(sample.gt_instances)
            elif self.eval_prompt is not None:
                sample.gt_instances = self.make_eval_prompts(sample.gt_instances)
        return data

    def pad_gt_masks(self, batch_data_samples) -> None:
        """Pad the masks of every sample that has them (mmdet looks at the
        first sample only; a co-training batch mixes samples with and
        without masks)."""
        for sample in batch_data_samples:
            if 'masks' in sample.gt_instances:
                sample.gt_instances.masks = sample.gt_instances.masks.pad(sample.batch_input_shape,
                                                                          pad_val=self.mask_pad_value)

    def sample_train_prompts(self, gt):
        n = len(gt)
        if n == 0:
            return gt
        device = gt.labels.device
        k = self.num_prompts or n
        order = torch.cat([torch.randperm(n, device=device) for _ in range(-(-k // n))])[:k]
        gt = gt[order]
        # points only where a mask exists (co-training: box-only and
        # image-level instances keep their box), see models/prompts.py
        has_mask = instance_has_mask(gt)
        is_point = choose_point_prompts(k, self.point_ratio, has_mask)
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        if 'masks' in gt:
            pts = random_points_in_masks(_mask_tensor(gt.masks, device), boxes)
            gt.masks = _mask_tensor(gt.masks, device)
        else:
            pts = (boxes[:, :2] + boxes[:, 2:]) / 2
        gt.has_mask = has_mask
        gt.bboxes = boxes
        gt.point_coords = pts[:, None]
        gt.prompt_is_point = is_point
        return gt

    def make_eval_prompts(self, gt):
        if len(gt) == 0:
            return gt
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        gt.bboxes = boxes
        if self.eval_prompt in ('point', 'box+point'):
            if 'masks' not in gt:
                raise ValueError("eval_prompt='point' needs ground-truth masks (LoadAnnotations with_mask=True)")
            masks = gt.masks.masks if hasattr(gt.masks, 'masks') else gt.masks.cpu().numpy()
            pts = []
            for m, b in zip(masks, boxes.cpu()):
                if m.any():
                    pts.append(center_point(m))
                else:
                    pts.append(((b[:2] + b[2:]) / 2).numpy())
            gt.point_coords = torch.from_numpy(np.stack(pts)).to(boxes.device)[:, None]
        if self.eval_prompt == 'point':
            # the model must not see the box
            gt.gt_boxes = boxes
            del gt.bboxes
        return gt
