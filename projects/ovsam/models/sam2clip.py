"""SAM2CLIP: the adapter that turns frozen CLIP features into a SAM image embedding.

All four CLIP levels are brought to stride 16, projected to the adapter width,
tagged with a learned level embedding and summed; SAM-style ViT blocks
(``segment_anything``'s ``Block``) and SAM's neck then produce a
``(B, 256, H/16, W/16)`` map that SAM's prompt encoder and mask decoder accept in
place of SAM's own image embedding. It is trained by distillation from SAM's
image encoder (stage 1).

The CPU fast variants (:class:`ovsam.models.fast_inference.FastSAM2CLIPAdapter`,
``FastLevelProjection``, ``FastBlock``) are subclasses swapped in by
``optimize_for_inference``.
"""
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS
from .common import FrozenMixin


class LevelProjection(nn.Module):
    """Resample one feature level to the adapter's stride and width.

    A strided convolution for finer levels (kernel = stride = 16 / s), a
    transposed convolution for coarser ones (kernel = stride = s / 16).
    """

    def __init__(self, in_channels: int, embed_dim: int, stride: int, target_stride: int = 16):
        super().__init__()
        if stride <= target_stride:
            if target_stride % stride:
                raise ValueError(f'stride {stride} does not divide {target_stride}')
            k = target_stride // stride
            self.projection = nn.Conv2d(in_channels, embed_dim, k, k)
        else:
            if stride % target_stride:
                raise ValueError(f'{target_stride} does not divide stride {stride}')
            k = stride // target_stride
            self.projection = nn.ConvTranspose2d(in_channels, embed_dim, k, k)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, H/16, W/16, D) channels-last, as SAM's blocks expect."""
        return self.projection(x).permute(0, 2, 3, 1)


@MODELS.register_module()
class SAM2CLIPAdapter(FrozenMixin, BaseModule):
    """Multi-level transformer adapter (official name: MultiLayerTransformerNeck).

    Args:
        in_channels: channels of the four CLIP levels.
        strides: their strides.
        input_size: side of the (square, padded) network input, 1024 for SAM.
        embed_dim: adapter width (1280, SAM ViT-H's).
        out_channels: image-embedding channels (256, SAM's).
        depth / num_heads / mlp_ratio / window_size / global_attn_indexes:
            the SAM ViT blocks.
        frozen: freeze (stage 2 and inference).
        sam_checkpoint: a SAM ``.pth`` whose ``image_encoder.pos_embed``
            initialises the position embedding (stage 1 start).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=...)``; the
            official stage-1 release stores the adapter under ``neck_student``.

    Shapes: levels ``(B, C_i, S/s_i, S/s_i)`` -> ``(B, out_channels, S/16, S/16)``.
    """

    target_stride = 16

    def __init__(self,
                 in_channels: Sequence[int] = (384, 768, 1536, 3072),
                 strides: Sequence[int] = (4, 8, 16, 32),
                 input_size: int = 1024,
                 embed_dim: int = 1280,
                 out_channels: int = 256,
                 depth: int = 5,
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0,
                 window_size: int = 14,
                 global_attn_indexes: Sequence[int] = (4, ),
                 frozen: bool = False,
                 sam_checkpoint: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=None)
        from segment_anything.modeling.common import LayerNorm2d
        from segment_anything.modeling.image_encoder import Block
        if len(in_channels) != len(strides):
            raise ValueError('in_channels and strides must have the same length')
        grid = input_size // self.target_stride
        self.grid = grid
        self.patch_embeds = nn.ModuleList(
            LevelProjection(c, embed_dim, s, self.target_stride) for c, s in zip(in_channels, strides))
        # Not trained: SAM's absolute position embedding (or zeros until loaded).
        self.register_buffer('pos_embed', torch.zeros(1, grid, grid, embed_dim))
        self.level_encoding = nn.Embedding(len(in_channels), embed_dim)
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim,
                  num_heads=num_heads,
                  mlp_ratio=mlp_ratio,
                  qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6),
                  act_layer=nn.GELU,
                  use_rel_pos=True,
                  rel_pos_zero_init=True,
                  window_size=0 if i in global_attn_indexes else window_size,
                  input_size=(grid, grid)) for i in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )
        self.embed_dim = embed_dim
        self.out_channels = out_channels
        self._pretrained = init_cfg
        self.sam_checkpoint = sam_checkpoint
        self._freeze(frozen)

    def init_weights(self) -> None:
        """Random level embeddings, SAM's position embedding, then (if given)
        a trained adapter, loaded strictly."""
        nn.init.normal_(self.level_encoding.weight, mean=0., std=1.)
        if self.sam_checkpoint is not None:
            from ..checkpoint import load_sam_pos_embed
            with torch.no_grad():
                self.pos_embed.copy_(load_sam_pos_embed(self.sam_checkpoint, self.pos_embed.shape))
        if self._pretrained is not None:
            from ..checkpoint import load_module_from_checkpoint
            load_module_from_checkpoint(self, self._pretrained['checkpoint'], self._pretrained.get('prefix'))
        self._is_init = True

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Four CLIP levels -> (B, out_channels, S/16, S/16)."""
        if len(feats) != len(self.patch_embeds):
            raise ValueError(f'SAM2CLIPAdapter expects {len(self.patch_embeds)} feature levels, '
                             f'got {len(feats)}')
        x = self.embed_levels(feats)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def embed_levels(self, feats: Sequence[Tensor]) -> Tensor:
        """The adapter's input tokens (B, S/16, S/16, D): every level projected,
        plus its level embedding, summed, plus the position embedding."""
        x = sum(embed(f) + self.level_encoding.weight[i]
                for i, (embed, f) in enumerate(zip(self.patch_embeds, feats)))
        return x + self.pos_embed
