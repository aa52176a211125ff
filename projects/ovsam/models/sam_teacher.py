"""SAM's image encoder as the frozen teacher of SAM2CLIP distillation."""
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS
from .common import FrozenMixin
from .sam_parts import build_sam_image_encoder


@MODELS.register_module()
class SAMImageEncoder(FrozenMixin, BaseModule):
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
        self.checkpoint = checkpoint
        self._freeze(frozen)

    def init_weights(self) -> None:
        if self.checkpoint is not None:
            from ..checkpoint import load_module_from_checkpoint
            load_module_from_checkpoint(self.encoder, self.checkpoint, 'image_encoder')
        self._is_init = True

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)
