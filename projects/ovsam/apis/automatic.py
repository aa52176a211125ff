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

from .inputs import check_float, check_int, check_top_k
from .predictor import ImageState, OVSAMPredictor, VocabularyState

# (OVSAMPredictor knows nothing of this module: the generator is a user of the
# predictor's public API, like any other.)

__all__ = ['OVSAMAutomaticMaskGenerator']

_OUTPUT_MODES = ('binary_mask', 'uncompressed_rle', 'coco_rle')


def _check_point_grids(point_grids: Any, n_layers: int) -> List[np.ndarray]:
    if isinstance(point_grids, (np.ndarray, torch.Tensor)) and np.ndim(point_grids) == 2:
        raise ValueError('point_grids is a list of (M, 2) arrays, one per crop layer; wrap a single grid in a '
                         'list: point_grids=[grid]')
    try:
        grids = list(point_grids)
    except TypeError:
        raise ValueError(f'point_grids must be a list of (M, 2) arrays, one per crop layer, got '
                         f'{type(point_grids).__name__}') from None
    if len(grids) != n_layers + 1:
        raise ValueError(f'need {n_layers + 1} point grids (one per crop layer: crop_n_layers + 1), '
                         f'got {len(grids)}')
    out = []
    for i, g in enumerate(grids):
        try:
            arr = np.array(g.detach().cpu() if isinstance(g, torch.Tensor) else g)
            if arr.dtype.kind not in 'iuf':
                raise TypeError(f'dtype {arr.dtype}')
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f'point_grids[{i}] must be an (M, 2) array of numbers, got {type(g).__name__} '
                             f'({e})') from None
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ValueError(f'point_grids[{i}] must have shape (M, 2) with M >= 1 (x, y in [0, 1]), got '
                             f'{arr.shape}')
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f'point_grids[{i}] must hold finite x, y in [0, 1] (fractions of the crop size), '
                             f'got values in [{np.nanmin(arr):.6g}, {np.nanmax(arr):.6g}]'
                             f'{" with NaN/Inf" if not np.isfinite(arr).all() else ""}; divide pixel '
                             'coordinates by the image width and height')
        out.append(arr)
    return out


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
        point_grids: explicit grids (a list of (M, 2) arrays of x, y in [0, 1]),
            one per crop layer.
        min_mask_region_area: remove islands and holes smaller than this
            (pixels; needs OpenCV); 0 disables.
        output_mode: ``'binary_mask'``, ``'uncompressed_rle'`` or ``'coco_rle'``.
        top_k: classes reported per mask in ``'topk'`` (None: all).

    Every option is checked here (type, range, NaN): a bad one is a
    ``ValueError`` naming it. IoU thresholds and the overlap ratio lie in
    [0, 1]; score thresholds may be any finite number (one beyond the scores'
    range keeps nothing: an empty list).

    Images of any size work, crops included: crops that would hold no pixel
    (tiny images cut into more crops than they have rows or columns) are
    skipped. Crops are embedded as separate image states and never become the
    predictor's image; with a predictor shared between threads, one
    ``generate`` call answers for one image and one vocabulary (those current
    when it starts).

    Memory: no full-size float array is held for a batch (the predictor makes
    masks and stability scores a few prompts at a time); masks stay boolean
    and are run-length encoded a few at a time, so the peak is about one batch
    of ``points_per_batch`` boolean masks at the crop's size (64 x 12 MB on a
    12-megapixel photo, ``tools/analysis/memory_probe.py``), whatever the grid.
    ``output_mode='binary_mask'`` returns every kept mask at full size (1 byte
    per pixel each); ``min_mask_region_area`` uses segment_anything's
    post-processing, which stacks all kept masks at once.
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
                 top_k: Optional[int] = 5) -> None:
        from segment_anything.utils.amg import build_all_layer_point_grids
        if not isinstance(predictor, OVSAMPredictor):
            raise TypeError(f'predictor must be an OVSAMPredictor, got {type(predictor).__name__}')
        self.crop_n_layers = check_int(crop_n_layers, 'crop_n_layers', 0,
                                       fix='0 is the whole image only, n > 0 adds n layers of crops')
        if self.crop_n_layers > 8:
            n_crops = sum(4 ** i for i in range(self.crop_n_layers + 1))
            raise ValueError(f'crop_n_layers={crop_n_layers} would make {n_crops} crops; use at most a few '
                             'layers (SAM uses 0 or 1)')
        downscale = check_int(crop_n_points_downscale_factor, 'crop_n_points_downscale_factor', 1)
        if (points_per_side is None) == (point_grids is None):
            raise ValueError('give exactly one of points_per_side and point_grids (set the other to None)')
        if points_per_side is not None:
            pps = check_int(points_per_side, 'points_per_side', 1, fix='the grid needs at least 1 point per side')
            if pps > 1024:
                raise ValueError(f'points_per_side={pps} means {pps * pps} prompts per crop; use <= 1024 '
                                 '(SAM uses 32)')
            if int(pps / downscale ** self.crop_n_layers) < 1:
                raise ValueError(f'crop_n_points_downscale_factor={downscale} leaves no grid point in the deeper '
                                 f'crop layers with points_per_side={pps}: lower it')
            self.point_grids = build_all_layer_point_grids(pps, self.crop_n_layers, downscale)
        else:
            self.point_grids = _check_point_grids(point_grids, self.crop_n_layers)
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"output_mode must be 'binary_mask', 'uncompressed_rle' or 'coco_rle', "
                             f'got {output_mode!r}')
        self.predictor = predictor
        self.points_per_batch = check_int(points_per_batch, 'points_per_batch', 1)
        # filter thresholds: any finite number (beyond the scores' range nothing passes: an empty result)
        self.stability_score_thresh = check_float(stability_score_thresh, 'stability_score_thresh')
        self.stability_score_offset = check_float(stability_score_offset, 'stability_score_offset', 0, None,
                                                  fix='it is a logit offset, e.g. 1.0')
        self.mask_confidence_thresh = check_float(mask_confidence_thresh, 'mask_confidence_thresh')
        self.class_score_thresh = check_float(class_score_thresh, 'class_score_thresh')
        self.box_nms_thresh = check_float(box_nms_thresh, 'box_nms_thresh', 0, 1, fix='an IoU threshold')
        self.crop_nms_thresh = check_float(crop_nms_thresh, 'crop_nms_thresh', 0, 1, fix='an IoU threshold')
        self.crop_overlap_ratio = check_float(crop_overlap_ratio, 'crop_overlap_ratio', 0, 1)
        if self.crop_overlap_ratio >= 1:
            raise ValueError('crop_overlap_ratio must be < 1 (the fraction of a crop shared with its neighbour)')
        self.min_mask_region_area = check_int(min_mask_region_area, 'min_mask_region_area', 0,
                                              fix='an area in pixels; 0 disables')
        self.output_mode = output_mode
        if top_k is not None:
            check_int(top_k, 'top_k', 1, fix='how many classes to report per mask, or None for all')
        self.top_k = top_k

    # ------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, image: Optional[Any] = None, image_format: str = 'RGB') -> List[Dict[str, Any]]:
        """Masks for the whole image.

        ``image=None`` uses the image already set on the predictor (its cached
        features are reused); otherwise ``image`` becomes the predictor's image
        (as ``set_image``). Crops never do. Each record has ``segmentation``
        (per ``output_mode``), ``bbox`` (x, y, w, h), ``area``,
        ``stability_score``, ``mask_confidence``, ``label``, ``class_name``,
        ``score``, ``topk`` (list of ``[class_name, probability]``),
        ``point_coords`` ([[x, y]]) and ``crop_box`` (x, y, w, h); sorted by
        area, largest first.
        """
        pred = self.predictor
        vocab = pred.vocabulary
        if vocab is None:
            raise RuntimeError('no vocabulary: set one on the predictor (set_vocabulary / set_vocabulary_spec) '
                               'before generating labelled masks')
        if image is not None:
            state = pred.compute_image_state(image, image_format)
            pred.restore_image_state(state)
        else:
            state = pred.image_state  # raises when no image is set
        return self._records(self._generate_masks(state, vocab), vocab)

    def _records(self, data, vocab: VocabularyState) -> List[Dict[str, Any]]:
        from segment_anything.utils.amg import area_from_rle, box_xyxy_to_xywh, coco_encode_rle, rle_to_mask
        if self.min_mask_region_area > 0 and len(data['rles']) > 0:
            from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
            data = SamAutomaticMaskGenerator.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        names = vocab.class_names
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
            raise ValueError(f'query must be a non-empty class name (str), got {query!r}')
        min_score = check_float(min_score, 'min_score', 0, 1, fix='a class probability')
        pred = self.predictor
        for _ in range(3):  # another thread may swap the vocabulary in between
            pred.add_class(query.strip())
            vocab = pred.vocabulary
            index = None if vocab is None else vocab.find(query.strip())
            if index is not None:
                break
        else:
            raise RuntimeError(f'the vocabulary kept changing while adding {query!r} (another thread?); retry')
        if image is not None:
            state = pred.compute_image_state(image, image_format)
            pred.restore_image_state(state)
        else:
            state = pred.image_state
        records = self._records(self._generate_masks(state, vocab), vocab)
        hits = [r for r in records if r['label'] == index and r['score'] >= min_score]
        name = vocab.class_names[index]
        for r in hits:
            r['query_class'] = name
            r['query_score'] = r['score']
        hits.sort(key=lambda r: -r['score'])
        return hits

    # ------------------------------------------------------------ internals
    def _generate_masks(self, state: ImageState, vocab: VocabularyState):
        from segment_anything.utils.amg import MaskData, generate_crop_boxes
        pred = self.predictor
        h, w = state.meta['ori_shape']
        crop_boxes, layer_idxs = generate_crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        image = state.image
        # deeper layers first, the whole image last (the order NMS ties are broken in)
        for i in sorted(range(len(crop_boxes)), key=lambda i: -layer_idxs[i]):
            crop_box, layer = crop_boxes[i], layer_idxs[i]
            x0, y0, x1, y1 = crop_box
            if x1 <= x0 or y1 <= y0:
                continue  # a crop without pixels (an image smaller than its crop grid)
            if layer == 0:
                st = state
            else:
                crop = image[y0:y1, x0:x1]
                # the stored image is uint8, or float32 in 0..255 (images take floats in 0..1)
                st = pred.compute_image_state(crop if crop.dtype == np.uint8 else
                                              np.clip(crop / 255.0, 0.0, 1.0))
            pred.prepare_image_state(st)  # a grid of prompts on it (a no-op when still prepared)
            data.cat(self._process_crop(st, vocab, crop_box, layer, (h, w)))
        if len(crop_boxes) > 1 and len(data['rles']) > 0:
            # duplicates across crops: prefer masks from smaller crops
            scores = 1 / box_area(data['crop_boxes'].float())
            keep = batched_nms(data['boxes'].float(), scores, torch.zeros_like(scores),
                               iou_threshold=self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        return data

    def _empty(self, vocab: VocabularyState):
        from segment_anything.utils.amg import MaskData
        k = check_top_k(self.top_k, vocab.num_classes)
        return MaskData(rles=[], boxes=torch.zeros(0, 4), points=torch.zeros(0, 2),
                        stability_score=torch.zeros(0), mask_confidence=torch.zeros(0),
                        labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                        topk_labels=torch.zeros(0, k, dtype=torch.long), topk_scores=torch.zeros(0, k),
                        crop_boxes=torch.zeros(0, 4, dtype=torch.long))

    def _process_crop(self, st: ImageState, vocab: VocabularyState, crop_box: List[int], layer: int,
                      orig_size):
        from segment_anything.utils.amg import MaskData, batch_iterator, uncrop_boxes_xyxy, uncrop_points
        ch, cw = st.meta['ori_shape']
        points_for_crop = self.point_grids[layer] * np.array([[cw, ch]])
        data = MaskData()
        for (points, ) in batch_iterator(self.points_per_batch, points_for_crop):
            data.cat(self._process_batch(st, vocab, points, crop_box, orig_size))
        if len(data._stats) == 0 or len(data['rles']) == 0:
            return self._empty(vocab)
        keep = batched_nms(data['boxes'].float(), data['stability_score'].float(),
                           torch.zeros(len(data['boxes'])), iou_threshold=self.box_nms_thresh)
        data.filter(keep)
        data['boxes'] = uncrop_boxes_xyxy(data['boxes'], crop_box)
        data['points'] = uncrop_points(data['points'], crop_box)
        data['crop_boxes'] = torch.tensor([crop_box for _ in range(len(data['rles']))], dtype=torch.long)
        return data

    def _process_batch(self, st: ImageState, vocab: VocabularyState, points: np.ndarray, crop_box: List[int],
                       orig_size):
        """One batch of grid points -> filtered masks as RLE. Full-size work stays
        boolean: the predictor makes the masks and stability scores a few
        prompts at a time (no full-size float logits), and masks are run-length
        encoded a few at a time (:data:`RLE_VALUES`)."""
        from segment_anything.utils.amg import MaskData, batched_mask_to_box, is_box_near_crop_edge
        pred = self.predictor
        oh, ow = orig_size
        sx, sy = st.meta['scale_factor']
        pts = torch.as_tensor(points, dtype=torch.float32)
        in_pts = (pts * pts.new_tensor([sx, sy])).to(pred.device)[:, None, :]
        labels = torch.ones(in_pts.shape[:2], dtype=torch.long, device=pred.device)
        out = pred.predict_torch(in_pts, labels, top_k=self.top_k, image_state=st, vocabulary=vocab,
                                 stability_score_offset=self.stability_score_offset)
        masks = out['masks'].cpu()
        data = MaskData(points=pts, stability_score=out['stability_scores'].cpu(),
                        mask_confidence=out['mask_confidence'].cpu(), labels=out['labels'].cpu(),
                        scores=out['scores'].cpu(), topk_labels=out['topk_labels'].cpu(),
                        topk_scores=out['topk_scores'].cpu())
        del out
        keep = masks.flatten(1).any(1)
        if self.stability_score_thresh > 0:
            keep &= data['stability_score'] >= self.stability_score_thresh
        if self.mask_confidence_thresh > 0:
            keep &= data['mask_confidence'] >= self.mask_confidence_thresh
        if self.class_score_thresh > 0:
            keep &= data['scores'] >= self.class_score_thresh
        if not torch.all(keep):
            data.filter(keep)
            masks = masks[keep]
        data['boxes'] = batched_mask_to_box(masks)
        keep = ~is_box_near_crop_edge(data['boxes'], crop_box, [0, 0, ow, oh])
        if not torch.all(keep):
            data.filter(keep)
            masks = masks[keep]
        data['rles'] = _masks_to_rles(masks, crop_box, oh, ow)
        return data


#: mask pixels run-length encoded at once (bounds the boolean temporaries of
#: segment_anything's encoder, which copies its input twice)
RLE_VALUES = 1 << 26


def _masks_to_rles(masks: torch.Tensor, crop_box: List[int], oh: int, ow: int) -> List[Dict]:
    """(N, h, w) bool masks of a crop -> N uncompressed RLEs in the full image,
    a few masks at a time (same RLEs as encoding them all at once)."""
    from segment_anything.utils.amg import mask_to_rle_pytorch, uncrop_masks
    step = max(1, RLE_VALUES // max(1, oh * ow))
    rles = []
    for s in range(0, len(masks), step):
        rles += mask_to_rle_pytorch(uncrop_masks(masks[s:s + step], crop_box, oh, ow))
    return rles
