"""CLIP2SAM: SAM's mask decoder plus a recognition branch on CLIP features.

SAM's two-way transformer decoder (``segment_anything``) runs with one mask
token and, in front of it, a *label token*. Recognition pools the mmdet FPN built
on the CLIP levels inside each predicted mask's box (mmdet ``SingleRoIExtractor``),
projects it to CLIP's embedding width and matches it to the text embeddings of
the vocabulary (:class:`~ovsam.models.classifier.TextClassifier`).
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


def build_sam_mask_decoder(transformer_dim: int = 256,
                           depth: int = 2,
                           mlp_dim: int = 2048,
                           num_heads: int = 8) -> nn.Module:
    """segment_anything's MaskDecoder with a single mask token and no IoU head.

    OV-SAM predicts one mask per prompt and never scores it, so the IoU token
    and head are dropped (they are absent from the released checkpoints).
    """
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer
    decoder = MaskDecoder(
        transformer_dim=transformer_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim,
                                      mlp_dim=mlp_dim, num_heads=num_heads),
        num_multimask_outputs=0)
    del decoder.iou_token
    del decoder.iou_prediction_head
    return decoder


def masks_to_boxes(mask_logits: Tensor, scale: float) -> Tensor:
    """Boxes (N, 4) xyxy of ``sigmoid > 0.5`` masks, scaled to the input frame.

    An empty mask gives ``[0, 0, 0, 0]``.
    """
    from mmdet.structures.mask import mask2bbox
    return mask2bbox(mask_logits.sigmoid() > 0.5) * scale


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


@MODELS.register_module()
class CLIP2SAMHead(BaseModule):
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

    ``shared_image_embed`` (attribute, default False; set by
    :func:`ovsam.models.fast_inference.enable_fast_decoder`): when all prompts
    belong to one image and share the dense embedding, decode against one copy
    of the image embedding instead of one per prompt (equivalent output).
    ``fast_upscaling`` (attribute, default False, same setter): the mask
    upscaling head in token layout (equivalent output).
    ``prompt_chunk`` (attribute, default 0 = all at once, same setter): with a
    shared image embedding, decode the prompts in tiles of this many
    (equivalent output, less memory traffic).
    ``fast_transformer`` (attribute, default False, same setter): the two-way
    transformer without projecting the image tokens when there are few prompt
    tokens (:func:`ovsam.models.fast_inference.folded_two_way_transformer`).
    """

    shared_image_embed = False
    fast_upscaling = False
    prompt_chunk = 0
    fast_transformer = False

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
        self.mask_decoder = build_sam_mask_decoder(transformer_dim, depth, mlp_dim, num_heads)
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

        self.frozen = frozen
        self._pretrained = init_cfg
        self.sam_checkpoint = sam_checkpoint
        if frozen:
            self.requires_grad_(False)
            self.eval()

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

    def train(self, mode: bool = True):
        return super().train(False if self.frozen else mode)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def decode_masks(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor,
                     dense: Tensor) -> Tuple[Tensor, Tensor]:
        """Run SAM's decoder with ``[label, mask]`` output tokens.

        Args:
            image_embed: (N, C, E, E) image embedding of each prompt's image.
            image_pe: (1, C, E, E) dense positional encoding.
            sparse: (N, T, C) prompt tokens; dense: (N, C, E, E).
        ``image_embed`` and ``dense`` may also have batch 1 (one image, the same
        dense prompt for all N): the first decoder layer then works on one copy of
        the image tokens instead of N (same result, see ``shared_image_embed``).

        Returns:
            mask logits (N, 1, 4E, 4E) and label-token output (N, C).
        """
        n = sparse.shape[0]
        chunk = self.prompt_chunk
        if chunk > 0 and n > chunk and image_embed.shape[0] == 1 and dense.shape[0] == 1:
            # Tile the prompts so each tile's per-prompt token maps (chunk x 4096
            # x 256 floats) stay in cache: the decoder's layer norms, adds and
            # layout copies are memory-bound, the GEMMs barely change.
            outs = [self._decode(image_embed, image_pe, sparse[s:s + chunk], dense)
                    for s in range(0, n, chunk)]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return self._decode(image_embed, image_pe, sparse, dense)

    def _decode(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor,
                dense: Tensor) -> Tuple[Tensor, Tensor]:
        dec = self.mask_decoder
        n = sparse.shape[0]
        tokens = torch.cat([self.label_token.weight, dec.mask_tokens.weight], dim=0)
        queries = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embed + dense
        if src.shape[0] == 1 and n > 1:
            # Shared image embedding (see ``shared_image_embed``): SAM's
            # two-way transformer broadcasts batch-1 keys against N queries.
            pos = image_pe
        else:
            pos = image_pe.expand(n, -1, -1, -1)
        _, c, h, w = src.shape
        inner = dec.transformer.final_attn_token_to_image.internal_dim
        if self.fast_transformer and queries.shape[1] * dec.transformer.num_heads <= inner:
            # few prompt tokens: fold the image-side projections (see fast_inference)
            from .fast_inference import folded_two_way_transformer
            hs, src = folded_two_way_transformer(dec.transformer, src, pos, queries)
        else:
            hs, src = dec.transformer(src, pos, queries)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])
        if self.fast_upscaling:
            from .fast_inference import upscale_and_predict_masks
            return upscale_and_predict_masks(dec.output_upscaling, src, hyper, h, w), hs[:, 0]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))
        b, c, h, w = upscaled.shape
        masks = (hyper.unsqueeze(1) @ upscaled.view(b, c, h * w)).view(b, 1, h, w)
        return masks, hs[:, 0]

    def region_embed(self, fpn_feats: Sequence[Tensor], rois: Tensor, label_out: Tensor) -> Tensor:
        """Region embeddings (N, embed_dim) from FPN features inside ``rois`` (N, 5)."""
        # mmcv's RoIAlign is fp32-only (a no-op cast in fp32; needed under bf16 autocast)
        # and reads its input as contiguous NCHW whatever its strides: channels-last
        # features (the fast CPU path) must be made contiguous first.
        feats = self.roi_conv(self.roi(tuple(f.float().contiguous() for f in fpn_feats), rois.float()))
        embed = feats.mean(dim=(2, 3))
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
        n = sparse.shape[0]
        if batch_idx is None:
            batch_idx = sparse.new_zeros(n, dtype=torch.long)
        if self.shared_image_embed and n > 1 and bool((batch_idx == batch_idx[0]).all()) \
                and (dense.shape[0] == 1 or dense.stride(0) == 0):
            # Opt-in fast path: no per-prompt copy of the image embedding.
            masks, label_out = self.decode_masks(image_embed[batch_idx[:1]], image_pe, sparse, dense[:1])
        else:
            masks, label_out = self.decode_masks(image_embed[batch_idx], image_pe, sparse, dense)
        if boxes is None:
            scale = image_pe.shape[-1] * 16 / masks.shape[-1]
            boxes = masks_to_boxes(masks[:, 0], scale)
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
             gt_masks: Optional[Tensor]) -> Dict[str, Tensor]:
        """Classification and point-sampled mask losses.

        Args:
            mask_logits: (N, 1, h, w); cls_logits: (N, K + 1).
            gt_labels: (N,) class index, ``K`` for background, ``-1`` when the
                class is unknown (no classification loss for that prompt).
            gt_masks: (N, H, W) binary masks, or None for box-only data.
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
        if gt_masks is None or self.loss_mask is None:
            zero = mask_logits.sum() * 0
            losses.update(loss_mask=zero, loss_dice=zero)
            return losses
        losses.update(point_sampled_mask_losses(mask_logits, gt_masks, self.loss_mask, self.loss_dice,
                                                self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio))
        return losses
