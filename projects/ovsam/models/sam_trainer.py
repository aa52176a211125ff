"""Class-agnostic training of a (small) SAM from segment_anything's modules.

Used by the toy reproduction, where no pretrained SAM exists: the trained
model's state dict has SAM's own key layout (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``), so it feeds SAM2CLIP distillation
and CLIP2SAM initialisation through the same loaders as ``sam_vit_h_4b8939.pth``.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor

from ..registry import MODELS, build_data_preprocessor
from .common import point_sampled_mask_losses, postprocess_masks
from .prompt_encoder import SAMPromptEncoder
from .prompts import check_prompts, embed_prompts
from .sam_parts import build_sam_image_encoder, build_sam_mask_decoder


@MODELS.register_module()
class PromptableSAM(BaseModel):
    """SAM (image encoder, prompt encoder, 4-token mask decoder) trained on prompted masks.

    Only the first mask token (single-mask output) is trained, which is the
    one CLIP2SAM inherits; the IoU head learns the IoU of that mask.
    """

    def __init__(self,
                 image_encoder: Dict,
                 prompt_encoder: Dict,
                 decoder: Dict,
                 loss_mask: Dict,
                 loss_dice: Dict,
                 num_points: int = 1024,
                 iou_loss_weight: float = 1.0,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(data_preprocessor=build_data_preprocessor(data_preprocessor), init_cfg=init_cfg)
        # SAM's own attribute names, so the state dict has SAM's key layout
        self.image_encoder = build_sam_image_encoder(**image_encoder)
        pe_cfg = dict(prompt_encoder)
        pe_cfg.pop('type', None)
        pe_cfg['frozen'] = False
        self.prompt_encoder = SAMPromptEncoder(**pe_cfg)
        self.mask_decoder = build_sam_mask_decoder(decoder['transformer_dim'], decoder.get('depth', 2),
                                                   decoder.get('mlp_dim', 2048), decoder.get('num_heads', 8))
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_dice = MODELS.build(loss_dice)
        self.num_points = num_points
        self.iou_loss_weight = iou_loss_weight

    def _decode(self, embed: Tensor, instances: InstanceData):
        sparse, dense, _ = embed_prompts(self.prompt_encoder, instances, 'auto')
        masks, iou = self.mask_decoder(image_embeddings=embed[None], image_pe=self.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        return masks, iou

    def forward(self, inputs: Tensor, data_samples=None, mode: str = 'tensor'):
        embeds = self.image_encoder(inputs)
        if mode == 'tensor':
            return embeds
        if mode == 'loss':
            logits, ious, gts = [], [], []
            for embed, sample in zip(embeds, data_samples):
                gt = sample.gt_instances
                if len(gt) == 0:
                    continue
                masks, iou = self._decode(embed, gt)
                logits.append(masks)
                ious.append(iou)
                m = gt.masks
                gts.append(m.to_tensor(torch.float32, inputs.device) if hasattr(m, 'to_tensor') else m.float())
            if not logits:
                zero = sum(p.sum() * 0 for p in self.parameters())
                return dict(loss_mask=zero, loss_dice=zero, loss_iou=zero)
            logits, ious, gts = torch.cat(logits), torch.cat(ious), torch.cat(gts)
            losses = point_sampled_mask_losses(logits, gts, self.loss_mask, self.loss_dice, self.num_points)
            with torch.no_grad():
                pred = F.interpolate(logits, gts.shape[-2:], mode='bilinear', align_corners=False)[:, 0] > 0
                inter = (pred & (gts > 0)).flatten(1).sum(1).float()
                union = (pred | (gts > 0)).flatten(1).sum(1).float().clamp(min=1)
            losses['loss_iou'] = self.iou_loss_weight * F.mse_loss(ious[:, 0], inter / union)
            return losses
        if mode == 'predict':
            for embed, sample in zip(embeds, data_samples):
                gt = sample.gt_instances
                meta = sample.metainfo
                res = InstanceData()
                if len(gt):
                    check_prompts(gt, meta['img_shape'])
                    masks, iou = self._decode(embed, gt)
                    res.masks = postprocess_masks(masks, meta['batch_input_shape'], meta['img_shape'],
                                                  meta['ori_shape'])[:, 0] > 0
                    res.scores = iou[:, 0]
                    res.labels = gt.labels  # class-agnostic: the metric's accuracy is meaningless here
                else:
                    h, w = meta['ori_shape']
                    res.masks = torch.zeros(0, h, w, dtype=torch.bool)
                    res.scores = torch.zeros(0)
                    res.labels = torch.zeros(0, dtype=torch.long)
                sample.pred_instances = res
            return data_samples
        raise ValueError(f'unknown mode {mode!r}')
