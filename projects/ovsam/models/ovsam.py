"""OVSAM: the open-vocabulary SAM detector (an mmdet model), owner of the per-prompt maths.

Image side, once per image (:meth:`OVSAM.extract_feat`): ``backbone`` (frozen
CLIP) -> ``neck`` (SAM2CLIP adapter) -> SAM image embedding, and ``fpn_neck``
over the CLIP levels. Prompt side, for N prompts of one image:

1. :meth:`OVSAM.decode` — ``pe`` (SAM prompt encoder) tokens -> ``mask_decoder``
   (CLIP2SAM head): mask logits, head class logits, boxes of the masks;
2. :meth:`OVSAM.recognise` — frozen-CLIP region logits on C5 over the box
   recognition looks at (:meth:`OVSAM.recognition_boxes`) and the
   open-vocabulary ensemble (:meth:`OVSAM.fuse`) under the model's class split
   (:meth:`OVSAM.class_split`).

:meth:`OVSAM.predict_prompts` runs both; ``predict`` (mmdet testing), the
interactive predictor, the ONNX export and the benchmark all go through these
methods, so a subclass that changes one (e.g. the class split of
:class:`~ovsam.models.OVSAMFrequencySplit`) changes every entry point.
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ..registry import MODELS, build_data_preprocessor
from .common import postprocess_masks
from .ov_ensemble import open_vocab_ensemble
from .prompts import box_tensor, check_prompts, embed_prompts, instance_has_mask


class ImageFeatures(NamedTuple):
    """What :meth:`OVSAM.extract_feat` computes once per image batch."""
    clip_feats: Tuple[Tensor, ...]  #: frozen-CLIP levels C2..C5, (B, C_i, S/s_i, S/s_i)
    image_embed: Tensor  #: SAM-style image embedding (B, 256, S/16, S/16) from SAM2CLIP
    fpn_feats: Tuple[Tensor, ...]  #: FPN levels over the CLIP levels (CLIP2SAM's recognition)


class PromptOutputs(NamedTuple):
    """What :meth:`OVSAM.predict_prompts` returns for N prompts of one image."""
    mask_logits: Tensor  #: (N, 1, 4E, 4E) low-res logits in the padded input frame
    scores: Tensor  #: (N, K + 1) class scores (background last); softmax gives probabilities
    boxes: Tensor  #: (N, 4) boxes recognition looked at, input frame
    mask_boxes: Tensor  #: (N, 4) boxes of the predicted masks, input frame


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
        base_classes / novel_classes: class indices of the split (see
            :meth:`set_class_split`). Base classes are "seen"; with novel
            classes too, classes in neither are excluded; without a split every
            class counts as unseen (as in the released code).
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
        self.set_class_split(base_classes, novel_classes)
        if checkpoints:
            from ..checkpoint import load_official_ovsam
            unknown = set(checkpoints) - {'clip', 'sam2clip', 'clip2sam', 'sam'}
            if unknown:
                raise ValueError(f'checkpoints: unknown sources {sorted(unknown)}; '
                                 'use clip, sam2clip, clip2sam, sam')
            load_official_ovsam(self, **{k: v for k, v in checkpoints.items() if v})

    # ---------------------------------------------------------------- image side
    def extract_feat(self, batch_inputs: Tensor) -> ImageFeatures:
        """Images (B, 3, S, S) -> :class:`ImageFeatures` (CLIP levels, SAM image
        embedding (B, 256, S/16, S/16), FPN levels)."""
        clip_feats = tuple(self.backbone(batch_inputs))
        # C5 in contiguous NCHW, once per image: the frozen-CLIP region branch
        # RoI-aligns it for every prompt, and mmcv's RoIAlign reads NCHW memory
        # whatever the strides (a channels-last C5 of the fast CPU trunk would
        # be copied on every click: ~20 ms at RN50x16 / 1024 px). A no-op otherwise.
        clip_feats = clip_feats[:-1] + (clip_feats[-1].contiguous(), )
        return ImageFeatures(clip_feats, self.neck(clip_feats), self.fpn_features(clip_feats))

    def fpn_features(self, clip_feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """FPN levels in contiguous NCHW: convolutions may run channels-last
        (the fast CPU path), but mmcv's RoIAlign reads NCHW memory regardless of
        strides. The RoI callers guard for that themselves; converting here puts
        the one copy in the image-level stage, so their guard is a no-op."""
        return tuple(f.contiguous() for f in self.fpn_neck(clip_feats))

    # ---------------------------------------------------------------- class split
    def set_class_split(self, base_classes: Optional[Sequence[int]] = None,
                        novel_classes: Optional[Sequence[int]] = None) -> None:
        """Set the classes the head was trained on (``base_classes``: the
        ensemble leans on the head, ``alpha``) and, optionally, the novel ones.

        With ``novel_classes`` too, only base + novel classes can be predicted
        (the others get -1000 after the fusion, as in the released COCO-OV and
        LVIS evaluation). With neither, every class counts as unseen (``beta``),
        as the released code does without a split.
        """
        if base_classes is None and novel_classes is not None:
            raise ValueError('novel_classes without base_classes: give the base classes too')
        self.base_classes = None if base_classes is None else [int(i) for i in base_classes]
        self.novel_classes = None if novel_classes is None else [int(i) for i in novel_classes]

    def class_split(self, num_classes: int, device=None) -> Tuple[Tensor, Optional[Tensor]]:
        """The ensemble's split for a vocabulary of ``num_classes`` classes.

        Returns:
            ``seen`` (K + 1,) bool (True: base classes and background) and
            ``allowed`` (K,) bool or None (None: every class can be predicted).
        """
        seen = torch.zeros(num_classes + 1, dtype=torch.bool, device=device)
        seen[-1] = True
        allowed = None
        for name, ids in (('base', self.base_classes), ('novel', self.novel_classes)):
            if ids and max(ids) >= num_classes:
                raise ValueError(f'{name} class index {max(ids)} >= vocabulary size {num_classes}: '
                                 'the class split does not fit the vocabulary')
        if self.base_classes is not None:
            seen[self.base_classes] = True
        if self.novel_classes is not None:
            allowed = torch.zeros(num_classes, dtype=torch.bool, device=device)
            allowed[self.base_classes + self.novel_classes] = True
        return seen, allowed

    # ---------------------------------------------------------------- prompt side
    def decode(self, feats: ImageFeatures, sparse: Tensor, dense: Tensor,
               index: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
        """CLIP2SAM on N encoded prompts of image ``index``.

        Args:
            sparse: (N, T, 256) and dense: (N or 1, 256, E, E) prompt embeddings
                (``self.pe``; see :func:`~ovsam.models.prompts.embed_prompts`).
        Returns:
            mask logits (N, 1, 4E, 4E), head logits (N, K + 1) and the boxes of
            the masks (N, 4) in the input frame (``[0, 0, 0, 0]`` if empty).
        """
        batch_idx = torch.full((sparse.shape[0], ), index, dtype=torch.long, device=sparse.device)
        return self.mask_decoder(feats.image_embed, self.pe.get_dense_pe(), sparse, dense, feats.fpn_feats,
                                 batch_idx=batch_idx)

    @staticmethod
    def recognition_boxes(mask_boxes: Tensor, prompt_boxes: Optional[Tensor] = None,
                          has_box: Optional[Tensor] = None) -> Tensor:
        """Where frozen CLIP looks: the prompt box where the prompt has one,
        else the predicted mask's box (never a ground-truth box)."""
        if prompt_boxes is None:
            return mask_boxes
        if has_box is None:
            return prompt_boxes.float()
        return torch.where(has_box[:, None], prompt_boxes.float(), mask_boxes)

    def clip_logits(self, c5: Tensor, boxes: Tensor, mask_logits: Tensor) -> Tensor:
        """Frozen-CLIP class logits (N, K + 1) of one image's C5 (1, C5, h, w):
        boxes (N, 4) pooled by RoIAlign + the attention pool, or, for towers
        without one (ConvNeXt), the masks pooled on C5."""
        if self.backbone.roi_size > 0:
            rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
            embed = self.backbone.box_embed(c5, rois)
        else:
            low = F.interpolate(mask_logits, c5.shape[-2:], mode='bilinear', align_corners=False)
            embed = self.backbone.mask_embed(c5, (low[:, 0] > 0).float())
        return self.mask_decoder.classifier(embed)

    def fuse(self, head_logits: Tensor, clip_logits: Tensor, mask_logits: Tensor,
             clip_size: Tuple[int, int]) -> Tensor:
        """The open-vocabulary ensemble under :meth:`class_split`.

        Where a mask is empty at CLIP's C5 resolution ``clip_size`` the head
        alone decides. Returns (N, K + 1) scores (log of the fused probabilities;
        classes outside an ``allowed`` split get -1000).
        """
        low = F.interpolate(mask_logits, tuple(clip_size), mode='bilinear', align_corners=False)
        valid = (low[:, 0] > 0).flatten(1).to(low.dtype).amax(dim=1) > 0  # .any(), traceable
        seen, allowed = self.class_split(self.mask_decoder.num_classes, head_logits.device)
        return open_vocab_ensemble(head_logits, clip_logits, seen, self.alpha, self.beta, valid=valid,
                                   allowed=allowed)

    def recognise(self, feats: ImageFeatures, mask_logits: Tensor, head_logits: Tensor, boxes: Tensor,
                  index: int = 0) -> Tensor:
        """Class scores (N, K + 1) of N decoded prompts of image ``index``: the
        head's logits, fused with frozen CLIP's over ``boxes`` when
        ``use_clip_ensemble`` (test time)."""
        if not self.use_clip_ensemble:
            return head_logits
        c5 = feats.clip_feats[-1][index:index + 1]
        return self.fuse(head_logits, self.clip_logits(c5, boxes, mask_logits), mask_logits, c5.shape[-2:])

    def predict_prompts(self, feats: ImageFeatures, sparse: Tensor, dense: Tensor,
                        prompt_boxes: Optional[Tensor] = None, has_box: Optional[Tensor] = None,
                        index: int = 0) -> PromptOutputs:
        """Decode and recognise N encoded prompts of image ``index`` (input frame).

        ``prompt_boxes`` (N, 4): the prompts' boxes, if any; ``has_box`` (N,)
        marks which rows are real boxes (default: all of them).
        """
        mask_logits, head_logits, mask_boxes = self.decode(feats, sparse, dense, index)
        boxes = self.recognition_boxes(mask_boxes, prompt_boxes, has_box)
        scores = self.recognise(feats, mask_logits, head_logits, boxes, index)
        return PromptOutputs(mask_logits, scores, boxes, mask_boxes)

    @staticmethod
    def class_probs(scores: Tensor) -> Tensor:
        """(N, K + 1) scores -> (N, K) probabilities over the vocabulary
        (softmax with background, then background dropped)."""
        return scores.softmax(-1)[:, :-1]

    # ---------------------------------------------------------------- predict
    def predict_single(self, feats: ImageFeatures, prompts: InstanceData, meta: dict,
                       index: int = 0) -> InstanceData:
        """Masks and labels for the prompts (``InstanceData`` with ``bboxes`` (N, 4)
        and/or ``point_coords`` (N, P, 2) in the input frame) of image ``index``.
        Returns masks at the original image size."""
        check_prompts(prompts, meta['img_shape'])
        sparse, dense, is_point = embed_prompts(self.pe, prompts, self.prompt_mode)
        prompt_boxes = box_tensor(prompts) if 'bboxes' in prompts else None
        out = self.predict_prompts(feats, sparse, dense, prompt_boxes, ~is_point, index)
        probs = self.class_probs(out.scores)
        label_scores, labels = probs.max(dim=-1)

        results = InstanceData()
        results.masks = postprocess_masks(out.mask_logits, meta['batch_input_shape'], meta['img_shape'],
                                          meta['ori_shape'])[:, 0] > 0
        results.labels = labels
        results.scores = label_scores
        results.cls_scores = probs
        scale = out.boxes.new_tensor(meta.get('scale_factor', (1., 1.))).repeat(2)
        results.bboxes = (out.mask_boxes if prompt_boxes is None else prompt_boxes.float()) / scale
        if self.prompt_source == 'pred' and 'scores' in prompts:
            results.scores = prompts.scores
            if self.label_source == 'detector' and 'labels' in prompts:
                results.labels = prompts.labels
        return results

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        feats = self.extract_feat(batch_inputs)
        for i, sample in enumerate(batch_data_samples):
            prompts = sample.gt_instances if self.prompt_source == 'gt' else sample.pred_instances
            if len(prompts) == 0:
                sample.pred_instances = self._empty_result(sample.metainfo['ori_shape'], batch_inputs.device)
            else:
                sample.pred_instances = self.predict_single(feats, prompts, sample.metainfo, i)
        return batch_data_samples

    @staticmethod
    def _empty_result(ori_shape, device) -> InstanceData:
        empty = InstanceData()
        h, w = ori_shape
        empty.masks = torch.zeros(0, h, w, dtype=torch.bool, device=device)
        empty.labels = torch.zeros(0, dtype=torch.long, device=device)
        empty.scores = torch.zeros(0, device=device)
        empty.bboxes = torch.zeros(0, 4, device=device)
        return empty

    # ---------------------------------------------------------------- training
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """CLIP2SAM training: gt prompts (already sampled by the data
        preprocessor), recognition on ground-truth boxes.

        Supervision is per instance (co-training, ``docs/large_vocabulary.md``):
        the classification loss on every instance; mask BCE and Dice only on
        instances with a mask (:func:`~ovsam.models.prompts.instance_has_mask`),
        so a batch mixing segmentation, detection and image-level samples keeps
        the mask losses of those that have masks. Labels index the classifier's
        vocabulary; in co-training that is the joint vocabulary of all sources,
        and every instance is scored against all of it (as the released
        large-vocabulary recipe does): a box of one source is a negative for
        the other sources' classes too, which is what separates them at test
        time, when every class is a candidate.
        """
        feats = self.extract_feat(batch_inputs)
        sparse_all, dense_all, idx_all, boxes_all, labels_all, masks_all, has_all = [], [], [], [], [], [], []
        for i, sample in enumerate(batch_data_samples):
            gt = sample.gt_instances
            if len(gt) == 0:
                continue
            sparse, dense, _ = embed_prompts(self.pe, gt, self.prompt_mode)
            sparse_all.append(sparse)
            dense_all.append(dense)
            idx_all.append(torch.full((len(gt), ), i, dtype=torch.long, device=sparse.device))
            boxes_all.append(box_tensor(gt).float())
            labels_all.append(gt.labels)
            has = instance_has_mask(gt).to(sparse.device)
            has_all.append(has)
            if has.any():
                m = gt.masks
                m = m.to_tensor(torch.float32, sparse.device) if hasattr(m, 'to_tensor') else m.float()
                masks_all.append(m.to(sparse.device)[has])
        head = self.mask_decoder
        if not sparse_all:
            # No instance in the batch: a zero loss that still touches every
            # trainable parameter keeps DDP in step.
            zero = sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)
            from mmdet.utils import reduce_mean
            for used in (head.loss_cls_cfg, head.loss_mask):  # the other ranks' all-reduces
                if used is not None:
                    reduce_mean(batch_inputs.new_zeros(1))
            return dict(loss_cls=zero, loss_mask=zero, loss_dice=zero)
        batch_idx = torch.cat(idx_all)
        mask_logits, cls_logits, _ = head(feats.image_embed, self.pe.get_dense_pe(), torch.cat(sparse_all),
                                          torch.cat(dense_all), feats.fpn_feats, batch_idx=batch_idx,
                                          boxes=torch.cat(boxes_all))
        gt_masks = torch.cat(masks_all) if masks_all else None
        return head.loss(mask_logits, cls_logits, torch.cat(labels_all), gt_masks, has_mask=torch.cat(has_all))

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList = None):
        feats = self.extract_feat(batch_inputs)
        return feats.image_embed, feats.fpn_feats
