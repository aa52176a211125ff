"""Checkpoint loading: safe, offline, strict.

* The format is read from the file's content (:func:`sniff_format`): empty,
  truncated, mislabelled (a safetensors file named ``.pth`` is loaded as
  safetensors) and foreign files get an error naming what they are.
  TorchScript runs code when loaded: only :func:`load_clip_state_dict`
  (a CLIP checkpoint was asked for) reads it; every other loader refuses it.
* State dicts hold tensors only, and NaN / Inf weights are refused unless
  ``allow_nonfinite=True``.
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
import os
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Union

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


# ------------------------------------------------------------------ formats
_FORMATS = {
    'numpy': 'a NumPy .npy array (np.load it and save a state dict of tensors)',
    'gzip': 'a gzip archive (decompress it first)',
    'hdf5': 'an HDF5 / Keras file (not a PyTorch checkpoint)',
    'json': 'a JSON text file',
    'html': 'an HTML page (a failed download: the server sent a web page instead of the file)',
    'text': 'a text file',
    'unknown': 'not a format PyTorch writes',
}


def _safetensors_header(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], 'little')
    return 2 <= n <= size - 8 and head[8:9] == b'{'


def sniff_format(path: str) -> str:
    """What a checkpoint file is, from its content (never its name).

    One of ``'directory'``, ``'missing'``, ``'empty'``, ``'torch_zip'``
    (``torch.save``), ``'torch_legacy'`` (pickle, ``torch.save`` before 1.6),
    ``'torchscript'``, ``'safetensors'``, ``'truncated_zip'`` (a zip without
    its end record: an interrupted download or copy), ``'zip'`` (a zip that is
    not a PyTorch file), ``'numpy'``, ``'gzip'``, ``'hdf5'``, ``'json'``,
    ``'html'``, ``'text'`` or ``'unknown'``.
    """
    if osp.isdir(path):
        return 'directory'
    if not osp.isfile(path):
        return 'missing'
    size = osp.getsize(path)
    if size == 0:
        return 'empty'
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return 'truncated_zip'
        if any(n.endswith('constants.pkl') or '/code/' in n for n in names):
            return 'torchscript'
        if any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return 'torch_zip'
        return 'zip'
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return 'torch_legacy'
    if _safetensors_header(head, size):
        return 'safetensors'
    if head.startswith(b'\x93NUMPY'):
        return 'numpy'
    if head.startswith(b'\x1f\x8b'):
        return 'gzip'
    if head.startswith(b'\x89HDF'):
        return 'hdf5'
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype html', b'<html', b'<?xml', b'<')):
        return 'html'
    if text.startswith((b'{', b'[')):
        return 'json'
    try:
        head.decode('utf-8')
        return 'text'
    except UnicodeDecodeError:
        return 'unknown'


def _refused_for_safety(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused an object (as opposed
    to failing on a damaged file)."""
    msg = str(exc)
    return 'GLOBAL' in msg or 'Unsupported global' in msg or 'is not an allowed global' in msg.lower()


_PLAIN_GLOBALS = ('torch.', 'collections.OrderedDict', 'builtins.set', 'builtins.frozenset', 'numpy.')


def pickle_globals(path: str, limit: int = 1 << 26) -> list:
    """``module.name`` of every class or function a plain pickle file would
    import, read with :mod:`pickletools` (nothing is imported or run); [] when
    the file is not a readable pickle."""
    import pickletools
    found, strings = [], []
    try:
        with open(path, 'rb') as f:
            data = f.read(limit)
        for op, arg, _ in pickletools.genops(data):
            if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE', 'BINUNICODE8'):
                strings = (strings + [arg])[-2:]
            elif op.name == 'GLOBAL' and isinstance(arg, str):
                found.append(arg.replace(' ', '.'))
            elif op.name == 'STACK_GLOBAL' and len(strings) == 2:
                found.append('.'.join(strings))
            elif op.name == 'STOP':
                break
    except Exception:  # not a pickle, truncated: whatever was found so far
        pass
    return list(dict.fromkeys(found))


def describe_unloadable(path: str, exc: Optional[BaseException] = None) -> str:
    """Why ``path`` cannot be read as a weights-only torch file, in words."""
    fmt = sniff_format(path)
    if fmt == 'directory':
        return 'it is a directory, not a file'
    if fmt == 'missing':
        return 'it does not exist'
    if fmt == 'empty':
        return 'it is empty (0 bytes: an interrupted download or copy)'
    if fmt == 'truncated_zip':
        return ('it is truncated or corrupt (a zip archive without its end record: an interrupted download or '
                'copy); download or copy it again')
    if fmt == 'zip':
        return 'it is a zip archive but not a PyTorch checkpoint (no data.pkl inside)'
    if fmt == 'safetensors':
        return 'it is a safetensors file (load it with safetensors, or name it .safetensors)'
    if fmt == 'torchscript':
        return ('it is a TorchScript archive, which runs code when loaded; only CLIP checkpoints are read as '
                'TorchScript (ovsam.checkpoint.load_clip_state_dict)')
    if fmt in _FORMATS:
        return f'it is {_FORMATS[fmt]}, not a PyTorch checkpoint'
    if fmt == 'torch_legacy' and exc is not None and not _refused_for_safety(exc):
        risky = [g for g in pickle_globals(path) if not g.startswith(_PLAIN_GLOBALS)]
        if risky:
            return (f'it is a plain Python pickle that would import and call {risky[:3]} when loaded (objects '
                    'that could run code), not tensors saved with torch.save; if you trust the file, re-save its '
                    'tensors with torch.save(state_dict) in a trusted environment')
    if exc is not None and _refused_for_safety(exc):
        msg = [ln for ln in str(exc).split('\n') if 'GLOBAL' in ln or 'global' in ln]
        return (f'it holds pickled objects that could run code when loaded ({(msg or [""])[0].strip()[:200]}); '
                'if you trust the file, re-save its tensors with torch.save(state_dict) in a trusted environment')
    if exc is not None:
        msg = str(exc).split('\n')[0][:200] or type(exc).__name__
        return f'it is corrupt or truncated ({type(exc).__name__}: {msg}); download or copy it again'
    return 'it cannot be read'


def _check_path(path, what: str = 'checkpoint') -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f'{what} path must be a string, got {type(path).__name__} {path!r}'[:200])
    path = osp.expanduser(os.fspath(path))
    if osp.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith(('.pth', '.pt', '.safetensors', '.bin')))[:5]
        hint = f'; files inside that look like checkpoints: {inside}' if inside else ''
        raise CheckpointError(f'{what} {path!r} is a directory, not a checkpoint file: give the file{hint}')
    if not osp.isfile(path):
        if osp.lexists(path) and not osp.exists(path):
            raise CheckpointError(f'{what} {path!r} is a broken symbolic link (to {os.readlink(path)!r}, which does '
                                  'not exist): fix the link or give the file itself')
        if osp.exists(path):
            raise CheckpointError(f'{what} {path!r} is not a regular file (a pipe, socket or device): copy the '
                                  'checkpoint to a file and give that')
        raise CheckpointError(f'{what} {path!r} does not exist (all checkpoints are read from local paths; '
                              'nothing is downloaded)')
    return path


def _load_safetensors(path: str, map_location) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(path, device=str(map_location))
    except Exception as e:
        msg = str(e).split('\n')[0][:200]
        raise CheckpointError(f'{path!r} is a damaged safetensors file ({type(e).__name__}: {msg}): truncated or '
                              'corrupt; download or copy it again') from e


def safe_load(path: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and an error that names the problem.

    The format is read from the content, not the name: a safetensors file is
    loaded as one whatever it is called; empty, truncated, mislabelled and
    TorchScript files (which run code when loaded) are refused with a
    :class:`CheckpointError` saying which it is.

    Zip-format files (torch >= 1.6) are memory-mapped (``mmap=True``, a private
    mapping: changes never reach the file): a tensor is read from disk when it
    is used, so taking the prompt encoder from SAM-H's 2.5 GB file reads a few
    MB, and loading a model does not hold a second full copy of its weights.
    """
    path = _check_path(path)
    fmt = sniff_format(path)
    if fmt == 'safetensors':
        return _load_safetensors(path, map_location)
    if path.endswith('.safetensors') and fmt not in ('torch_zip', 'torch_legacy'):
        raise CheckpointError(f'{path!r} is named .safetensors but {describe_unloadable(path)}')
    if fmt not in ('torch_zip', 'torch_legacy'):
        raise CheckpointError(f'cannot load {path!r}: {describe_unloadable(path)}')
    try:
        with torch.serialization.safe_globals(list(mmengine_safe_globals())):
            if fmt == 'torch_zip' and map_location in ('cpu', None) and not path.endswith('.safetensors'):
                # torch picks a loader from a path's name only for '.safetensors'; that case reads a file object
                return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            with open(path, 'rb') as f:  # a file object: torch never picks a loader from the name
                return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:
        if _refused_for_safety(e):
            raise CheckpointError(f'refusing to load {path!r}: {describe_unloadable(path, e)}') from e
        raise CheckpointError(f'cannot load {path!r}: {describe_unloadable(path, e)}') from e


def _is_torchscript(path: str) -> bool:
    return sniff_format(path) == 'torchscript'


# ------------------------------------------------------------------ state dicts
def unwrap_state_dict(obj, source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Return the tensor dict of a raw or mmengine/open_clip-wrapped checkpoint.

    Every key must be a string and every value a tensor: a state dict
    holding numbers, strings or nested dicts is refused (naming the keys)
    instead of failing later inside ``load_state_dict``.
    """
    if isinstance(obj, Mapping):
        for key in ('state_dict', 'model'):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(f'{source} holds a single tensor of shape {tuple(obj.shape)}, not a state dict '
                              '(a dict of named tensors)')
    if not isinstance(obj, Mapping) or not obj:
        what = 'an empty dict' if isinstance(obj, Mapping) else f'a {type(obj).__name__}'
        raise CheckpointError(f'{source} holds no state dict ({what}); expected a dict of named tensors')
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f'{source}: state dict keys must be strings, got {bad_keys[:5]!r}')
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ', '.join(f'{k!r} ({t})' for k, t in bad[:8])
        raise CheckpointError(f'{source}: the state dict holds {len(bad)} non-tensor values: {shown}'
                              f'{" ..." if len(bad) > 8 else ""}; a state dict maps parameter names to tensors '
                              '(is this a training log or a config rather than weights?)')
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in obj.items())
    return sd


def check_finite(sd: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Refuse floating-point tensors holding NaN or Inf (a diverged run)."""
    bad = [k for k, v in sd.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.is_meta
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f'{source}: {len(bad)} tensors hold NaN or Inf, e.g. {bad[:5]} (a diverged '
                              'training run or a damaged file). Use an earlier checkpoint; to load it anyway '
                              'pass allow_nonfinite=True')


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    if not prefix:
        return dict(sd)
    p = prefix.rstrip('.') + '.'
    out = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    if not out:
        heads = sorted({k.split('.')[0] for k in sd})[:10]
        raise CheckpointError(f'no key starts with {p!r}; top-level prefixes in the file: {heads}')
    return out


def load_state_dict_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str = '',
                           allow_nonfinite: bool = False) -> None:
    """``load_state_dict(strict=True)`` with one readable error listing every
    problem; non-tensor values and (unless ``allow_nonfinite``) NaN / Inf
    weights are refused too."""
    if not isinstance(module, nn.Module):
        raise TypeError(f'cannot load {source or "a state dict"}: the target must be a torch.nn.Module, got '
                        f'{type(module).__name__}')
    if not isinstance(sd, Mapping):
        raise CheckpointError(f'cannot load {source or "a state dict"}: expected a dict of named tensors, got '
                              f'{type(sd).__name__}')
    bad = [(k, type(v).__name__) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'cannot load {source or "state dict"}: non-tensor values for '
                              + ', '.join(f'{k!r} ({t})' for k, t in bad[:8]))
    if not allow_nonfinite:
        check_finite(sd, source or 'state dict')
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


def load_module_from_checkpoint(module: nn.Module, path: str, prefix: Optional[str] = None,
                                allow_nonfinite: bool = False) -> None:
    """Strictly load ``module`` from the ``prefix.*`` keys of a checkpoint file."""
    sd = strip_prefix(unwrap_state_dict(safe_load(path), repr(path)), prefix)
    load_state_dict_strict(module, sd, f'{path!r}' + (f' [{prefix}.*]' if prefix else ''), allow_nonfinite)


# ---------------------------------------------------------------------- SAM
def load_sam_state_dict(path: str) -> Dict[str, torch.Tensor]:
    sd = unwrap_state_dict(safe_load(path), repr(path))
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


def load_clip_state_dict(path: str, allow_torchscript: bool = True) -> Dict[str, torch.Tensor]:
    """Full CLIP state dict (``visual.*``, text tower keys) from an OpenAI
    TorchScript archive, an OpenAI/open_clip state dict or a safetensors file.

    This is the only loader that reads TorchScript (OpenAI's CLIP release is
    one), and only because a CLIP checkpoint was asked for: a TorchScript
    archive holds code that ``torch.jit.load`` compiles, so load only files you
    trust; ``allow_torchscript=False`` refuses them. Every other loader
    (:func:`safe_load`) refuses TorchScript.
    """
    path = _check_path(path, 'CLIP checkpoint')
    if _is_torchscript(path):
        if not allow_torchscript:
            raise CheckpointError(f'{path!r} is a TorchScript archive (it runs code when loaded) and '
                                  'allow_torchscript=False; convert it to a state dict or allow it')
        try:
            model = torch.jit.load(path, map_location='cpu')
        except Exception as e:
            raise CheckpointError(f'cannot load the TorchScript CLIP archive {path!r}: '
                                  f'{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}') from e
        return OrderedDict((k, v) for k, v in model.state_dict().items())
    return unwrap_state_dict(safe_load(path), f'CLIP checkpoint {path!r}')


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
CLIP2SAM_PARTS = ('mask_decoder', 'fpn_neck', 'roi_conv')


def split_clip2sam_state_dict(mask_decoder: Mapping, fpn_neck: Mapping,
                              roi_conv: Optional[Mapping] = None,
                              sources: Optional[Mapping[str, str]] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """The large-vocabulary release's CLIP2SAM, which comes in separate files.

    ``mask_decoder``'s ``mask_decoder.*`` keys are the whole head (decoder,
    label token and MLP, RoI projection); ``fpn_neck``'s ``fpn_neck.*`` keys
    the FPN; ``roi_conv``'s top-level ``roi_conv.*`` keys replace the head's
    RoI projection (the official head loads it separately, after the
    decoder). Each prefix must hold exactly the keys its module has: the RoI
    projection's keys must be the ones the decoder file has under
    ``mask_decoder.roi_conv.*``.
    """
    where = dict(sources or {})
    head = strip_prefix(mask_decoder, 'mask_decoder')
    parts = dict(fpn_neck=strip_prefix(fpn_neck, 'fpn_neck'), mask_decoder=head)
    if roi_conv is not None:
        roi = strip_prefix(roi_conv, 'roi_conv')
        own = {k[len('roi_conv.'):] for k in head if k.startswith('roi_conv.')}
        missing, extra = sorted(own - set(roi)), sorted(set(roi) - own)
        if missing or extra:
            raise CheckpointError(
                f'{where.get("roi_conv", "the RoI projection file")!r} [roi_conv.*] does not fit the head\'s RoI '
                f'projection ({where.get("mask_decoder", "decoder file")!r} [mask_decoder.roi_conv.*]): '
                f'missing keys {missing}, unexpected keys {extra}')
        for k, v in roi.items():
            head[f'roi_conv.{k}'] = v
    return parts


def official_ovsam_state_dict(clip: Optional[Mapping] = None,
                              sam2clip: Optional[Mapping] = None,
                              clip2sam: Optional[Mapping] = None,
                              sam: Optional[Mapping] = None,
                              clip2sam_parts: Optional[Mapping[str, Mapping]] = None,
                              ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Map the released files' state dicts to OVSAM's submodules.

    Returns ``{submodule name: its state dict}`` for the given sources:
    ``backbone`` from CLIP (``visual.*``), ``neck`` from the SAM2CLIP release
    (``neck_student.*``), ``fpn_neck`` and ``mask_decoder`` from a CLIP2SAM
    release (one file, ``clip2sam``) or from the large-vocabulary release's
    separate files (``clip2sam_parts``: state dicts under the keys
    ``mask_decoder``, ``fpn_neck`` and ``roi_conv``;
    :func:`split_clip2sam_state_dict`), ``pe`` from SAM (``prompt_encoder.*``).
    """
    if clip2sam is not None and clip2sam_parts is not None:
        raise ValueError('give the CLIP2SAM release as one file (clip2sam) or as parts (clip2sam_parts), not both')
    parts = {}
    if clip is not None:
        parts['backbone'] = {k: v.float() for k, v in convert_clip_visual(clip).items()}
    if sam2clip is not None:
        parts['neck'] = strip_prefix(sam2clip, 'neck_student')
    if clip2sam is not None:
        parts['fpn_neck'] = strip_prefix(clip2sam, 'fpn_neck')
        parts['mask_decoder'] = strip_prefix(clip2sam, 'mask_decoder')
    if clip2sam_parts is not None:
        parts.update(split_clip2sam_state_dict(**clip2sam_parts))
    if sam is not None:
        parts['pe'] = strip_prefix(sam, 'prompt_encoder')
    return parts


def _clip2sam_part_files(clip2sam: Mapping) -> Dict[str, str]:
    """Check ``checkpoints.clip2sam`` given as ``dict(mask_decoder=..., fpn_neck=..., roi_conv=...)``."""
    parts = dict(clip2sam)
    unknown = sorted(set(parts) - set(CLIP2SAM_PARTS))
    missing = [p for p in ('mask_decoder', 'fpn_neck') if not parts.get(p)]
    if unknown or missing:
        raise CheckpointError(
            f'clip2sam given as separate files needs the parts mask_decoder (the head: mask_decoder.*) and '
            f'fpn_neck (fpn_neck.*), optionally roi_conv (roi_conv.*); got {sorted(parts)}'
            + (f' (unknown: {unknown})' if unknown else ''))
    bad = [(k, v) for k, v in parts.items() if v is not None and not isinstance(v, (str, os.PathLike))]
    if bad:
        raise CheckpointError(f'clip2sam part {bad[0][0]!r} must be a file path, got {type(bad[0][1]).__name__}')
    return {k: os.fspath(v) for k, v in parts.items() if v}


def load_official_ovsam(model: nn.Module,
                        clip: Optional[str] = None,
                        sam2clip: Optional[str] = None,
                        clip2sam: Optional[Union[str, Mapping[str, str]]] = None,
                        sam: Optional[str] = None) -> None:
    """Assemble the released inference model from its source files (strict).

    Args:
        clip: CLIP RN50x16 (OpenAI ``RN50x16.pt`` or open_clip) -> ``backbone``.
        sam2clip: ``sam2clip_vith_rn50x16.pth`` or the large-vocabulary
            release's ``sam2clip_vith_rn50.pth`` (``neck_student.*``) -> ``neck``.
        clip2sam: ``clip2sam_{coco,lvis}_rn50x16.pth`` (``fpn_neck.*``,
            ``mask_decoder.*``) -> ``fpn_neck``, ``mask_decoder``; or, for the
            large-vocabulary release, its separate files
            ``dict(mask_decoder='ovsam_R50x16_lvisnorare.pth',
            fpn_neck='R50x16_fpn_lvis_norare_v3det.pth',
            roi_conv='R50x16_fpn_lvis_norare_v3det.pth')``
            (:func:`split_clip2sam_state_dict`).
        sam: ``sam_vit_h_4b8939.pth`` (``prompt_encoder.*``) -> ``pe``.
    """
    split = _clip2sam_part_files(clip2sam) if isinstance(clip2sam, Mapping) else None
    files = dict(clip=clip, sam2clip=sam2clip, clip2sam=None if split else clip2sam, sam=sam)
    sds, cache = {}, {}

    def read(path):  # each file once, even when it serves several parts
        if path not in cache:
            cache[path] = unwrap_state_dict(safe_load(path), repr(path))
        return cache[path]

    for name, path in files.items():
        if path is None:
            continue
        if name == 'clip':
            sds[name] = load_clip_state_dict(path)
        elif name == 'sam':
            sds[name] = load_sam_state_dict(path)
        else:
            sds[name] = read(path)
    if split:
        sds['clip2sam_parts'] = dict({k: read(v) for k, v in split.items()}, sources=split)
    source = dict(backbone='clip', neck='sam2clip', pe='sam',
                  fpn_neck=split['fpn_neck'] if split else clip2sam,
                  mask_decoder=(f'{split["mask_decoder"]}' + (f' + {split["roi_conv"]} [roi_conv]'
                                                              if 'roi_conv' in split else '')) if split else clip2sam)
    for module_name, sd in official_ovsam_state_dict(**sds).items():
        module = getattr(model, module_name)
        path = source[module_name] if module_name in ('fpn_neck', 'mask_decoder') else files[source[module_name]]
        load_state_dict_strict(module, sd, f'{path!r} -> {module_name}')
        module._is_init = True  # keep mmengine's init_weights off loaded weights
