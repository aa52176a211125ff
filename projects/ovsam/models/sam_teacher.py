"""SAM's image encoder as the frozen teacher of SAM2CLIP distillation."""
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS

# segment_anything's ViT presets (build_sam_vit_{h,l,b}).
SAM_VIT_PRESETS = dict(
    vit_h=dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    vit_l=dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    vit_b=dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
)


def build_sam_image_encoder(variant: str = 'vit_h', image_size: int = 1024, out_chans: int = 256,
                            patch_size: int = 16, window_size: int = 14, **custom) -> nn.Module:
    """``segment_anything``'s ``ImageEncoderViT`` for a preset or custom size."""
    from segment_anything.modeling import ImageEncoderViT
    if variant != 'custom' and variant not in SAM_VIT_PRESETS:
        raise ValueError(f'unknown SAM variant {variant!r}: use vit_h, vit_l, vit_b or custom')
    arch = dict(SAM_VIT_PRESETS.get(variant, {}))
    arch.update(custom)
    missing = {'embed_dim', 'depth', 'num_heads', 'global_attn_indexes'} - set(arch)
    if missing:
        raise ValueError(f'custom SAM image encoder needs {sorted(missing)}')
    return ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=arch['embed_dim'],
        depth=arch['depth'],
        num_heads=arch['num_heads'],
        mlp_ratio=4,
        out_chans=out_chans,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=window_size,
        global_attn_indexes=tuple(arch['global_attn_indexes']))


@MODELS.register_module()
class SAMImageEncoder(BaseModule):
    """Frozen ``segment_anything`` ``ImageEncoderViT``.

    Args:
        variant: ``'vit_h'``, ``'vit_l'``, ``'vit_b'`` or ``'custom'``.
        checkpoint: SAM ``.pth``; ``image_encoder.*`` is loaded strictly.
        image_size / out_chans / patch_size / window_size: SAM defaults
            (1024 / 256 / 16 / 14).
        embed_dim / depth / num_heads / global_attn_indexes: for ``'custom'``
            (tiny teachers), overriding the preset.

    Shapes: (B, 3, S, S) normalised images -> (B, out_chans, S/16, S/16).
    """

    def __init__(self,
                 variant: str = 'vit_h',
                 checkpoint: Optional[str] = None,
                 image_size: int = 1024,
                 out_chans: int = 256,
                 patch_size: int = 16,
                 window_size: int = 14,
                 frozen: bool = True,
                 **custom) -> None:
        super().__init__(init_cfg=None)
        self.encoder = build_sam_image_encoder(variant, image_size, out_chans, patch_size, window_size,
                                               **custom)
        self.frozen = frozen
        self.checkpoint = checkpoint
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def init_weights(self) -> None:
        if self.checkpoint is not None:
            from ..checkpoint import load_module_from_checkpoint
            load_module_from_checkpoint(self.encoder, self.checkpoint, 'image_encoder')
        self._is_init = True

    def train(self, mode: bool = True):
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)
