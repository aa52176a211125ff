"""Checkpoint loading: safe, offline, strict.

* Every file is read with ``torch.load(weights_only=True)``. Besides tensors,
  mmengine's own checkpoints hold a few objects in their ``meta`` (message hub
  history, numpy scalars and dtypes); :func:`safe_load` allows exactly those,
  for the duration of its own ``torch.load`` only (a
  ``torch.serialization.safe_globals`` context, nothing global), and refuses a
  file carrying any other pickled object with :class:`CheckpointError`.
  mmengine's runner (``load_from``, ``--resume``) goes through :func:`safe_load`
  once a run opts in: :mod:`ovsam.engine`.
* Loading into a module is strict: missing or unexpected keys, or shape
  mismatches, raise :class:`CheckpointError` listing them.
* Converters read the formats users have: SAM ``sam_vit_*.pth``; CLIP from
  OpenAI (TorchScript ``.pt``) or open_clip (state dicts, ``.safetensors``);
  the official OV-SAM releases; this project's own mmengine checkpoints.
"""
import functools
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked."""


# ----------------------------------------------------------------------- safety
def _history_buffer_getattr(obj, name: str):
    """The only ``getattr`` mmengine checkpoints need.

    A ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; a general ``getattr`` would let a
    crafted file reach arbitrary attributes, so only that form is allowed.
    """
    from mmengine.logging import HistoryBuffer
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'refusing getattr({obj!r}, {name!r}) in a checkpoint')


@functools.lru_cache(maxsize=None)
def mmengine_safe_globals() -> tuple:
    """The non-tensor objects mmengine writes into its checkpoints' ``meta``.

    Scoped to what mmengine's own ``save_checkpoint``/``resume`` need; numpy
    arrays and scalars appear through ``HistoryBuffer`` in the message hub.
    :func:`safe_load` hands them to ``torch.serialization.safe_globals`` for
    its own call; they are never added to torch's global allow-list.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    safe = [HistoryBuffer, np.dtype, np.ndarray, (_history_buffer_getattr, 'builtins.getattr')]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    safe += [_reconstruct, scalar]
    # dtype classes (np.dtypes.Float64DType, ...) used when pickling dtypes
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return tuple(safe)


def safe_load(path: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and a clear error on refusal."""
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist (all checkpoints are read from '
                              'local paths; nothing is downloaded)')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location))
    try:
        with torch.serialization.safe_globals(list(mmengine_safe_globals())):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if _is_torchscript(path):
            raise CheckpointError(f'{path!r} is a TorchScript archive; load it with load_clip_visual / '
                                  'load_clip_state_dict') from e
        msg = str(e).split('\n')[0]
        raise CheckpointError(
            f'refusing to load {path!r}: it is not a weights-only checkpoint ({msg}). '
            'It contains pickled objects that could run code when loaded. If you trust the file, '
            're-save its tensors with torch.save(state_dict) in a trusted environment.') from e


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith('constants.pkl') or '/code/' in n for n in z.namelist())


# ------------------------------------------------------------------ state dicts
def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """Return the tensor dict of a raw or mmengine/open_clip-wrapped checkpoint."""
    if isinstance(obj, Mapping):
        for key in ('state_dict', 'model'):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError('checkpoint holds no state dict')
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in obj.items())
    return sd


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    if not prefix:
        return dict(sd)
    p = prefix.rstrip('.') + '.'
    out = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    if not out:
        heads = sorted({k.split('.')[0] for k in sd})[:10]
        raise CheckpointError(f'no key starts with {p!r}; top-level prefixes in the file: {heads}')
    return out


def load_state_dict_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str = '') -> None:
    """``load_state_dict(strict=True)`` with one readable error listing every problem."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}'
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        def fmt(items, n=20):
            s = ', '.join(items[:n])
            return s + (f', ... ({len(items)} in all)' if len(items) > n else '')
        parts = []
        if missing:
            parts.append(f'missing keys: {fmt(missing)}')
        if unexpected:
            parts.append(f'unexpected keys: {fmt(unexpected)}')
        if shape:
            parts.append(f'shape mismatches: {fmt(shape, 10)}')
        raise CheckpointError(f'cannot load {source or "state dict"} into {type(module).__name__}: '
                              + '; '.join(parts))
    module.load_state_dict(sd, strict=True)


def load_module_from_checkpoint(module: nn.Module, path: str, prefix: Optional[str] = None) -> None:
    """Strictly load ``module`` from the ``prefix.*`` keys of a checkpoint file."""
    sd = strip_prefix(unwrap_state_dict(safe_load(path)), prefix)
    load_state_dict_strict(module, sd, f'{path!r}' + (f' [{prefix}.*]' if prefix else ''))


# ---------------------------------------------------------------------- SAM
def load_sam_state_dict(path: str) -> Dict[str, torch.Tensor]:
    sd = unwrap_state_dict(safe_load(path))
    if not any(k.startswith('prompt_encoder.') for k in sd):
        raise CheckpointError(f'{path!r} is not a SAM checkpoint (no prompt_encoder.* keys)')
    return sd


def load_sam_pos_embed(path: str, shape: Sequence[int]) -> torch.Tensor:
    sd = load_sam_state_dict(path)
    if 'image_encoder.pos_embed' not in sd:
        raise CheckpointError(f'{path!r} has no image_encoder.pos_embed')
    pos = sd['image_encoder.pos_embed']
    if tuple(pos.shape) != tuple(shape):
        raise CheckpointError(f'{path!r}: image_encoder.pos_embed has shape {tuple(pos.shape)}, '
                              f'the adapter needs {tuple(shape)} (use the SAM variant whose width '
                              'matches embed_dim: ViT-H 1280, ViT-L 1024, ViT-B 768)')
    return pos


def convert_sam_mask_decoder(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """SAM's 4-token decoder (``mask_decoder.*`` stripped) -> a single-token,
    IoU-free decoder: keep mask token 0 and its hypernetwork MLP."""
    out = {}
    for k, v in sd.items():
        if k.startswith('iou_'):
            continue
        if k == 'mask_tokens.weight':
            v = v[:1]
        if k.startswith('output_hypernetworks_mlps.') and not k.startswith('output_hypernetworks_mlps.0.'):
            continue
        out[k] = v
    return out


def load_sam_mask_decoder(decoder: nn.Module, path: str) -> None:
    """Initialise CLIP2SAM's decoder from a SAM checkpoint."""
    sd = convert_sam_mask_decoder(strip_prefix(load_sam_state_dict(path), 'mask_decoder'))
    load_state_dict_strict(decoder, sd, f'{path!r} [mask_decoder.*]')


# ---------------------------------------------------------------------- CLIP
_RESNET_STEM = {'conv1': 'stem.0', 'bn1': 'stem.1', 'conv2': 'stem.3', 'bn2': 'stem.4',
                'conv3': 'stem.6', 'bn3': 'stem.7', 'attnpool': 'head'}


def load_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Full CLIP state dict (``visual.*``, text tower keys) from an OpenAI
    TorchScript archive, an OpenAI/open_clip state dict or a safetensors file."""
    if not osp.isfile(path):
        raise CheckpointError(f'CLIP checkpoint {path!r} does not exist')
    if _is_torchscript(path):
        # TorchScript archives are code + tensors loaded by the TorchScript
        # runtime, not by pickle: no arbitrary Python objects are created.
        model = torch.jit.load(path, map_location='cpu')
        return OrderedDict((k, v) for k, v in model.state_dict().items())
    return unwrap_state_dict(safe_load(path))


def convert_clip_visual(sd: Mapping[str, torch.Tensor], tower_type: str = 'resnet') -> Dict[str, torch.Tensor]:
    """open_clip/OpenAI ``visual.*`` keys -> :class:`OpenCLIPBackbone` keys."""
    out = {}
    for k, v in sd.items():
        if not k.startswith('visual.'):
            continue
        k = k[len('visual.'):]
        if tower_type == 'resnet':
            first, _, rest = k.partition('.')
            k = f'{_RESNET_STEM.get(first, first)}.{rest}'
        else:  # timm ConvNeXt inside open_clip's TimmModel
            if k.startswith('trunk.stem.'):
                k = 'stem.' + k[len('trunk.stem.'):]
            elif k.startswith('trunk.stages.'):
                i, _, rest = k[len('trunk.stages.'):].partition('.')
                k = f'layer{int(i) + 1}.{rest}'
            elif k.startswith('trunk.norm_pre.'):
                k = 'norm_pre.' + k[len('trunk.norm_pre.'):]
            elif k.startswith('trunk.head.'):
                k = 'head.0.' + k[len('trunk.head.'):]
            elif k.startswith('head.'):
                k = 'head.1.' + k[len('head.'):]
        out[k] = v
    if not out:
        raise CheckpointError('no visual.* keys: not a CLIP checkpoint')
    return out


def load_clip_visual(backbone: nn.Module, path: str) -> None:
    """Strictly load an :class:`OpenCLIPBackbone` from a CLIP checkpoint.

    Accepts OpenAI/open_clip files (``visual.*``) and files already in this
    project's layout (``stem.*`` or ``backbone.*`` keys).
    """
    sd = load_clip_state_dict(path)
    if any(k.startswith('visual.') for k in sd):
        sd = convert_clip_visual(sd, backbone.tower_type)
    elif any(k.startswith('backbone.') for k in sd):
        sd = strip_prefix(sd, 'backbone')
    sd = {k: v.float() for k, v in sd.items()}  # OpenAI archives are fp16
    load_state_dict_strict(backbone, sd, f'CLIP {path!r}')


# --------------------------------------------------------------- official OV-SAM
def official_ovsam_state_dict(clip: Optional[Mapping] = None,
                              sam2clip: Optional[Mapping] = None,
                              clip2sam: Optional[Mapping] = None,
                              sam: Optional[Mapping] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Map the released files' state dicts to OVSAM's submodules.

    Returns ``{submodule name: its state dict}`` for the given sources:
    ``backbone`` from CLIP (``visual.*``), ``neck`` from the SAM2CLIP release
    (``neck_student.*``), ``fpn_neck`` and ``mask_decoder`` from a CLIP2SAM
    release, ``pe`` from SAM (``prompt_encoder.*``).
    """
    parts = {}
    if clip is not None:
        parts['backbone'] = {k: v.float() for k, v in convert_clip_visual(clip).items()}
    if sam2clip is not None:
        parts['neck'] = strip_prefix(sam2clip, 'neck_student')
    if clip2sam is not None:
        parts['fpn_neck'] = strip_prefix(clip2sam, 'fpn_neck')
        parts['mask_decoder'] = strip_prefix(clip2sam, 'mask_decoder')
    if sam is not None:
        parts['pe'] = strip_prefix(sam, 'prompt_encoder')
    return parts


def load_official_ovsam(model: nn.Module,
                        clip: Optional[str] = None,
                        sam2clip: Optional[str] = None,
                        clip2sam: Optional[str] = None,
                        sam: Optional[str] = None) -> None:
    """Assemble the released inference model from its source files (strict).

    Args:
        clip: CLIP RN50x16 (OpenAI ``RN50x16.pt`` or open_clip) -> ``backbone``.
        sam2clip: ``sam2clip_vith_rn50x16.pth`` (``neck_student.*``) -> ``neck``.
        clip2sam: ``clip2sam_{coco,lvis}_rn50x16.pth`` (``fpn_neck.*``,
            ``mask_decoder.*``) -> ``fpn_neck``, ``mask_decoder``.
        sam: ``sam_vit_h_4b8939.pth`` (``prompt_encoder.*``) -> ``pe``.
    """
    files = dict(clip=clip, sam2clip=sam2clip, clip2sam=clip2sam, sam=sam)
    sds = {}
    for name, path in files.items():
        if path is None:
            continue
        if name == 'clip':
            sds[name] = load_clip_state_dict(path)
        elif name == 'sam':
            sds[name] = load_sam_state_dict(path)
        else:
            sds[name] = unwrap_state_dict(safe_load(path))
    source = dict(backbone='clip', neck='sam2clip', fpn_neck='clip2sam', mask_decoder='clip2sam', pe='sam')
    for module_name, sd in official_ovsam_state_dict(**sds).items():
        module = getattr(model, module_name)
        load_state_dict_strict(module, sd, f'{files[source[module_name]]!r} -> {module_name}')
        module._is_init = True  # keep mmengine's init_weights off loaded weights
