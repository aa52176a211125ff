"""Turning instance prompts into SAM prompt-encoder inputs, with input checks."""
from typing import Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor


class PromptError(ValueError):
    """A prompt that cannot be used (wrong shape, outside the image, NaN, ...)."""


def check_prompts(instances: InstanceData, image_shape: Tuple[int, int]) -> None:
    """Validate ``bboxes`` (N, 4) and ``point_coords`` (N, P, 2) in the input frame.

    ``image_shape`` is the (h, w) of the image inside the padded input.
    """
    h, w = image_shape
    tol = 1.0  # boxes on the border after rounding are fine
    if 'bboxes' in instances:
        b = instances.bboxes
        b = b.tensor if hasattr(b, 'tensor') else b
        if b.dim() != 2 or b.shape[-1] != 4:
            raise PromptError(f'boxes must have shape (N, 4) as x1, y1, x2, y2; got {tuple(b.shape)}')
        if not torch.isfinite(b).all():
            raise PromptError('boxes contain NaN or Inf')
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            bad = torch.nonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))[:, 0].tolist()[:5]
            raise PromptError(f'degenerate boxes (x2 <= x1 or y2 <= y1) at indices {bad}: '
                              'boxes are x1, y1, x2, y2 in pixels')
        if (b[:, :2] < -tol).any() or (b[:, 2] > w + tol).any() or (b[:, 3] > h + tol).any():
            raise PromptError(f'boxes outside the image of size (h={h}, w={w}): '
                              'clip them to the image or check their coordinate frame')
    if 'point_coords' in instances:
        p = instances.point_coords
        if p.dim() != 3 or p.shape[-1] != 2:
            raise PromptError(f'point_coords must have shape (N, P, 2) as x, y; got {tuple(p.shape)}')
        if not torch.isfinite(p).all():
            raise PromptError('point_coords contain NaN or Inf')
        if (p < -tol).any() or (p[..., 0] > w + tol).any() or (p[..., 1] > h + tol).any():
            raise PromptError(f'points outside the image of size (h={h}, w={w})')
        if 'point_labels' in instances:
            lab = instances.point_labels
            if lab.shape != p.shape[:2]:
                raise PromptError(f'point_labels must have shape (N, P) = {tuple(p.shape[:2])}, '
                                  f'got {tuple(lab.shape)}')


def box_tensor(instances: InstanceData) -> Tensor:
    """The (N, 4) box tensor of ``instances.bboxes`` (a tensor or mmdet box type)."""
    b = instances.bboxes
    return b.tensor if hasattr(b, 'tensor') else b


def embed_prompts(pe, instances: InstanceData, mode: str = 'auto') -> Tuple[Tensor, Tensor, Tensor]:
    """Encode the prompts of one image.

    Modes: ``'box'``, ``'point'``, ``'box+point'`` (SAM-style combined prompt)
    or ``'auto'``: per-prompt choice when ``prompt_is_point`` (N,) is present
    (training mixes both), else points if only points, else boxes.

    Returns:
        sparse (N, T, C), dense (N, C, E, E) embeddings and ``is_point`` (N,)
        (True where the prompt had no box).
    """
    has_box = 'bboxes' in instances
    has_pts = 'point_coords' in instances
    n = len(instances)
    if mode == 'auto':
        if has_box and has_pts and 'prompt_is_point' in instances:
            mode = 'mixed'
        elif has_pts and not has_box:
            mode = 'point'
        elif has_box and not has_pts:
            mode = 'box'
        elif has_box and has_pts:
            mode = 'box+point'
        else:
            raise PromptError('no prompts: instances need bboxes (N, 4) and/or point_coords (N, P, 2)')
    need_box = mode in ('box', 'box+point', 'mixed')
    need_pts = mode in ('point', 'box+point', 'mixed')
    if need_box and not has_box:
        raise PromptError(f'prompt mode {mode!r} needs bboxes')
    if need_pts and not has_pts:
        raise PromptError(f'prompt mode {mode!r} needs point_coords')

    def points():
        coords = instances.point_coords
        labels = instances.point_labels if 'point_labels' in instances else \
            torch.ones(coords.shape[:2], dtype=torch.long, device=coords.device)
        return coords.float(), labels

    if mode == 'box':
        sparse, dense = pe(None, box_tensor(instances).float(), None)
        is_point = torch.zeros(n, dtype=torch.bool, device=sparse.device)
    elif mode == 'point':
        sparse, dense = pe(points(), None, None)
        is_point = torch.ones(n, dtype=torch.bool, device=sparse.device)
    elif mode == 'box+point':
        sparse, dense = pe(points(), box_tensor(instances).float(), None)
        is_point = torch.zeros(n, dtype=torch.bool, device=sparse.device)
    elif mode == 'mixed':
        # A single point is padded with a "not a point" token, so box and point
        # prompts both give two tokens and can share one batch.
        is_point = instances.prompt_is_point.bool()
        sp_box, dense = pe(None, box_tensor(instances).float(), None)
        sp_pt, _ = pe(points(), None, None)
        if sp_pt.shape[1] != sp_box.shape[1]:
            raise PromptError('mixed prompts need exactly one point per prompt')
        sparse = torch.where(is_point[:, None, None], sp_pt, sp_box)
    else:
        raise PromptError(f'unknown prompt mode {mode!r}')
    return sparse, dense, is_point


# ---------------------------------------------------------------- training prompts
def instance_has_mask(instances: InstanceData) -> Tensor:
    """(N,) bool: which instances carry mask supervision.

    Co-training mixes segmentation data (masks), detection data (boxes only)
    and image-level labels (one whole-image box): ``instances.has_mask`` when
    the data gives it; otherwise an instance has a mask when ``masks`` are
    present and its mask is not empty (an empty mask is no supervision: it
    would teach the decoder to predict nothing inside a box that holds an
    object); without ``masks`` none has one.
    """
    n = len(instances)
    device = instances.labels.device if 'labels' in instances else None
    if 'has_mask' in instances:
        flags = torch.as_tensor(instances.has_mask, dtype=torch.bool, device=device)
        if flags.shape != (n, ):
            raise PromptError(f'has_mask must have shape (N,) = ({n},), got {tuple(flags.shape)}')
        return flags
    if 'masks' not in instances:
        return torch.zeros(n, dtype=torch.bool, device=device)
    m = instances.masks
    if hasattr(m, 'masks'):  # mmdet BitmapMasks
        import numpy as np
        return torch.from_numpy(np.asarray(m.masks).reshape(n, -1).any(1)).to(device)
    if hasattr(m, 'to_ndarray'):  # PolygonMasks
        import numpy as np
        return torch.from_numpy(m.to_ndarray().reshape(n, -1).any(1)).to(device)
    return m.reshape(n, -1).bool().any(1)


def choose_point_prompts(num: int, point_ratio: float, has_mask: Tensor) -> Tensor:
    """(num,) bool: which training prompts are given as one point.

    A ``point_ratio`` share of the prompts is drawn (one ``randperm``), then
    restricted to instances with a mask: a point is only a reliable prompt
    where the mask says where the object is; box-only and image-level
    instances are always prompted with their box.
    """
    is_point = torch.randperm(num, device=has_mask.device) < round(num * point_ratio)
    return is_point & has_mask
