"""CLIP2SAM: SAM's mask decoder plus a recognition branch on CLIP features.

SAM's two-way transformer decoder (``segment_anything``) runs with one mask
token and, in front of it, a *label token*. Recognition pools the mmdet FPN built
on the CLIP levels inside each predicted mask's box (mmdet ``SingleRoIExtractor``),
projects it to CLIP's embedding width and matches it to the text embeddings of
the vocabulary (:class:`~ovsam.models.classifier.TextClassifier`).

The CPU fast variant (:class:`ovsam.models.fast_inference.FastCLIP2SAMHead`) is a
subclass swapped in by ``optimize_for_inference``.
"""
import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS
from .classifier import TextClassifier
from .common import FrozenMixin, masks_to_boxes, point_sampled_mask_losses
from .sam_parts import build_sam_mask_decoder


@MODELS.register_module()
class CLIP2SAMHead(FrozenMixin, BaseModule):
    """Prompted mask decoding and open-vocabulary recognition (official: OVSAMHead).

    Args:
        transformer_dim / depth / mlp_dim / num_heads: SAM decoder (ViT-H: 256/2/2048/8).
        embed_dim: CLIP embedding width (768 for RN50x16).
        roi_extractor: mmdet ``SingleRoIExtractor`` config over the FPN levels.
        classifier: :class:`TextClassifier` config (vocabulary file etc.).
        label_token_weight: weight of the label-token MLP output added to the
            region embedding. The released model multiplies it by 0; keep 0 to
            reproduce it.
        region_proj: add a linear layer after the pooled region features.
            Off in the released model (whose ReLU-then-mean embedding is
            non-negative); small models trained from scratch need it to point
            at arbitrary text embeddings.
        loss_cls / loss_mask / loss_dice: mmdet loss configs.
        num_points / oversample_ratio / importance_sample_ratio: point-sampled
            mask losses (PointRend-style uncertainty sampling).
        frozen: freeze all parameters.
        sam_checkpoint: SAM ``.pth``; its ``mask_decoder.*`` initialises the
            decoder (mask token 0 and its hypernetwork MLP; IoU parts dropped).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='mask_decoder')``.

    Shapes: image embedding (B, 256, E, E), prompts (N, T, 256) ->
    mask logits (N, 1, 4E, 4E) and class logits (N, K + 1) (last = background).
    """

    def __init__(self,
                 transformer_dim: int = 256,
                 depth: int = 2,
                 mlp_dim: int = 2048,
                 num_heads: int = 8,
                 embed_dim: int = 768,
                 roi_extractor: Optional[Dict] = None,
                 classifier: Optional[Dict] = None,
                 label_token_weight: float = 0.,
                 region_proj: bool = False,
                 loss_cls: Optional[Dict] = None,
                 loss_mask: Optional[Dict] = None,
                 loss_dice: Optional[Dict] = None,
                 num_points: int = 12544,
                 oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75,
                 frozen: bool = False,
                 sam_checkpoint: Optional[str] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=None)
        self.mask_decoder = build_sam_mask_decoder(transformer_dim, depth, mlp_dim, num_heads, single_mask=True)
        self.label_token = nn.Embedding(1, transformer_dim)
        from segment_anything.modeling.mask_decoder import MLP
        self.label_mlp = MLP(transformer_dim, transformer_dim, embed_dim, 3)
        if roi_extractor is None:
            roi_extractor = dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=12, sampling_ratio=0),
                out_channels=256,
                featmap_strides=[4, 8, 16, 32])
        self.roi = MODELS.build(roi_extractor)
        self.roi_conv = nn.Sequential(
            ConvModule(self.roi.out_channels, embed_dim, kernel_size=1, bias=False))
        self.classifier = TextClassifier(**(classifier or {}))
        self.label_token_weight = label_token_weight
        self.region_proj = nn.Linear(embed_dim, embed_dim) if region_proj else None
        self.embed_dim = embed_dim

        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.loss_cls_cfg = loss_cls
        self.loss_mask = MODELS.build(loss_mask) if loss_mask else None
        self.loss_dice = MODELS.build(loss_dice) if loss_dice else None
        self._loss_cls = None

        self._pretrained = init_cfg
        self.sam_checkpoint = sam_checkpoint
        self._freeze(frozen)

    def init_weights(self) -> None:
        """SAM's and ConvModule's own initialisation; then SAM's decoder and/or
        a trained head, loaded strictly."""
        if self.sam_checkpoint is not None:
            from ..checkpoint import load_sam_mask_decoder
            load_sam_mask_decoder(self.mask_decoder, self.sam_checkpoint)
        if self._pretrained is not None:
            from ..checkpoint import load_module_from_checkpoint
            load_module_from_checkpoint(self, self._pretrained['checkpoint'],
                                        self._pretrained.get('prefix', 'mask_decoder'))
        self._is_init = True

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def decode_prompts(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                       batch_idx: Tensor) -> Tuple[Tensor, Tensor]:
        """Masks and label-token outputs of N prompts on the images ``batch_idx``
        (N,) of ``image_embed`` (B, C, E, E); see :meth:`decode_masks`."""
        return self.decode_masks(image_embed[batch_idx], image_pe, sparse, dense)

    def decode_masks(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor,
                     dense: Tensor) -> Tuple[Tensor, Tensor]:
        """Run SAM's decoder with ``[label, mask]`` output tokens.

        Args:
            image_embed: (N, C, E, E) image embedding of each prompt's image.
            image_pe: (1, C, E, E) dense positional encoding.
            sparse: (N, T, C) prompt tokens; dense: (N, C, E, E).
        Returns:
            mask logits (N, 1, 4E, 4E) and label-token output (N, C).
        """
        dec = self.mask_decoder
        n = sparse.shape[0]
        tokens = torch.cat([self.label_token.weight, dec.mask_tokens.weight], dim=0)
        queries = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embed + dense
        _, c, h, w = src.shape
        hs, src = dec.transformer(src, image_pe.expand(n, -1, -1, -1), queries)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))
        b, c, h, w = upscaled.shape
        masks = (hyper.unsqueeze(1) @ upscaled.view(b, c, h * w)).view(b, 1, h, w)
        return masks, hs[:, 0]

    def region_embed(self, fpn_feats: Sequence[Tensor], rois: Tensor, label_out: Tensor) -> Tensor:
        """CLIP2SAM's region embeddings (N, embed_dim), in CLIP's joint space: the
        FPN features inside ``rois`` (N, 5) pooled by the RoI extractor, then
        :meth:`embed_roi_feats`."""
        # mmcv's RoIAlign is fp32-only (a no-op cast in fp32; needed under bf16 autocast)
        # and reads its input as contiguous NCHW whatever its strides: channels-last
        # features (the fast CPU path) must be made contiguous first.
        roi_feats = self.roi(tuple(f.float().contiguous() for f in fpn_feats), rois.float())
        return self.embed_roi_feats(roi_feats, label_out)

    def embed_roi_feats(self, roi_feats: Tensor, label_out: Tensor) -> Tensor:
        """Pooled RoI features (N, 256, r, r) and label-token outputs (N, 256) ->
        region embeddings (N, embed_dim): 1x1 conv + ReLU, spatial mean, the
        optional projection, plus ``label_token_weight`` x the label MLP."""
        embed = self.roi_conv(roi_feats).mean(dim=(2, 3))
        if self.region_proj is not None:
            embed = self.region_proj(embed)
        # Added even at weight 0 (the released setting): the label MLP then
        # takes part in every step, which DDP requires of trained parameters.
        return embed + self.label_token_weight * self.label_mlp(label_out)

    def forward(self,
                image_embed: Tensor,
                image_pe: Tensor,
                sparse: Tensor,
                dense: Tensor,
                fpn_feats: Sequence[Tensor],
                batch_idx: Optional[Tensor] = None,
                boxes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Decode masks and classify them.

        Args:
            image_embed: (B, C, E, E) one embedding per image.
            image_pe: (1, C, E, E).
            sparse / dense: prompt embeddings of N prompts.
            fpn_feats: FPN levels of the B images.
            batch_idx: (N,) image index of each prompt (default: all 0).
            boxes: (N, 4) boxes in the input frame for recognition (training
                uses ground truth); default: each predicted mask's box.
        Returns:
            mask logits (N, 1, 4E, 4E), class logits (N, K + 1) and the boxes
            (N, 4) used for recognition.
        """
        if batch_idx is None:
            batch_idx = sparse.new_zeros(sparse.shape[0], dtype=torch.long)
        masks, label_out = self.decode_prompts(image_embed, image_pe, sparse, dense, batch_idx)
        if boxes is None:
            scale = image_pe.shape[-1] * 16 / masks.shape[-1]
            boxes = masks_to_boxes(masks[:, 0], scale)  # in the input frame
        rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)
        embed = self.region_embed(fpn_feats, rois, label_out)
        return masks, self.classifier(embed), boxes

    # ------------------------------------------------------------------ losses
    def _build_loss_cls(self):
        if self._loss_cls is None and self.loss_cls_cfg is not None:
            cfg = copy.deepcopy(self.loss_cls_cfg)
            bg_weight = cfg.pop('background_weight', 0.1)
            cfg['class_weight'] = [1.0] * self.num_classes + [bg_weight]
            self._loss_cls = MODELS.build(cfg)
            self._loss_cls.to(self.label_token.weight.device)
        return self._loss_cls

    def loss(self, mask_logits: Tensor, cls_logits: Tensor, gt_labels: Tensor,
             gt_masks: Optional[Tensor], has_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Classification and point-sampled mask losses, supervised per instance.

        Args:
            mask_logits: (N, 1, h, w); cls_logits: (N, K + 1).
            gt_labels: (N,) class index, ``K`` for background, ``-1`` when the
                class is unknown (no classification loss for that prompt).
            gt_masks: binary masks in the padded input frame: (M, H, W) for
                the M instances marked in ``has_mask``, or (N, H, W) for all
                when ``has_mask`` is None; None when no instance has one.
            has_mask: (N,) bool, the instances with a mask (co-training:
                detection and image-level instances have none). The mask
                losses are averaged over these instances only (across ranks);
                the classification loss covers all N.
        """
        losses = {}
        loss_cls = self._build_loss_cls()
        if loss_cls is not None:
            known = gt_labels >= 0
            labels = gt_labels.clamp(min=0)
            weight = loss_cls.class_weight
            weight = cls_logits.new_tensor(weight) if not torch.is_tensor(weight) else weight
            from mmdet.utils import reduce_mean
            # averaged over all ranks' prompts, like the mask losses, so N
            # processes train exactly like one with the same total batch
            avg = reduce_mean((weight[labels] * known).sum()).clamp(min=1e-6)
            losses['loss_cls'] = loss_cls(cls_logits, labels, known.float(), avg_factor=avg)
        n = mask_logits.shape[0]
        if has_mask is None:
            has_mask = torch.full((n, ), gt_masks is not None, dtype=torch.bool, device=mask_logits.device)
        has_mask = has_mask.to(device=mask_logits.device, dtype=torch.bool)
        num_masks = int(has_mask.sum())
        if num_masks and (gt_masks is None or gt_masks.shape[0] != num_masks):
            raise ValueError(f'{num_masks} instances are marked as having a mask but gt_masks holds '
                             f'{None if gt_masks is None else gt_masks.shape[0]}; give one mask per marked instance')
        if self.loss_mask is None or num_masks == 0:
            if self.loss_mask is not None:
                # the ranks that do have masks average over all ranks' masks
                # (one all-reduce in point_sampled_mask_losses): take part in it
                from mmdet.utils import reduce_mean
                reduce_mean(mask_logits.new_tensor([0.]))
            zero = mask_logits.sum() * 0
            losses.update(loss_mask=zero, loss_dice=zero)
            return losses
        masked = mask_logits if num_masks == n else mask_logits[has_mask]
        losses.update(point_sampled_mask_losses(masked, gt_masks, self.loss_mask, self.loss_dice,
                                                self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio))
        return losses
