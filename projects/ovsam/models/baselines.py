"""The paper's combined baselines: SAM for masks, CLIP for labels.

* :class:`SAMCropCLIP`: SAM segments each prompt; the image crop of the
  mask's box, resized to CLIP's input size, is classified by the whole CLIP
  image tower (trunk + attention-pool / ConvNeXt head).
* :class:`SAMMaskPoolCLIP`: SAM segments each prompt; CLIP's dense C5
  features of the whole image are averaged inside the mask and passed through
  CLIP's head.

Both classify with the same text-embedding files as OV-SAM
(:class:`~ovsam.models.classifier.TextClassifier`), take prompts from
``gt_instances`` (interactive protocol) or ``pred_instances`` (detector
proposals) and return ``pred_instances`` like :class:`~ovsam.models.OVSAM`
(``masks`` at ``ori_shape``, ``labels``, ``scores``, ``bboxes`` in original
pixels, plus ``cls_scores`` and SAM's ``mask_ious``), so the same data
pipelines and evaluators apply. Inference only.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ..registry import MODELS, build_data_preprocessor
from .classifier import TextClassifier
from .common import FrozenMixin, masks_to_boxes, postprocess_masks
from .prompts import check_prompts, embed_prompts
from .sam_parts import SAMParts, load_sam_parts

# OpenAI CLIP's input normalisation (0-255 RGB).
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


class _SAMCLIPBaseline(FrozenMixin, BaseDetector):
    """Shared prompting, SAM decoding and output of the two baselines.

    Args:
        sam: :class:`SAMParts` kwargs plus ``checkpoint`` (SAM ``.pth``).
        clip: :class:`OpenCLIPBackbone` config; load weights with
            ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``.
        Both files are read when the model is built.
        classifier: :class:`TextClassifier` kwargs (``vocabulary`` file).
        prompt_source: ``'gt'`` (``gt_instances``) or ``'pred'``
            (``pred_instances``, e.g. detector proposals).
        prompt_mode: see :func:`ovsam.models.prompts.embed_prompts`.
        multimask_output: SAM's three-mask output, best by predicted IoU.
            None: only for prompts without a box (SAM's advice for single
            points); False: always the single-mask token.
        clip_normalization: ``'clip'`` re-normalises the images with CLIP's
            statistics (the tower was trained with them); ``'input'`` feeds
            CLIP the data preprocessor's normalisation (OV-SAM's choice).
        label_source: ``'clip'`` or ``'detector'`` (keep proposal labels).
        base_classes / novel_classes: optional split; only restricts the
            labels to their union (CLIP itself is zero-shot).
        data_preprocessor: :class:`OVSAMDataPreprocessor` config.
    """

    def __init__(self,
                 sam: Dict,
                 clip: Dict,
                 classifier: Optional[Dict] = None,
                 prompt_source: str = 'gt',
                 prompt_mode: str = 'auto',
                 multimask_output: Optional[bool] = None,
                 clip_normalization: str = 'clip',
                 label_source: str = 'clip',
                 base_classes: Optional[Sequence[int]] = None,
                 novel_classes: Optional[Sequence[int]] = None,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(data_preprocessor=build_data_preprocessor(data_preprocessor), init_cfg=init_cfg)
        if prompt_source not in ('gt', 'pred'):
            raise ValueError(f"prompt_source must be 'gt' or 'pred', got {prompt_source!r}")
        if label_source not in ('clip', 'detector'):
            raise ValueError(f"label_source must be 'clip' or 'detector', got {label_source!r}")
        if clip_normalization not in ('clip', 'input'):
            raise ValueError(f"clip_normalization must be 'clip' or 'input', got {clip_normalization!r}")
        sam = dict(sam)
        sam_checkpoint = sam.pop('checkpoint', None)
        self.sam = SAMParts(**sam)
        self.clip = MODELS.build(clip)
        # Weights are loaded here, not in init_weights(): mmengine's Runner
        # never calls init_weights() in test mode, and these models only test.
        if sam_checkpoint:
            load_sam_parts(self.sam, sam_checkpoint)
        if clip.get('init_cfg'):
            self.clip.init_weights()
        self.classifier = TextClassifier(**(classifier or {}))
        self.prompt_source = prompt_source
        self.prompt_mode = prompt_mode
        self.multimask_output = multimask_output
        self.clip_normalization = clip_normalization
        self.label_source = label_source
        allowed = None
        if base_classes is not None or novel_classes is not None:
            allowed = sorted(set(base_classes or ()) | set(novel_classes or ()))
        self.allowed_classes = allowed
        self.register_buffer('clip_mean', torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer('clip_std', torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)
        self._freeze(True)  # inference-only

    def init_weights(self) -> None:
        # SAM / CLIP weights come from their files (loaded in __init__) or
        # their own initialisation; nothing to redo here.
        self._is_init = True

    # ------------------------------------------------------------ helpers
    def clip_inputs(self, batch_inputs: Tensor) -> Tensor:
        """The preprocessed batch in the normalisation CLIP is fed with."""
        if self.clip_normalization == 'input':
            return batch_inputs
        pre = self.data_preprocessor
        if not getattr(pre, '_enable_normalize', False):
            raise ValueError("clip_normalization='clip' needs a data preprocessor with mean and std")
        raw = batch_inputs * pre.std + pre.mean  # RGB (or BGR) 0-255 as after bgr_to_rgb
        return (raw - self.clip_mean) / self.clip_std

    def clip_image_embed(self, images: Tensor) -> Tensor:
        """CLIP image embeddings (N, D) of CLIP-sized images (N, 3, S, S)."""
        c5 = self.clip(images)[-1]
        return self.clip.pool(self.clip.clip_feature(c5)).flatten(1)

    def decode(self, image_embed: Tensor, prompts: InstanceData) -> Tuple[Tensor, Tensor, Tensor]:
        """SAM masks for one image: low-res logits (N, 1, 4E, 4E), predicted
        IoU (N,) and ``is_point`` (N,)."""
        pe = self.sam.prompt_encoder
        sparse, dense, is_point = embed_prompts(pe, prompts, self.prompt_mode)
        logits, iou = self.sam.mask_decoder.predict_masks(
            image_embeddings=image_embed[None], image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        n = logits.shape[0]
        pick = torch.zeros(n, dtype=torch.long, device=logits.device)
        multi = is_point if self.multimask_output is None else torch.full_like(is_point, self.multimask_output)
        if multi.any():
            pick = torch.where(multi, iou[:, 1:].argmax(dim=1) + 1, pick)
        idx = torch.arange(n, device=logits.device)
        return logits[idx, pick][:, None], iou[idx, pick], is_point

    @staticmethod
    def prompt_boxes(prompts: InstanceData) -> Optional[Tensor]:
        if 'bboxes' not in prompts:
            return None
        b = prompts.bboxes
        return (b.tensor if hasattr(b, 'tensor') else b).float()

    def clip_embed(self, clip_inputs: Tensor, clip_context, index: int, masks: Tensor,
                     boxes: Tensor) -> Tensor:
        """CLIP embeddings (N, D) of the regions; ``masks`` (N, H, W) bool and
        ``boxes`` (N, 4) are in the padded input frame."""
        raise NotImplementedError

    def clip_context(self, clip_inputs: Tensor):
        """Per-batch CLIP computation shared by all prompts (None by default)."""
        return None

    # ------------------------------------------------------------ predict
    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        with torch.no_grad():
            embeds = self.sam.image_encoder(batch_inputs)
            clip_inputs = self.clip_inputs(batch_inputs)
            context = self.clip_context(clip_inputs)
            for i, sample in enumerate(batch_data_samples):
                prompts = sample.gt_instances if self.prompt_source == 'gt' else sample.pred_instances
                sample.pred_instances = self.predict_single(embeds[i], clip_inputs, context, prompts,
                                                            sample.metainfo, i)
        return batch_data_samples

    def predict_single(self, image_embed: Tensor, clip_inputs: Tensor, context, prompts: InstanceData,
                       meta: dict, index: int) -> InstanceData:
        device = image_embed.device
        h, w = meta['ori_shape']
        res = InstanceData()
        if len(prompts) == 0:
            res.masks = torch.zeros(0, h, w, dtype=torch.bool, device=device)
            res.labels = torch.zeros(0, dtype=torch.long, device=device)
            res.scores = torch.zeros(0, device=device)
            res.bboxes = torch.zeros(0, 4, device=device)
            return res
        check_prompts(prompts, meta['img_shape'])
        logits, iou, is_point = self.decode(image_embed, prompts)
        pad_shape = meta['batch_input_shape']
        ih, iw = meta['img_shape']
        # masks in the padded input frame (what CLIP looks at)
        masks_in = F.interpolate(logits, pad_shape, mode='bilinear', align_corners=False)[:, 0] > 0
        masks_in[:, ih:] = False
        masks_in[:, :, iw:] = False
        mask_boxes = masks_to_boxes(masks_in.float())
        prompt_boxes = self.prompt_boxes(prompts)
        empty = ~masks_in.flatten(1).any(dim=1)
        # an empty SAM mask has no box: look at the prompt box, or the whole image
        fallback = prompt_boxes if prompt_boxes is not None else \
            mask_boxes.new_tensor([0., 0., float(iw), float(ih)]).expand_as(mask_boxes)
        crop_boxes = torch.where(empty[:, None], fallback, mask_boxes)

        embed = self.clip_embed(clip_inputs, context, index, masks_in, crop_boxes)
        logits_cls = self.classifier(embed)[:, :-1]  # CLIP has no background: drop the zero row
        if self.allowed_classes is not None:
            keep = torch.zeros(logits_cls.shape[1], dtype=torch.bool, device=device)
            keep[self.allowed_classes] = True
            logits_cls = logits_cls.masked_fill(~keep, float('-inf'))
        probs = logits_cls.softmax(-1)
        scores, labels = probs.max(dim=-1)

        res.masks = postprocess_masks(logits, pad_shape, meta['img_shape'], meta['ori_shape'])[:, 0] > 0
        res.labels = labels
        res.scores = scores
        res.cls_scores = probs
        res.mask_ious = iou
        scale = mask_boxes.new_tensor(meta.get('scale_factor', (1., 1.))).repeat(2)
        boxes = mask_boxes if prompt_boxes is None else torch.where(is_point[:, None], mask_boxes, prompt_boxes)
        res.bboxes = boxes / scale
        if self.prompt_source == 'pred' and 'scores' in prompts:
            res.scores = prompts.scores
            if self.label_source == 'detector' and 'labels' in prompts:
                res.labels = prompts.labels
        return res

    # ------------------------------------------------------------ unused API
    def extract_feat(self, batch_inputs: Tensor) -> Tensor:
        return self.sam.image_encoder(batch_inputs)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList):
        raise NotImplementedError(f'{type(self).__name__} is an evaluation baseline; it has no training loss')

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList = None):
        return self.extract_feat(batch_inputs)


@MODELS.register_module()
class SAMCropCLIP(_SAMCLIPBaseline):
    """Baseline (a): classify the crop of each SAM mask's box with CLIP.

    Args:
        crop_expand: enlarge each box by this factor around its centre
            before cropping (1.0: the mask's box).
        crop_batch_size: crops per CLIP forward (memory).
        Other arguments: see :class:`_SAMCLIPBaseline`.

    Crops are taken from the resized input image with RoIAlign (bilinear,
    averaging over each output cell, so shrinking is anti-aliased) straight to
    CLIP's input size (``clip.image_size``, 384 for RN50x16).
    """

    def __init__(self, *args, crop_expand: float = 1.0, crop_batch_size: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if crop_expand <= 0:
            raise ValueError(f'crop_expand must be positive, got {crop_expand}')
        self.crop_expand = crop_expand
        self.crop_batch_size = crop_batch_size

    def crops(self, image: Tensor, boxes: Tensor) -> Tensor:
        """(N, 3, S, S) crops of ``image`` (1, 3, H, W) at ``boxes`` (N, 4)."""
        from mmcv.ops import roi_align
        if self.crop_expand != 1.0:
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            half = (boxes[:, 2:] - boxes[:, :2]) / 2 * self.crop_expand
            boxes = torch.cat([centre - half, centre + half], dim=1)
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        size = self.clip.image_size
        return roi_align(image.contiguous(), rois, (size, size), 1.0, 0, 'avg', True)  # mmcv ignores strides

    def clip_embed(self, clip_inputs, context, index, masks, boxes):
        image = clip_inputs[index:index + 1]
        out = []
        for start in range(0, len(boxes), self.crop_batch_size):
            out.append(self.clip_image_embed(self.crops(image, boxes[start:start + self.crop_batch_size])))
        return torch.cat(out)


@MODELS.register_module()
class SAMMaskPoolCLIP(_SAMCLIPBaseline):
    """Baseline (b): average CLIP's dense C5 features inside each SAM mask.

    Args:
        pooling: ``'attnpool'``: :meth:`OpenCLIPBackbone.mask_embed` (the
            pooled vector through CLIP's head); ``'value'``: for attention-pool
            towers, the pooled vector through the pool's value and output
            projections only (MaskCLIP's dense embedding, averaged).
        Other arguments: see :class:`_SAMCLIPBaseline`.

    The mask weights at C5 resolution are the fraction of each C5 cell the
    mask covers (area resampling), so masks smaller than a cell still count.
    """

    def __init__(self, *args, pooling: str = 'attnpool', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if pooling not in ('attnpool', 'value'):
            raise ValueError(f"pooling must be 'attnpool' or 'value', got {pooling!r}")
        if pooling == 'value' and self.clip.tower_type != 'resnet':
            raise ValueError("pooling='value' needs an attention-pool (ResNet) CLIP tower")
        self.pooling = pooling

    def clip_context(self, clip_inputs: Tensor) -> Tensor:
        return self.clip(clip_inputs)[-1]

    def clip_embed(self, clip_inputs, context, index, masks, boxes):
        c5 = context[index:index + 1]
        weights = F.interpolate(masks[:, None].float(), c5.shape[-2:], mode='area')[:, 0]
        empty = weights.flatten(1).sum(1) == 0
        if empty.any():
            # no mask: pool inside the (prompt) box instead of returning a zero vector
            box_masks = torch.zeros_like(masks)
            for j in torch.nonzero(empty)[:, 0].tolist():
                x1, y1, x2, y2 = boxes[j].floor().long().tolist()
                box_masks[j, max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)] = True
            box_w = F.interpolate(box_masks[:, None].float(), c5.shape[-2:], mode='area')[:, 0]
            weights = torch.where(empty[:, None, None], box_w, weights)
        if self.pooling == 'attnpool':
            return self.clip.mask_embed(c5, weights)
        feat = self.clip.clip_feature(c5)[0]
        flat = weights.flatten(1)
        pooled = flat @ feat.flatten(1).t() / flat.sum(-1, keepdim=True).clamp(min=1e-6)
        head = self.clip.head
        return head.c_proj(head.v_proj(pooled))
