"""OVSAM: the open-vocabulary SAM detector (an mmdet model).

``backbone`` (frozen CLIP) -> ``neck`` (SAM2CLIP adapter) -> SAM image
embedding; ``pe`` (SAM prompt encoder) encodes box/point prompts;
``mask_decoder`` (CLIP2SAM head) predicts one mask and class logits per prompt
from the embedding and an FPN (``fpn_neck``) over the CLIP levels; at test time
the frozen-CLIP region scores are fused in (:mod:`.ov_ensemble`).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ..registry import MODELS, build_data_preprocessor
from .ov_ensemble import open_vocab_ensemble
from .prompts import check_prompts, embed_prompts


def postprocess_masks(mask_logits: Tensor, pad_shape: Tuple[int, int], img_shape: Tuple[int, int],
                      ori_shape: Tuple[int, int]) -> Tensor:
    """Low-res logits (N, 1, h, w) -> logits (N, 1, *ori_shape): to the padded
    input, crop the padding, resize to the original image."""
    x = F.interpolate(mask_logits, pad_shape, mode='bilinear', align_corners=False)
    x = x[..., :img_shape[0], :img_shape[1]]
    return F.interpolate(x, ori_shape, mode='bilinear', align_corners=False)


@MODELS.register_module()
class OVSAM(BaseDetector):
    """Open-Vocabulary SAM.

    Args:
        backbone: :class:`OpenCLIPBackbone` config.
        neck: :class:`SAM2CLIPAdapter` config.
        prompt_encoder: :class:`SAMPromptEncoder` config (stored as ``pe``).
        mask_decoder: :class:`CLIP2SAMHead` config.
        fpn_neck: mmdet ``FPN`` config over the CLIP levels.
        prompt_source: ``'gt'`` to prompt with ``gt_instances`` (interactive
            protocol, training) or ``'pred'`` to prompt with
            ``pred_instances`` already in the data sample (detector proposals).
        prompt_mode: see :func:`ovsam.models.prompts.embed_prompts`.
        use_clip_ensemble: fuse frozen-CLIP region scores at test time.
        alpha / beta: CLIP weights for seen / unseen classes.
        base_classes / novel_classes: class indices of the split. With a split,
            base classes are "seen" and classes in neither are excluded; without
            one every class counts as unseen (as in the released code).
        label_source: ``'ovsam'`` or ``'detector'`` (keep the proposal labels).
        data_preprocessor: :class:`OVSAMDataPreprocessor` config.
        checkpoints: local files of the official release to assemble the
            model from, ``dict(clip=..., sam2clip=..., clip2sam=..., sam=...)``
            (any subset); loaded strictly, see
            :func:`ovsam.checkpoint.load_official_ovsam`.
    """

    def __init__(self,
                 backbone: Dict,
                 neck: Dict,
                 prompt_encoder: Dict,
                 mask_decoder: Dict,
                 fpn_neck: Dict,
                 prompt_source: str = 'gt',
                 prompt_mode: str = 'auto',
                 use_clip_ensemble: bool = True,
                 alpha: float = 0.1,
                 beta: float = 0.9,
                 base_classes: Optional[Sequence[int]] = None,
                 novel_classes: Optional[Sequence[int]] = None,
                 label_source: str = 'ovsam',
                 data_preprocessor: Optional[Dict] = None,
                 checkpoints: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(data_preprocessor=build_data_preprocessor(data_preprocessor), init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck)
        self.pe = MODELS.build(prompt_encoder)
        self.mask_decoder = MODELS.build(mask_decoder)
        self.fpn_neck = MODELS.build(fpn_neck)
        if prompt_source not in ('gt', 'pred'):
            raise ValueError(f"prompt_source must be 'gt' or 'pred', got {prompt_source!r}")
        if label_source not in ('ovsam', 'detector'):
            raise ValueError(f"label_source must be 'ovsam' or 'detector', got {label_source!r}")
        self.prompt_source = prompt_source
        self.prompt_mode = prompt_mode
        self.use_clip_ensemble = use_clip_ensemble
        self.alpha = alpha
        self.beta = beta
        self.label_source = label_source
        self.base_classes = None if base_classes is None else list(base_classes)
        self.novel_classes = None if novel_classes is None else list(novel_classes)
        if (self.base_classes is None) != (self.novel_classes is None):
            raise ValueError('give both base_classes and novel_classes, or neither')
        if checkpoints:
            from ..checkpoint import load_official_ovsam
            unknown = set(checkpoints) - {'clip', 'sam2clip', 'clip2sam', 'sam'}
            if unknown:
                raise ValueError(f'checkpoints: unknown sources {sorted(unknown)}; '
                                 'use clip, sam2clip, clip2sam, sam')
            load_official_ovsam(self, **{k: v for k, v in checkpoints.items() if v})

    # ---------------------------------------------------------------- features
    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tuple[Tensor, ...], Tensor, Tuple[Tensor, ...]]:
        """Images (B, 3, S, S) -> CLIP levels, SAM image embedding (B, 256, S/16, S/16), FPN levels."""
        clip_feats = self.backbone(batch_inputs)
        return clip_feats, self.neck(clip_feats), self.fpn_features(clip_feats)

    def fpn_features(self, clip_feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """FPN levels in contiguous NCHW: convolutions may run channels-last
        (the fast CPU path), but mmcv's RoIAlign reads NCHW memory regardless of
        strides. The RoI callers guard for that themselves; converting here puts
        the one copy in the image-level stage, so their guard is a no-op."""
        return tuple(f.contiguous() for f in self.fpn_neck(clip_feats))

    def _split_masks(self, num_classes: int, device) -> Tuple[Tensor, Optional[Tensor]]:
        seen = torch.zeros(num_classes + 1, dtype=torch.bool, device=device)
        seen[-1] = True
        allowed = None
        if self.base_classes is not None:
            for name, ids in (('base', self.base_classes), ('novel', self.novel_classes)):
                if ids and max(ids) >= num_classes:
                    raise ValueError(f'{name} class index {max(ids)} >= vocabulary size {num_classes}')
            seen[self.base_classes] = True
            allowed = torch.zeros(num_classes, dtype=torch.bool, device=device)
            allowed[self.base_classes + self.novel_classes] = True
        return seen, allowed

    def classify_with_clip(self, c5: Tensor, boxes: Tensor, batch_index: int = 0) -> Tensor:
        """Frozen-CLIP logits (N, K + 1) for boxes (N, 4) of image ``batch_index``."""
        idx = boxes.new_full((boxes.shape[0], 1), float(batch_index))
        rois = torch.cat([idx, boxes], dim=1)
        if self.backbone.roi_size > 0:
            embed = self.backbone.region_embed(c5, rois)
        else:
            raise NotImplementedError('mask-pooled CLIP embeddings: use classify_with_clip_masks')
        return self.mask_decoder.classifier(embed)

    # ---------------------------------------------------------------- predict
    def predict_single(self, clip_feats: Sequence[Tensor], image_embed: Tensor, fpn_feats: Sequence[Tensor],
                       prompts: InstanceData, meta: dict, index: int = 0) -> InstanceData:
        """Masks and labels for the prompts of image ``index`` of the batch.

        ``prompts`` hold ``bboxes`` (N, 4) and/or ``point_coords`` (N, P, 2) in
        the input frame. Returns masks at the original image size.
        """
        check_prompts(prompts, meta['img_shape'])
        sparse, dense, is_point = embed_prompts(self.pe, prompts, self.prompt_mode)
        head = self.mask_decoder
        n = sparse.shape[0]
        batch_idx = torch.full((n, ), index, dtype=torch.long, device=sparse.device)
        mask_logits, head_logits, mask_boxes = head(image_embed, self.pe.get_dense_pe(), sparse, dense,
                                                    fpn_feats, batch_idx=batch_idx)
        scores = head_logits
        if self.use_clip_ensemble:
            c5 = clip_feats[-1]
            # CLIP looks at the prompt box where there is one, else at the
            # predicted mask's box (never at ground truth).
            if 'bboxes' in prompts:
                prompt_boxes = prompts.bboxes.tensor if hasattr(prompts.bboxes, 'tensor') else prompts.bboxes
                boxes = torch.where(is_point[:, None], mask_boxes, prompt_boxes.float())
            else:
                boxes = mask_boxes
            if self.backbone.roi_size > 0:
                clip_logits = self.classify_with_clip(c5[index:index + 1], boxes)
            else:
                low = F.interpolate(mask_logits, c5.shape[-2:], mode='bilinear', align_corners=False)
                embed = self.backbone.mask_embed(c5[index:index + 1], (low[:, 0] > 0).float())
                clip_logits = head.classifier(embed)
            low = F.interpolate(mask_logits, c5.shape[-2:], mode='bilinear', align_corners=False)
            valid = (low[:, 0] > 0).flatten(1).any(dim=1)
            seen, allowed = self._split_masks(head.num_classes, scores.device)
            scores = open_vocab_ensemble(head_logits, clip_logits, seen, self.alpha, self.beta,
                                         valid=valid, allowed=allowed)
        probs = scores.softmax(-1)[:, :-1]
        label_scores, labels = probs.max(dim=-1)

        masks = postprocess_masks(mask_logits, meta['batch_input_shape'], meta['img_shape'],
                                  meta['ori_shape'])[:, 0] > 0
        results = InstanceData()
        results.masks = masks
        results.labels = labels
        results.scores = label_scores
        results.cls_scores = probs
        scale = mask_boxes.new_tensor(meta.get('scale_factor', (1., 1.))).repeat(2)
        if 'bboxes' in prompts:
            b = prompts.bboxes.tensor if hasattr(prompts.bboxes, 'tensor') else prompts.bboxes
            results.bboxes = b.float() / scale
        else:
            results.bboxes = mask_boxes / scale
        if self.prompt_source == 'pred' and 'scores' in prompts:
            results.scores = prompts.scores
            if self.label_source == 'detector' and 'labels' in prompts:
                results.labels = prompts.labels
        return results

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        clip_feats, image_embed, fpn_feats = self.extract_feat(batch_inputs)
        for i, sample in enumerate(batch_data_samples):
            prompts = sample.gt_instances if self.prompt_source == 'gt' else sample.pred_instances
            meta = sample.metainfo
            if len(prompts) == 0:
                empty = InstanceData()
                h, w = meta['ori_shape']
                empty.masks = torch.zeros(0, h, w, dtype=torch.bool, device=batch_inputs.device)
                empty.labels = torch.zeros(0, dtype=torch.long, device=batch_inputs.device)
                empty.scores = torch.zeros(0, device=batch_inputs.device)
                empty.bboxes = torch.zeros(0, 4, device=batch_inputs.device)
                sample.pred_instances = empty
                continue
            sample.pred_instances = self.predict_single(clip_feats, image_embed, fpn_feats, prompts, meta, i)
        return batch_data_samples

    # ---------------------------------------------------------------- training
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """CLIP2SAM training: gt prompts (already sampled by the data
        preprocessor), recognition on ground-truth boxes."""
        clip_feats, image_embed, fpn_feats = self.extract_feat(batch_inputs)
        sparse_all, dense_all, idx_all, boxes_all, labels_all, masks_all = [], [], [], [], [], []
        has_masks = all('masks' in s.gt_instances for s in batch_data_samples)
        for i, sample in enumerate(batch_data_samples):
            gt = sample.gt_instances
            if len(gt) == 0:
                continue
            sparse, dense, _ = embed_prompts(self.pe, gt, self.prompt_mode)
            sparse_all.append(sparse)
            dense_all.append(dense)
            idx_all.append(torch.full((len(gt), ), i, dtype=torch.long, device=sparse.device))
            b = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
            boxes_all.append(b.float())
            labels_all.append(gt.labels)
            if has_masks:
                m = gt.masks
                m = m.to_tensor(torch.float32, sparse.device) if hasattr(m, 'to_tensor') else m.float()
                masks_all.append(m)
        head = self.mask_decoder
        if not sparse_all:
            # No instance in the batch: a zero loss that still touches every
            # trainable parameter keeps DDP in step.
            zero = sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)
            return dict(loss_cls=zero, loss_mask=zero, loss_dice=zero)
        batch_idx = torch.cat(idx_all)
        mask_logits, cls_logits, _ = head(image_embed, self.pe.get_dense_pe(), torch.cat(sparse_all),
                                          torch.cat(dense_all), fpn_feats, batch_idx=batch_idx,
                                          boxes=torch.cat(boxes_all))
        gt_masks = torch.cat(masks_all) if has_masks else None
        return head.loss(mask_logits, cls_logits, torch.cat(labels_all), gt_masks)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList = None):
        clip_feats, image_embed, fpn_feats = self.extract_feat(batch_inputs)
        return image_embed, fpn_feats
