"""Helpers shared by several models, one owner each.

* :class:`FrozenMixin` — the frozen-module behaviour (no gradients, eval mode
  that ``train()`` cannot undo) of the paper's frozen parts.
* :func:`postprocess_masks` — low-res mask logits to the original image.
* :func:`masks_to_boxes` — boxes of thresholded masks (vectorised, traceable).
* :func:`point_sampled_mask_losses` — BCE + Dice on uncertainty-sampled points.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FrozenMixin:
    """For ``nn.Module`` subclasses with a ``frozen`` flag.

    Call :meth:`_freeze` at the end of ``__init__``: a frozen module has no
    trainable parameters and stays in eval mode (its batch norms keep their
    statistics) whatever ``model.train()`` says.
    """

    frozen = False

    def _freeze(self, frozen: bool) -> None:
        self.frozen = bool(frozen)
        if self.frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True):
        return super().train(False if self.frozen else mode)


def postprocess_masks(mask_logits: Tensor, pad_shape: Tuple[int, int], img_shape: Tuple[int, int],
                      ori_shape: Tuple[int, int]) -> Tensor:
    """Low-res logits (N, 1, h, w) -> logits (N, 1, *ori_shape): up to the padded
    input frame, crop the padding, resize to the original image (bilinear)."""
    x = F.interpolate(mask_logits, tuple(pad_shape), mode='bilinear', align_corners=False)
    x = x[..., :img_shape[0], :img_shape[1]]
    if tuple(img_shape) == tuple(ori_shape):  # bilinear to the same size is the identity
        return x
    return F.interpolate(x, tuple(ori_shape), mode='bilinear', align_corners=False)


def masks_to_boxes(mask_logits: Tensor, scale: float = 1.0) -> Tensor:
    """Boxes (N, 4) of the ``sigmoid > 0.5`` masks of logits (N, h, w), times ``scale``.

    ``[x_min, y_min, x_max + 1, y_max + 1]`` like mmdet's ``mask2bbox``, and
    ``[0, 0, 0, 0]`` for an empty mask. Vectorised (no loop over masks, no
    data-dependent shapes), so it also traces to ONNX.
    """
    m = mask_logits.sigmoid() > 0.5  # as released (not `> 0`: they differ for |x| < ~1e-7)
    n, h, w = m.shape
    xs = torch.arange(w, device=m.device, dtype=torch.float32)
    ys = torch.arange(h, device=m.device, dtype=torch.float32)
    x_any = m.any(dim=1).to(torch.float32)  # (N, w)
    y_any = m.any(dim=2).to(torch.float32)  # (N, h)
    big = float(max(h, w) + 1)
    x1 = (xs + (1 - x_any) * big).amin(dim=1)
    y1 = (ys + (1 - y_any) * big).amin(dim=1)
    x2 = (xs * x_any).amax(dim=1) + 1
    y2 = (ys * y_any).amax(dim=1) + 1
    nonempty = (x_any.amax(dim=1) > 0).to(torch.float32)
    return torch.stack([x1, y1, x2, y2], dim=1) * nonempty[:, None] * scale


def point_sampled_mask_losses(mask_logits: Tensor, gt_masks: Tensor, loss_mask, loss_dice, num_points: int,
                              oversample_ratio: float = 3.0,
                              importance_sample_ratio: float = 0.75) -> Dict[str, Tensor]:
    """BCE and Dice on points chosen by mask uncertainty (PointRend / Mask2Former).

    Args:
        mask_logits: (N, 1, h, w) predicted logits.
        gt_masks: (N, H, W) binary masks in the same (padded input) frame;
            point coordinates are normalised, so resolutions may differ.
        num_points: points per mask; 0 uses every pixel centre of the
            prediction instead (deterministic, for reproducibility checks).
    """
    from mmcv.ops import point_sample
    from mmdet.models.utils import get_uncertain_point_coords_with_randomness
    from mmdet.utils import reduce_mean
    n, _, h, w = mask_logits.shape
    avg_factor = reduce_mean(mask_logits.new_tensor([float(n)])).clamp(min=1)
    if num_points <= 0:
        ys, xs = torch.meshgrid((torch.arange(h, device=mask_logits.device) + 0.5) / h,
                                (torch.arange(w, device=mask_logits.device) + 0.5) / w, indexing='ij')
        points = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(n, -1, -1).to(mask_logits.dtype)
        num_points = h * w
    else:
        with torch.no_grad():
            points = get_uncertain_point_coords_with_randomness(mask_logits, None, num_points, oversample_ratio,
                                                                importance_sample_ratio)
    pred = point_sample(mask_logits, points)
    target = point_sample(gt_masks.to(mask_logits.dtype)[:, None], points)
    return dict(loss_dice=loss_dice(pred, target, avg_factor=avg_factor),
                loss_mask=loss_mask(pred.reshape(-1), target.reshape(-1), avg_factor=avg_factor * num_points))
