"""SAM's parts (``segment_anything``), built in one place.

Every model of this project that holds SAM modules builds them here, so the
presets and the decoder variants live once: SAM's ViT image encoder (teacher,
baselines, the toy SAM), its mask decoder with SAM's 4 mask tokens + IoU head
(baselines, the toy SAM) or with one mask token and no IoU head (CLIP2SAM),
and :class:`SAMParts`, SAM under its own state-dict names.
"""
from functools import partial
from typing import Dict

import torch.nn as nn

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


def build_sam_mask_decoder(transformer_dim: int = 256, depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8,
                           single_mask: bool = False) -> nn.Module:
    """``segment_anything``'s ``MaskDecoder``.

    ``single_mask=True`` is CLIP2SAM's variant: one mask token and no IoU
    token or head (OV-SAM predicts one mask per prompt and never scores it;
    those weights are absent from the released checkpoints).
    """
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer
    decoder = MaskDecoder(
        transformer_dim=transformer_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim,
                                      num_heads=num_heads),
        num_multimask_outputs=0 if single_mask else 3)
    if single_mask:
        del decoder.iou_token
        del decoder.iou_prediction_head
    return decoder


class SAMParts(nn.Module):
    """SAM under SAM's own state-dict names: ``image_encoder``,
    ``prompt_encoder``, ``mask_decoder`` (4 mask tokens and the IoU head), so
    ``sam_vit_{h,l,b}_*.pth`` and :class:`~ovsam.models.PromptableSAM`
    checkpoints load strictly.

    Args:
        image_encoder: kwargs of :func:`build_sam_image_encoder`.
        prompt_encoder: kwargs of :class:`~ovsam.models.SAMPromptEncoder`.
        decoder: ``transformer_dim``, ``depth``, ``mlp_dim``, ``num_heads``.
    """

    def __init__(self, image_encoder: Dict, prompt_encoder: Dict, decoder: Dict) -> None:
        super().__init__()
        from .prompt_encoder import SAMPromptEncoder
        self.image_encoder = build_sam_image_encoder(**image_encoder)
        pe_cfg = dict(prompt_encoder)
        pe_cfg.pop('type', None)
        self.prompt_encoder = SAMPromptEncoder(**pe_cfg)
        d = decoder['transformer_dim']
        self.mask_decoder = build_sam_mask_decoder(d, decoder.get('depth', 2), decoder.get('mlp_dim', 2048),
                                                   decoder.get('num_heads', 8))


def load_sam_parts(sam: SAMParts, path: str) -> None:
    """Strictly load a SAM checkpoint (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``; anything else in the file, e.g. loss buffers, is ignored)."""
    from ..checkpoint import load_sam_state_dict, load_state_dict_strict
    sd = load_sam_state_dict(path)
    parts = ('image_encoder.', 'prompt_encoder.', 'mask_decoder.')
    load_state_dict_strict(sam, {k: v for k, v in sd.items() if k.startswith(parts)}, f'SAM {path!r}')
