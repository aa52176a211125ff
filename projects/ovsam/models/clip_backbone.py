"""Frozen CLIP image tower used as OV-SAM's only image backbone.

The tower itself is built by ``open_clip``; this wrapper only regroups its
modules into ``stem / layer1..4 / head`` (the layout of the official release, so
the official checkpoints load without renaming) and exposes

* ``forward(x)``: the four feature levels C2..C5 (strides 4, 8, 16, 32);
* ``box_embed(c5, rois)``: frozen-CLIP embeddings of boxes (RoIAlign on C5 at
  CLIP's native grid, then the attention-pool head);
* ``mask_embed(c5, masks)``: frozen-CLIP embeddings of masks (mask pooling; the
  way for towers without an attention pool, ConvNeXt).

Both give vectors in CLIP's joint space, ready for the text classifier. (The
CLIP2SAM head's own ``region_embed`` is the *trained* counterpart on the FPN.)
The CPU fast variant (:class:`ovsam.models.fast_inference.FastOpenCLIPBackbone`)
is a subclass swapped in by ``optimize_for_inference``.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS
from .common import FrozenMixin


def resolve_clip_config(model_name: str, model_cfg: Optional[Dict] = None) -> Dict:
    """Return an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).

    ``model_cfg`` (a full open_clip config dict) wins over ``model_name``; it is
    how tiny test towers and the toy CLIP are described without json files.
    """
    import open_clip
    if model_cfg is not None:
        return dict(model_cfg)
    name = model_name.replace('-quickgelu', '')
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f'Unknown open_clip model {model_name!r}. Known CNN towers include '
            f'RN50, RN101, RN50x4, RN50x16, RN50x64, convnext_base, convnext_large_d, '
            f'convnext_xxlarge; or pass model_cfg=dict(embed_dim=..., vision_cfg=..., text_cfg=...).')
    return cfg


@MODELS.register_module()
class OpenCLIPBackbone(FrozenMixin, BaseModule):
    """CLIP CNN image tower (open_clip ModifiedResNet or timm ConvNeXt).

    Args:
        model_name: open_clip model name, e.g. ``'RN50x16'`` (default),
            ``'RN50'``, ``'RN50x64'``, ``'convnext_large_d'``.
        model_cfg: a full open_clip model config overriding ``model_name``.
        frozen: keep the tower in eval mode without gradients (the paper's
            setting).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a CLIP
            checkpoint (OpenAI TorchScript ``.pt`` or an open_clip state dict);
            see :func:`ovsam.checkpoint.load_clip_visual`.

    Shapes (RN50x16, 1024x1024 input): ``forward`` returns
    ``(B,384,256,256), (B,768,128,128), (B,1536,64,64), (B,3072,32,32)``;
    ``box_embed`` and ``mask_embed`` return ``(N, 768)``.
    """

    def __init__(self,
                 model_name: str = 'RN50x16',
                 model_cfg: Optional[Dict] = None,
                 frozen: bool = True,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=None)
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
        cfg = resolve_clip_config(model_name, model_cfg)
        self.model_name = model_name
        self.embed_dim = cfg['embed_dim']
        vision_cfg = CLIPVisionCfg(**cfg['vision_cfg'])
        visual = _build_vision_tower(self.embed_dim, vision_cfg,
                                     quick_gelu='quickgelu' in model_name)
        if isinstance(vision_cfg.layers, (tuple, list)):
            self.tower_type = 'resnet'
            self.stem = nn.Sequential(visual.conv1, visual.bn1, visual.act1,
                                      visual.conv2, visual.bn2, visual.act2,
                                      visual.conv3, visual.bn3, visual.act3)
            self.avgpool = visual.avgpool
            for i in range(4):
                self.add_module(f'layer{i + 1}', getattr(visual, f'layer{i + 1}'))
            self.norm_pre = nn.Identity()
            self.head = visual.attnpool
            width = vision_cfg.width
            self.out_channels = [width * 4 * 2**i for i in range(4)]
            # The attention pool's positional embedding fixes its input grid.
            self.roi_size = vision_cfg.image_size // 32
        elif vision_cfg.timm_model_name and 'convnext' in vision_cfg.timm_model_name:
            self.tower_type = 'convnext'
            trunk = visual.trunk
            self.stem = trunk.stem
            self.avgpool = nn.Identity()
            for i in range(4):
                self.add_module(f'layer{i + 1}', trunk.stages[i])
            self.norm_pre = trunk.norm_pre
            self.head = nn.Sequential(trunk.head, visual.head)
            self.out_channels = [trunk.feature_info[i]['num_chs'] for i in range(4)]
            self.roi_size = 0  # mask pooling instead of RoIAlign
        else:
            raise ValueError(f'{model_name}: only CLIP CNN towers (ResNet, ConvNeXt) are supported '
                             'as OV-SAM backbones.')
        self.strides = (4, 8, 16, 32)
        self.image_size = vision_cfg.image_size
        if init_cfg is not None and (init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg):
            raise ValueError("OpenCLIPBackbone init_cfg must be dict(type='Pretrained', checkpoint=PATH)")
        self._pretrained = init_cfg
        self._freeze(frozen)

    def init_weights(self) -> None:
        # open_clip's own initialisation, or the CLIP checkpoint (strict);
        # like mmengine's Pretrained init this runs in init_weights(), so
        # building a model for testing needs no CLIP file.
        if self._pretrained is not None:
            from ..checkpoint import load_clip_visual
            load_clip_visual(self, self._pretrained['checkpoint'])
        self._is_init = True

    def _trunk(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.avgpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f'layer{i + 1}')(x)
            outs.append(x)
        return tuple(outs)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, 3, H, W) -> four levels (B, C_i, H / s_i, W / s_i)."""
        if self.frozen:
            with torch.no_grad():
                return self._trunk(x)
        return self._trunk(x)

    def clip_feature(self, c5: Tensor) -> Tensor:
        """The dense C5 map in the space the CLIP head expects."""
        return self.norm_pre(c5)

    def pool(self, feats: Tensor) -> Tensor:
        """CLIP's head on a (N, C5, g, g) grid at the head's native size -> (N, embed_dim)."""
        return self.head(feats)

    def box_embed(self, c5: Tensor, rois: Tensor) -> Tensor:
        """Frozen-CLIP embeddings of boxes.

        Args:
            c5: (B, C5, H/32, W/32) last feature level.
            rois: (N, 5) ``[batch_idx, x1, y1, x2, y2]`` in input pixels.
        Returns:
            (N, embed_dim) un-normalised CLIP region embeddings.
        """
        if self.tower_type != 'resnet':
            raise RuntimeError('box_embed needs an attention-pool head; use mask_embed for ConvNeXt')
        from mmcv.ops import roi_align
        # mmcv's RoIAlign is fp32-only (a no-op cast in fp32; needed under bf16 autocast)
        # and ignores strides: a channels-last C5 (the fast CPU trunk) is made contiguous.
        feats = roi_align(self.clip_feature(c5).float().contiguous(), rois.float(), (self.roi_size, self.roi_size),
                          1 / 32., 0, 'avg', True)
        return self.pool(feats)

    def mask_embed(self, c5: Tensor, masks: Tensor) -> Tensor:
        """Frozen-CLIP embeddings of soft or binary masks by average pooling.

        Args:
            c5: (1, C5, h, w) last level of one image.
            masks: (N, h, w) masks at C5 resolution (values in [0, 1]).
        Returns:
            (N, embed_dim).
        """
        feat = self.clip_feature(c5)[0]
        weights = masks.flatten(1)
        pooled = weights @ feat.flatten(1).t() / weights.sum(-1, keepdim=True).clamp(min=1e-6)
        if self.tower_type == 'convnext':
            return self.head(pooled[:, :, None, None]).flatten(1)
        # ResNet: feed the pooled vector as a 1x1 map through the attention pool
        # would mismatch its positional grid, so broadcast it over the grid.
        grid = pooled[:, :, None, None].expand(-1, -1, self.roi_size, self.roi_size)
        return self.pool(grid.contiguous())


def clip_text_tower(model_name: str = 'RN50x16', model_cfg: Optional[Dict] = None):
    """Build the matching open_clip text tower (a full CLIP model, visual removed)."""
    from open_clip.model import CLIP
    cfg = resolve_clip_config(model_name, model_cfg)
    model = CLIP(**cfg, quick_gelu='quickgelu' in model_name)
    model.visual = nn.Identity()
    return model
