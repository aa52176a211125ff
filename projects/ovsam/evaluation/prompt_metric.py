"""Metric for the interactive (prompted) protocol of Open-Vocabulary SAM.

Every ground-truth instance of an image is one prompt (its box and/or a
point); the model answers each prompt with one mask and one class label, in
the prompts' order. The metric scores each prompt on its own:

* ``IoU(pred mask, gt mask)``: segmentation quality;
* ``pred label == gt label``: recognition.

``miou`` is the mean IoU over all prompts of the data set and ``accuracy``
the share of correctly labelled prompts. With a class split the same numbers
are reported for the prompts whose ground-truth class is in each group
(base / novel, or named groups such as LVIS frequent / common / rare).

Frames: the predictions are at the original image size (``ori_shape``),
while the ground-truth masks in the data sample went through the test
pipeline (resized, maybe padded). The metric brings the ground truth to the
prediction's frame: crop to ``img_shape`` (drops the padding), then a
nearest-neighbour resize to ``ori_shape``. Nearest keeps masks binary and is
the interpolation mmdet's ``Resize`` uses for masks, so this is the inverse
of the pipeline up to the rounding of that resize (thin structures can lose
or gain a pixel row). Masks already at ``ori_shape`` are used as they are.
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from torch import Tensor

from ..registry import METRICS


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Field ``key`` of a dict, an mmengine data element or any object.

    mmengine's ``Evaluator`` converts data samples with ``to_dict()`` (nested
    elements become dicts as well) but metrics can also be called directly
    with ``DetDataSample`` / ``InstanceData``; both spellings are accepted.
    """
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _meta(sample: Any, key: str) -> Any:
    """Metainfo field: top-level key of the dict form, ``metainfo`` of the
    data-element form."""
    value = _get(sample, key)
    if value is None and not isinstance(sample, dict):
        value = _get(getattr(sample, 'metainfo', None), key)
    return value


def _hw(shape: Any) -> Optional[Tuple[int, int]]:
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _image_name(sample: Any) -> str:
    for key in ('img_path', 'img_id'):
        value = _meta(sample, key)
        if value is not None:
            return f'{key}={value}'
    return '<image without img_path / img_id>'


def _mask_tensor(masks: Any, device: torch.device) -> Tensor:
    """(N, H, W) bool tensor from BitmapMasks / PolygonMasks / array / tensor."""
    if hasattr(masks, 'to_ndarray'):  # mmdet BaseInstanceMasks
        arr = masks.to_ndarray()
        if arr.ndim != 3:  # an empty BitmapMasks may hold a (0,) array
            arr = np.zeros((0, masks.height, masks.width), dtype=bool)
        masks = torch.from_numpy(np.ascontiguousarray(arr))
    elif isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    elif not isinstance(masks, Tensor):
        raise TypeError(f'unsupported mask type {type(masks).__name__}')
    if masks.dim() != 3:
        raise ValueError(f'masks must be (N, H, W), got shape {tuple(masks.shape)}')
    return masks.to(device=device).bool()


def _labels_array(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def resize_nearest(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of (N, H, W) masks to ``size``.

    Source pixel of destination pixel ``i`` is ``floor(i * H_in / H_out)``, the
    rule of OpenCV's ``INTER_NEAREST`` (what mmdet's mask resize uses) and of
    ``F.interpolate(mode='nearest')``. Written as a gather so bool masks need
    no float copy of the whole stack.
    """
    h_in, w_in = masks.shape[-2:]
    h_out, w_out = size
    if (h_in, w_in) == (h_out, w_out):
        return masks
    dev = masks.device
    rows = torch.div(torch.arange(h_out, device=dev) * h_in, h_out, rounding_mode='floor').clamp_(max=h_in - 1)
    cols = torch.div(torch.arange(w_out, device=dev) * w_in, w_out, rounding_mode='floor').clamp_(max=w_in - 1)
    return masks[:, rows][:, :, cols]


def gt_to_ori_frame(gt_masks: Tensor, ori_shape: Tuple[int, int], img_shape: Optional[Tuple[int, int]],
                    padded_shapes: Sequence[Tuple[int, int]] = (), name: str = '') -> Tensor:
    """Bring ground-truth masks from the pipeline's input frame to ``ori_shape``.

    Args:
        gt_masks: (N, H, W) masks in the resized (and maybe padded) input
            frame, or already at ``ori_shape``.
        ori_shape: (h, w) of the original image, the prediction's frame.
        img_shape: (h, w) of the resized image before padding.
        padded_shapes: ``pad_shape`` / ``batch_input_shape`` of the sample.
            Masks at ``ori_shape`` are taken as already in the original frame
            unless that size is also a padded frame while the image itself was
            resized (then they are padded input-frame masks).
        name: image name for error messages.
    """
    hw = tuple(gt_masks.shape[-2:])
    resized = img_shape is not None and img_shape != ori_shape
    if hw == ori_shape and not (resized and hw in padded_shapes):
        return gt_masks
    if img_shape is None:
        raise ValueError(f'{name}: ground-truth masks are {hw}, not at ori_shape {ori_shape}, '
                         'and the sample has no img_shape to map them back')
    if hw[0] < img_shape[0] or hw[1] < img_shape[1]:
        raise ValueError(f'{name}: ground-truth masks {hw} are smaller than img_shape {img_shape}; '
                         'they are neither in the input frame nor at ori_shape ' f'{ori_shape}')
    # crop the padding (mmdet pads at the bottom / right), undo the resize
    return resize_nearest(gt_masks[:, :img_shape[0], :img_shape[1]], ori_shape)


def mask_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-pair IoU of (N, H, W) bool masks, float64 (N,).

    Two empty masks score 1.0: for a ground-truth object that vanished (e.g.
    a sliver lost by resizing) an empty prediction is the right answer, and
    0/0 must not turn into NaN that would poison the mean.
    """
    pred = pred.flatten(1)
    gt = gt.flatten(1)
    inter = (pred & gt).sum(1, dtype=torch.float64)
    union = (pred | gt).sum(1, dtype=torch.float64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@METRICS.register_module()
class PromptSegMetric(BaseMetric):
    """Mean IoU and classification accuracy of prompted segmentation.

    Each data sample must hold ``gt_instances`` (``masks``, ``labels``) and
    ``pred_instances`` (``masks`` at ``ori_shape``, ``labels``) with one
    prediction per ground-truth instance, in the same order.

    Args:
        base_classes / novel_classes: class indices of an open-vocabulary
            split; each given list adds ``miou_<base|novel>`` and
            ``acc_<base|novel>``.
        class_groups: more named groups of class indices, e.g.
            ``dict(frequent=[...], common=[...], rare=[...])``; each adds
            ``miou_<name>`` and ``acc_<name>``.
        collect_device: ``'cpu'`` or ``'gpu'``, where ranks gather results.
        prefix: metric name prefix; ``'prompt'`` when None.

    Results keys (before the prefix): ``miou``, ``accuracy``, ``num_prompts``
    and the group keys. A group without any prompt reports NaN (with a
    warning) rather than a misleading 0.
    """

    default_prefix: Optional[str] = 'prompt'

    def __init__(self,
                 base_classes: Optional[Sequence[int]] = None,
                 novel_classes: Optional[Sequence[int]] = None,
                 class_groups: Optional[Dict[str, Sequence[int]]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        groups: Dict[str, np.ndarray] = {}
        if base_classes is not None:
            groups['base'] = self._as_indices('base_classes', base_classes)
        if novel_classes is not None:
            groups['novel'] = self._as_indices('novel_classes', novel_classes)
        if 'base' in groups and 'novel' in groups:
            both = np.intersect1d(groups['base'], groups['novel'])
            if both.size:
                raise ValueError(f'classes {both.tolist()} are in both base_classes and novel_classes')
        for name, indices in (class_groups or {}).items():
            if name in groups:
                raise ValueError(f"class group name {name!r} clashes with the base/novel split")
            groups[str(name)] = self._as_indices(f'class_groups[{name!r}]', indices)
        self.groups = groups

    @staticmethod
    def _as_indices(what: str, indices: Sequence[int]) -> np.ndarray:
        arr = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        if (arr < 0).any():
            raise ValueError(f'{what} must be non-negative class indices, got {arr[arr < 0].tolist()}')
        return np.unique(arr)

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        """Score each prompt of each sample; keep only (iou, correct, label)
        arrays per image in ``self.results``: small and picklable, which is
        what ``collect_results`` needs to gather ranks (masks would be huge).

        Exactly one entry per data sample: ``collect_results`` cuts the
        gathered list to the data set size, which drops the samples the
        distributed sampler repeated to even out the ranks; an entry per
        prompt would make that cut wrong.
        """
        for sample in data_samples:
            name = _image_name(sample)
            gt = _get(sample, 'gt_instances')
            pred = _get(sample, 'pred_instances')
            if gt is None or pred is None:
                raise ValueError(f'{name}: data sample needs gt_instances and pred_instances')
            gt_labels = _labels_array(_get(gt, 'labels'))
            pred_labels = _labels_array(_get(pred, 'labels'))
            pred_masks = _get(pred, 'masks')
            gt_masks = _get(gt, 'masks')
            if pred_masks is None or gt_masks is None:
                raise ValueError(f'{name}: gt_instances and pred_instances both need masks')
            device = pred_masks.device if isinstance(pred_masks, Tensor) else torch.device('cpu')
            pred_masks = _mask_tensor(pred_masks, device)
            n_gt, n_pred = len(gt_labels), len(pred_labels)
            if n_pred != n_gt or pred_masks.shape[0] != n_gt:
                raise ValueError(f'{name}: {pred_masks.shape[0]} predicted masks / {n_pred} predicted labels '
                                 f'for {n_gt} ground-truth instances; the prompted protocol needs one '
                                 'prediction per ground-truth instance, in the same order')
            gt_masks = _mask_tensor(gt_masks, device)
            if gt_masks.shape[0] != n_gt:
                raise ValueError(f'{name}: {gt_masks.shape[0]} ground-truth masks for {n_gt} ground-truth labels')

            ori_shape = _hw(_meta(sample, 'ori_shape')) or tuple(pred_masks.shape[-2:])
            padded = tuple(s for s in (_hw(_meta(sample, 'pad_shape')), _hw(_meta(sample, 'batch_input_shape')))
                           if s is not None)
            gt_masks = gt_to_ori_frame(gt_masks, ori_shape, _hw(_meta(sample, 'img_shape')), padded, name)
            if tuple(pred_masks.shape[-2:]) != tuple(gt_masks.shape[-2:]):
                raise ValueError(f'{name}: predicted masks are {tuple(pred_masks.shape[-2:])} but the ground truth '
                                 f'at ori_shape is {tuple(gt_masks.shape[-2:])}; predictions must be at ori_shape')

            ious = mask_iou(pred_masks, gt_masks).cpu().numpy()
            self.results.append((ious, pred_labels == gt_labels, gt_labels))

    def compute_metrics(self, results: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Dict[str, float]:
        """Per-prompt means over the (gathered) results of all images."""
        if results:
            ious = np.concatenate([r[0] for r in results]).astype(np.float64)
            correct = np.concatenate([r[1] for r in results]).astype(bool)
            labels = np.concatenate([r[2] for r in results]).astype(np.int64)
        else:
            ious, correct, labels = np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)

        metrics: Dict[str, float] = {}
        metrics['miou'], metrics['accuracy'] = self._means('all', ious, correct)
        for name, indices in self.groups.items():
            keep = np.isin(labels, indices)
            metrics[f'miou_{name}'], metrics[f'acc_{name}'] = self._means(name, ious[keep], correct[keep])
        metrics['num_prompts'] = int(ious.size)
        return metrics

    @staticmethod
    def _means(group: str, ious: np.ndarray, correct: np.ndarray) -> Tuple[float, float]:
        if ious.size == 0:
            print_log(f'PromptSegMetric: no prompt in group {group!r}; its mIoU and accuracy are NaN',
                      logger='current', level=logging.WARNING)
            return float('nan'), float('nan')
        return float(ious.mean()), float(correct.mean())
