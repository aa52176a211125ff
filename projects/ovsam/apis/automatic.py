"""Segment everything, with a class for every mask.

:class:`OVSAMAutomaticMaskGenerator` follows SAM's automatic mask generation
recipe (a grid of single-point prompts, processed in batches, optionally over
several crop layers; quality filtering; box NMS within and across crops;
optional removal of small islands and holes) and reuses segment_anything's
helpers for grids, stability scores, crop boxes, RLE and NMS bookkeeping.

Differences from SAM: OV-SAM's decoder has one mask token and no IoU head, so
there is one mask per point and quality is judged by the *stability score*
(IoU of the mask thresholded at logit -offset and +offset) and optionally by the
mask's mean foreground probability (``mask_confidence``); NMS ranks by the
stability score. Every kept mask carries the label, class name and probability
given by OV-SAM's classifier over the predictor's current vocabulary.
"""
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from .predictor import OVSAMPredictor

# (OVSAMPredictor knows nothing of this module: the generator is a user of the
# predictor's public API, like any other.)

__all__ = ['OVSAMAutomaticMaskGenerator']


class OVSAMAutomaticMaskGenerator:
    """Whole-image instance masks with open-vocabulary labels.

    Args:
        predictor: an :class:`OVSAMPredictor` (its vocabulary labels the masks).
        points_per_side: grid points per side (``points_per_side ** 2`` point
            prompts per crop); None when ``point_grids`` is given.
        points_per_batch: point prompts run through the decoder at once.
        stability_score_thresh: keep masks whose stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        mask_confidence_thresh: keep masks whose mean foreground probability
            is at least this (0 disables).
        class_score_thresh: keep masks whose top class probability is at least
            this (0 disables).
        box_nms_thresh: IoU threshold of the box NMS among a crop's masks.
        crop_n_layers / crop_nms_thresh / crop_overlap_ratio /
        crop_n_points_downscale_factor: SAM's crop layers (0 = whole image only).
        point_grids: explicit normalised grids, one per crop layer.
        min_mask_region_area: remove islands and holes smaller than this
            (pixels; needs OpenCV); 0 disables.
        output_mode: ``'binary_mask'``, ``'uncompressed_rle'`` or ``'coco_rle'``.
        top_k: classes reported per mask in ``'topk'``.
    """

    def __init__(self,
                 predictor: OVSAMPredictor,
                 points_per_side: Optional[int] = 32,
                 points_per_batch: int = 64,
                 stability_score_thresh: float = 0.9,
                 stability_score_offset: float = 1.0,
                 mask_confidence_thresh: float = 0.0,
                 class_score_thresh: float = 0.0,
                 box_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1,
                 point_grids: Optional[List[np.ndarray]] = None,
                 min_mask_region_area: int = 0,
                 output_mode: str = 'binary_mask',
                 top_k: int = 5) -> None:
        from segment_anything.utils.amg import build_all_layer_point_grids
        if (points_per_side is None) == (point_grids is None):
            raise ValueError('give exactly one of points_per_side and point_grids')
        if points_per_side is not None:
            if int(points_per_side) < 1:
                raise ValueError(f'points_per_side must be >= 1, got {points_per_side}')
            self.point_grids = build_all_layer_point_grids(int(points_per_side), crop_n_layers,
                                                           crop_n_points_downscale_factor)
        else:
            if len(point_grids) != crop_n_layers + 1:
                raise ValueError(f'need {crop_n_layers + 1} point grids (one per crop layer), '
                                 f'got {len(point_grids)}')
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        if output_mode not in ('binary_mask', 'uncompressed_rle', 'coco_rle'):
            raise ValueError(f"output_mode must be 'binary_mask', 'uncompressed_rle' or 'coco_rle', "
                             f'got {output_mode!r}')
        if points_per_batch < 1:
            raise ValueError('points_per_batch must be >= 1')
        self.predictor = predictor
        self.points_per_batch = int(points_per_batch)
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_confidence_thresh = mask_confidence_thresh
        self.class_score_thresh = class_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.top_k = top_k

    # ------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, image: Optional[Any] = None, image_format: str = 'RGB') -> List[Dict[str, Any]]:
        """Masks for the whole image.

        ``image=None`` uses the image already set on the predictor (its cached
        features are reused). Afterwards the predictor again holds the whole
        image. Each record has ``segmentation`` (per ``output_mode``),
        ``bbox`` (x, y, w, h), ``area``, ``stability_score``,
        ``mask_confidence``, ``label``, ``class_name``, ``score``, ``topk``
        (list of ``[class_name, probability]``), ``point_coords`` ([[x, y]])
        and ``crop_box`` (x, y, w, h); sorted by area, largest first.
        """
        from segment_anything.utils.amg import (area_from_rle, box_xyxy_to_xywh, coco_encode_rle,
                                                rle_to_mask)
        pred = self.predictor
        if pred.num_classes <= 0:
            raise RuntimeError('no vocabulary: set one on the predictor (set_vocabulary / set_vocabulary_spec) '
                               'before generating labelled masks')
        if image is not None:
            pred.set_image(image, image_format)
        pred.image_state  # raises when no image is set
        data = self._generate_masks()
        if self.min_mask_region_area > 0 and len(data['rles']) > 0:
            from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
            data = SamAutomaticMaskGenerator.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        names = pred.class_names
        records = []
        for i, rle in enumerate(data['rles']):
            if self.output_mode == 'coco_rle':
                seg = coco_encode_rle(rle)
            elif self.output_mode == 'binary_mask':
                seg = rle_to_mask(rle)
            else:
                seg = rle
            label = int(data['labels'][i])
            records.append({
                'segmentation': seg,
                'area': int(area_from_rle(rle)),
                'bbox': [float(v) for v in box_xyxy_to_xywh(torch.as_tensor(data['boxes'][i])).tolist()],
                'stability_score': float(data['stability_score'][i]),
                'mask_confidence': float(data['mask_confidence'][i]),
                'label': label,
                'class_name': names[label],
                'score': float(data['scores'][i]),
                'topk': [[names[int(c)], float(s)] for c, s in zip(data['topk_labels'][i],
                                                                   data['topk_scores'][i])],
                'point_coords': [[float(v) for v in data['points'][i]]],
                'crop_box': [float(v) for v in box_xyxy_to_xywh(torch.as_tensor(data['crop_boxes'][i])).tolist()],
            })
        records.sort(key=lambda r: -r['area'])
        return records

    def find(self, query: str, image: Optional[Any] = None, image_format: str = 'RGB',
             min_score: float = 0.0) -> List[Dict[str, Any]]:
        """Instances of ``query`` (a class name, commas separating synonyms).

        The query is matched to a vocabulary class sharing one of its synonyms;
        otherwise it is embedded and *added* to the predictor's vocabulary.
        Then everything is segmented and classified, and the masks recognised
        as that class (top-1) with probability >= ``min_score`` are returned,
        best first; each record gets ``query_class`` and ``query_score``.
        """
        if not isinstance(query, str) or not query.strip(' ,'):
            raise ValueError('query must be a non-empty class name')
        index = self.predictor.add_class(query.strip())
        records = self.generate(image, image_format)
        hits = [r for r in records if r['label'] == index and r['score'] >= min_score]
        name = self.predictor.class_names[index]
        for r in hits:
            r['query_class'] = name
            r['query_score'] = r['score']
        hits.sort(key=lambda r: -r['score'])
        return hits

    # ------------------------------------------------------------ internals
    def _generate_masks(self):
        from segment_anything.utils.amg import MaskData, generate_crop_boxes
        pred = self.predictor
        full_state = pred.image_state
        h, w = pred.original_size
        crop_boxes, layer_idxs = generate_crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        # The whole image (layer 0) comes last so that the predictor ends up
        # holding it again without re-embedding.
        order = sorted(range(len(crop_boxes)), key=lambda i: -layer_idxs[i])
        image = pred.original_image
        for i in order:
            crop_box, layer = crop_boxes[i], layer_idxs[i]
            if layer == 0:
                pred.restore_image_state(full_state)
            else:
                x0, y0, x1, y1 = crop_box
                crop = image[y0:y1, x0:x1]
                # the stored image is uint8, or float32 in 0..255 (set_image takes floats in 0..1)
                pred.set_image(crop if crop.dtype == np.uint8 else crop / 255.0)
            data.cat(self._process_crop(crop_box, layer, (h, w)))
        pred.restore_image_state(full_state)
        if len(crop_boxes) > 1 and len(data['rles']) > 0:
            # duplicates across crops: prefer masks from smaller crops
            scores = 1 / box_area(data['crop_boxes'].float())
            keep = batched_nms(data['boxes'].float(), scores, torch.zeros_like(scores),
                               iou_threshold=self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        return data

    def _empty(self):
        from segment_anything.utils.amg import MaskData
        k = max(1, min(int(self.top_k), self.predictor.num_classes))
        return MaskData(rles=[], boxes=torch.zeros(0, 4), points=torch.zeros(0, 2),
                        stability_score=torch.zeros(0), mask_confidence=torch.zeros(0),
                        labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                        topk_labels=torch.zeros(0, k, dtype=torch.long), topk_scores=torch.zeros(0, k),
                        crop_boxes=torch.zeros(0, 4, dtype=torch.long))

    def _process_crop(self, crop_box: List[int], layer: int, orig_size):
        from segment_anything.utils.amg import MaskData, batch_iterator, uncrop_boxes_xyxy, uncrop_points
        pred = self.predictor
        ch, cw = pred.original_size
        points_for_crop = self.point_grids[layer] * np.array([[cw, ch]])
        data = MaskData()
        for (points, ) in batch_iterator(self.points_per_batch, points_for_crop):
            data.cat(self._process_batch(points, crop_box, orig_size))
        if len(data._stats) == 0 or len(data['rles']) == 0:
            return self._empty()
        keep = batched_nms(data['boxes'].float(), data['stability_score'].float(),
                           torch.zeros(len(data['boxes'])), iou_threshold=self.box_nms_thresh)
        data.filter(keep)
        data['boxes'] = uncrop_boxes_xyxy(data['boxes'], crop_box)
        data['points'] = uncrop_points(data['points'], crop_box)
        data['crop_boxes'] = torch.tensor([crop_box for _ in range(len(data['rles']))], dtype=torch.long)
        return data

    def _process_batch(self, points: np.ndarray, crop_box: List[int], orig_size):
        from segment_anything.utils.amg import (MaskData, batched_mask_to_box, calculate_stability_score,
                                                is_box_near_crop_edge, mask_to_rle_pytorch, uncrop_masks)
        pred = self.predictor
        oh, ow = orig_size
        sx, sy = pred.scale_factor
        pts = torch.as_tensor(points, dtype=torch.float32)
        in_pts = (pts * pts.new_tensor([sx, sy])).to(pred.device)[:, None, :]
        labels = torch.ones(in_pts.shape[:2], dtype=torch.long, device=pred.device)
        out = pred.predict_torch(in_pts, labels, top_k=self.top_k, return_logits=True)
        logits = out['logits']
        data = MaskData(logits=logits.cpu(), points=pts,
                        mask_confidence=out['mask_confidence'].cpu(), labels=out['labels'].cpu(),
                        scores=out['scores'].cpu(), topk_labels=out['topk_labels'].cpu(),
                        topk_scores=out['topk_scores'].cpu())
        del out
        data['stability_score'] = torch.nan_to_num(
            calculate_stability_score(data['logits'], 0.0, self.stability_score_offset), nan=0.0)
        keep = (data['logits'] > 0).flatten(1).any(1)
        if self.stability_score_thresh > 0:
            keep &= data['stability_score'] >= self.stability_score_thresh
        if self.mask_confidence_thresh > 0:
            keep &= data['mask_confidence'] >= self.mask_confidence_thresh
        if self.class_score_thresh > 0:
            keep &= data['scores'] >= self.class_score_thresh
        data.filter(keep)
        masks = data['logits'] > 0
        del data['logits']
        data['boxes'] = batched_mask_to_box(masks)
        keep = ~is_box_near_crop_edge(data['boxes'], crop_box, [0, 0, ow, oh])
        if not torch.all(keep):
            data.filter(keep)
            masks = masks[keep]
        masks = uncrop_masks(masks, crop_box, oh, ow)
        data['rles'] = mask_to_rle_pytorch(masks)
        return data
