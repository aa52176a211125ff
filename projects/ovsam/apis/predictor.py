"""Interactive OV-SAM: embed an image once, then prompt it many times.

:class:`OVSAMPredictor` follows segment_anything's ``SamPredictor``:
``set_image`` runs the heavy part (frozen CLIP, SAM2CLIP adapter, FPN) once and
caches it; every ``predict`` call then only runs the prompt encoder, the
CLIP2SAM head and the classifiers. Prompts are given in pixel coordinates of the
*original* image; the predictor maps them to the model's resized and padded
input frame. Besides a mask, every prompt gets a class from the current
vocabulary, which can be changed at any time (``set_vocabulary``).

Example::

    from ovsam.apis import OVSAMPredictor
    p = OVSAMPredictor.from_config('configs/_base_/models/ovsam_rn50x16.py',
                                   'ovsam_coco.pth', clip_checkpoint='RN50x16.pt')
    p.set_vocabulary(['cat', 'dog', 'cup,mug'])
    p.set_image(rgb_array)
    out = p.predict(box=[10, 20, 200, 240])
    out.masks[0], out.class_names[0], out.scores[0]
    out2 = p.predict(point_coords=[[50, 60]], mask_input=out.low_res_logits)  # refine
"""
import hashlib
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import Tensor

from ..models.ov_ensemble import open_vocab_ensemble
from ..models.prompts import PromptError, check_prompts
from ..vocabulary import (VILD_TEMPLATES, encode_class_names, load_text_embeddings, save_text_embeddings,
                          split_synonyms)
from .vocabularies import match_class

__all__ = ['OVSAMPredictor', 'OVSAMPrediction', 'PromptError', 'default_tiny_config']

ArrayLike = Union[np.ndarray, Sequence, Tensor]


def default_tiny_config() -> str:
    """Path of ``configs/_base_/models/ovsam_tiny.py`` (repository or installed ``.mim``)."""
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    candidates = [
        osp.join(here, '.mim', 'configs', '_base_', 'models', 'ovsam_tiny.py'),
        osp.join(osp.dirname(osp.dirname(here)), 'configs', '_base_', 'models', 'ovsam_tiny.py'),
    ]
    for c in candidates:
        if osp.isfile(c):
            return c
    raise FileNotFoundError(f'ovsam_tiny.py not found in {candidates}')


@dataclass
class OVSAMPrediction:
    """Result of :meth:`OVSAMPredictor.predict` for N prompts (numpy arrays).

    Attributes:
        masks: (N, H, W) bool masks at the original image size.
        low_res_logits: (N, 1, 4E, 4E) mask logits in the padded input frame;
            pass them back as ``mask_input`` to refine a prompt.
        mask_scores: (N,) stability score of each mask (OV-SAM has no IoU head).
        mask_confidence: (N,) mean foreground probability inside each mask.
        boxes: (N, 4) x1, y1, x2, y2 in original pixels: the prompt box, or the
            predicted mask's box for prompts without a box (clipped to the image).
        labels / scores / class_names: top-1 class index, probability and name.
        topk_labels / topk_scores / topk_names: the ``top_k`` best classes.
        class_probs: (N, K) probabilities over the vocabulary (background
            removed, so rows may sum to less than 1).
        logits: (N, H, W) mask logits at the original size (only with
            ``return_logits=True``).
    """
    masks: np.ndarray
    low_res_logits: np.ndarray
    mask_scores: np.ndarray
    mask_confidence: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_names: List[str]
    topk_labels: np.ndarray
    topk_scores: np.ndarray
    topk_names: List[List[str]]
    class_probs: np.ndarray
    logits: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def image_to_rgb(image: Any, image_format: str = 'RGB') -> np.ndarray:
    """Any supported image -> (H, W, 3) RGB array, uint8 or float32 in [0, 255].

    Accepts numpy arrays (H x W gray, H x W x 1, H x W x 3 RGB/BGR, H x W x 4
    RGBA/BGRA; uint8, other integer types with values 0..255, bool, or floats in
    [0, 1]), PIL images and torch tensors laid out as numpy arrays. Alpha is
    dropped (not composited).
    """
    fmt = image_format.upper()
    if fmt not in ('RGB', 'BGR'):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert('RGB'))
            fmt = 'RGB'
    except ImportError:  # pragma: no cover - PIL ships with mmcv/matplotlib
        pass
    arr = _to_numpy(image)
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise ValueError(f'image must be an H x W or H x W x C array, got shape {arr.shape} '
                         f'and dtype {arr.dtype}')
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f'empty image of shape {arr.shape}')
    if c not in (1, 3, 4):
        raise ValueError(f'image must have 1, 3 or 4 channels (last axis), got {c} '
                         f'(shape {arr.shape}); channel-first arrays are not accepted')
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError('image contains NaN or Inf')
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f'float images must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}]; '
                             'pass uint8 for 0..255 data')
        arr = np.clip(arr, 0, 1) * 255.0
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 255:
                raise ValueError(f'integer images must hold values in 0..255, got {lo}..{hi} '
                                 f'(dtype {arr.dtype}); convert to uint8 or float in [0, 1]')
            arr = arr.astype(np.uint8)
    else:
        raise ValueError(f'unsupported image dtype {arr.dtype}')
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[:, :, :3]
    if fmt == 'BGR':
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


class OVSAMPredictor:
    """Prompted segmentation and open-vocabulary recognition on one image.

    Args:
        model: an :class:`ovsam.models.OVSAM` (put in eval mode here).
        device: where to run (default: the model's device).
        clip_model / clip_model_cfg: open_clip name / config of the text tower
            used to embed new class names (default: the backbone's).
        clip_checkpoint: local CLIP weights for the text tower. Without it new
            names can only be embedded when ``allow_random_text=True`` (tests
            and the tiny demo model); vocabulary *files* always work.
        text_encoder: a ready ``(model, tokenizer)`` pair instead.
        cache_dir: optional folder where embedded vocabularies are stored as
            files and looked up again; nothing is written unless it is given.
            Embeddings are always cached in memory by content hash.
        fast: switch on the equivalent inference fast paths of
            :func:`ovsam.models.fast_inference.optimize_for_inference` (same
            weights, same outputs up to float rounding; ``False`` keeps the
            modules as released).
    """

    def __init__(self,
                 model: torch.nn.Module,
                 device: Optional[Union[str, torch.device]] = None,
                 clip_model: Optional[str] = None,
                 clip_model_cfg: Optional[Dict] = None,
                 clip_checkpoint: Optional[str] = None,
                 text_encoder: Optional[Tuple[Any, Any]] = None,
                 allow_random_text: bool = False,
                 random_text_seed: int = 0,
                 cache_dir: Optional[str] = None,
                 fast: bool = True) -> None:
        if device is not None:
            model = model.to(device)
        if fast:
            from ..models.fast_inference import optimize_for_inference
            optimize_for_inference(model)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.clip_model = clip_model or getattr(model.backbone, 'model_name', 'RN50x16')
        self.clip_model_cfg = None if clip_model_cfg is None else _plain(clip_model_cfg)
        self.clip_checkpoint = clip_checkpoint
        self.allow_random_text = allow_random_text
        self.random_text_seed = random_text_seed
        self.cache_dir = cache_dir
        self._text_encoder = text_encoder
        self._text_key: Optional[str] = None
        self._class_cache: Dict[str, Tensor] = {}  # per class name -> (P_i, D)
        self._state: Optional[Dict[str, Any]] = None
        # Vocabulary the model came with (from its config), if any.
        clf = model.mask_decoder.classifier
        self._seen: Optional[List[int]] = None
        self._allowed: Optional[List[int]] = None
        if clf.num_classes > 0:
            if getattr(model, 'base_classes', None) is not None:
                self._seen = list(model.base_classes)
                self._allowed = list(model.base_classes) + list(model.novel_classes)

    # ------------------------------------------------------------ building
    @classmethod
    def from_config(cls,
                    config: Union[str, Any],
                    checkpoint: Optional[str] = None,
                    device: Union[str, torch.device] = 'cpu',
                    clip_checkpoint: Optional[str] = None,
                    vocabulary: Optional[Union[str, Sequence[str]]] = None,
                    **kwargs) -> 'OVSAMPredictor':
        """Build the config's model and load ``checkpoint`` (strictly, weights only).

        ``clip_checkpoint`` defaults to the CLIP file the config names (backbone
        ``init_cfg`` or ``model.checkpoints.clip``). ``vocabulary`` is an
        embedding file, a built-in name or class names (see
        :meth:`set_vocabulary_spec`).
        """
        import ovsam  # noqa: F401  (registers modules)
        from mmdet.registry import MODELS
        from mmengine.config import Config
        cfg = Config.fromfile(config) if isinstance(config, str) else config
        model = MODELS.build(cfg.model)
        _quiet_init_weights(model)
        if checkpoint is not None:
            from ..checkpoint import load_state_dict_strict, safe_load, unwrap_state_dict
            sd = unwrap_state_dict(safe_load(checkpoint))
            load_state_dict_strict(model, sd, repr(checkpoint))
        bb = cfg.model.backbone
        if clip_checkpoint is None:
            init = bb.get('init_cfg') or {}
            clip_checkpoint = init.get('checkpoint') or (cfg.model.get('checkpoints') or {}).get('clip')
        kwargs.setdefault('clip_model', bb.get('model_name', 'RN50x16'))
        kwargs.setdefault('clip_model_cfg', bb.get('model_cfg'))
        pred = cls(model, device=device, clip_checkpoint=clip_checkpoint, **kwargs)
        if vocabulary is not None:
            pred.set_vocabulary_spec(vocabulary)
        return pred

    @classmethod
    def from_tiny(cls,
                  seed: int = 0,
                  vocabulary: Optional[Union[str, Sequence[str]]] = 'shapes',
                  device: Union[str, torch.device] = 'cpu',
                  config: Optional[str] = None,
                  **kwargs) -> 'OVSAMPredictor':
        """The tiny test model with random weights and a random text tower.

        Its masks and labels are meaningless; it exists so that tests and the
        demos run without any checkpoint. Deterministic for a given ``seed``.
        """
        from mmengine.config import Config
        cfg = Config.fromfile(config or default_tiny_config())
        torch.manual_seed(seed)
        kwargs.setdefault('allow_random_text', True)
        kwargs.setdefault('random_text_seed', seed)
        return cls.from_config(cfg, None, device=device, vocabulary=vocabulary, **kwargs)

    # ------------------------------------------------------------ properties
    @property
    def input_size(self) -> int:
        """Side of the square input frame (1024 for the released model)."""
        return int(self.model.pe.input_image_size[0])

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        """(4E, 4E): shape of low-res mask logits and of ``mask_input``."""
        return tuple(int(s) for s in self.model.pe.mask_input_size)

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def original_size(self) -> Tuple[int, int]:
        self._require_image()
        return tuple(self._state['meta']['ori_shape'])

    @property
    def original_image(self) -> np.ndarray:
        """The current image as (H, W, 3) RGB (uint8, or float32 in 0..255)."""
        self._require_image()
        return self._state['image']

    @property
    def image_state(self) -> Optional[Dict[str, Any]]:
        """Everything ``set_image`` computed; give it back to :meth:`restore_image_state`."""
        return self._state

    def restore_image_state(self, state: Optional[Dict[str, Any]]) -> None:
        self._state = state

    @property
    def class_names(self) -> List[str]:
        clf = self.model.mask_decoder.classifier
        if clf.num_classes <= 0:
            return []
        return list(clf.class_names or [f'class{i}' for i in range(clf.num_classes)])

    @property
    def num_classes(self) -> int:
        return max(self.model.mask_decoder.classifier.num_classes, 0)

    # ------------------------------------------------------------ image
    def reset_image(self) -> None:
        self._state = None

    def set_image(self, image: Any, image_format: str = 'RGB') -> None:
        """Preprocess ``image`` like the model's test pipeline and cache its features.

        The longest side is resized to :attr:`input_size` (bilinear, ratio
        kept, as mmdet's ``Resize(keep_ratio=True)``), the image is normalised
        and padded by the model's own data preprocessor (its mean, std and
        channel order), then ``extract_feat`` runs once.
        """
        self._set_rgb(image_to_rgb(image, image_format))

    @torch.no_grad()
    def _set_rgb(self, rgb: np.ndarray) -> None:
        import mmcv
        from mmdet.structures import DetDataSample
        h, w = rgb.shape[:2]
        size = self.input_size
        scale = size / max(h, w)
        nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        resized = rgb if (nh, nw) == (h, w) else mmcv.imresize(rgb, (nw, nh), interpolation='bilinear',
                                                              backend='cv2')
        if resized.ndim == 2:  # cv2 drops a singleton channel axis of 1-pixel images
            resized = resized[:, :, None]
        # mmdet pipelines hand BGR images to the data preprocessor, which then
        # applies the model's own channel conversion.
        bgr = np.ascontiguousarray(resized[:, :, ::-1])
        tensor = torch.from_numpy(bgr).permute(2, 0, 1).contiguous()
        sx, sy = nw / w, nh / h
        sample = DetDataSample(metainfo=dict(img_shape=(nh, nw), ori_shape=(h, w), scale_factor=(sx, sy)))
        dp = self.model.data_preprocessor
        data = dp(dict(inputs=[tensor], data_samples=[sample]), training=False)
        inputs = data['inputs']
        ph, pw = inputs.shape[-2:]
        if ph > size or pw > size:
            raise RuntimeError(f'the data preprocessor padded the image to {(ph, pw)}, beyond the '
                               f'model input {size}x{size}: check pad_size_divisor')
        if (ph, pw) != (size, size):
            inputs = F.pad(inputs, (0, size - pw, 0, size - ph), value=float(getattr(dp, 'pad_value', 0)))
        inputs = inputs.to(self.device)
        clip_feats, image_embed, fpn_feats = self.model.extract_feat(inputs)
        meta = dict(img_shape=(nh, nw), ori_shape=(h, w), scale_factor=(sx, sy),
                    batch_input_shape=(size, size), pad_shape=(size, size))
        self._state = dict(image=rgb, meta=meta, clip_feats=tuple(clip_feats), image_embed=image_embed,
                           fpn_feats=tuple(fpn_feats), inputs=inputs)

    def _require_image(self) -> None:
        if self._state is None:
            raise RuntimeError('no image set: call set_image(image) before predict()')

    def get_image_embedding(self) -> Tensor:
        """The cached SAM-style image embedding (1, C, E, E)."""
        self._require_image()
        return self._state['image_embed']

    # ------------------------------------------------------------ vocabulary
    def _text_model(self):
        if self._text_encoder is None:
            if self.clip_checkpoint is None and not self.allow_random_text:
                raise RuntimeError(
                    'cannot embed new class names: no CLIP text weights. Pass clip_checkpoint=PATH '
                    '(the CLIP file the model was built from), or load precomputed embeddings with '
                    'set_vocabulary_file(PATH) (made by tools/gen_text_embeddings.py).')
            from ..clip_text import build_text_model
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_text_seed)
                model, tok = build_text_model(self.clip_model, self.clip_model_cfg, self.clip_checkpoint)
            self._text_encoder = (model.eval(), tok)
        return self._text_encoder

    def _text_identity(self) -> str:
        """A string identifying the text tower, part of every cache key."""
        if self._text_key is None:
            parts = [self.clip_model, json.dumps(self.clip_model_cfg, sort_keys=True, default=str)]
            if self._text_encoder is not None or self.clip_checkpoint is None:
                model = self._text_model()[0]
                h = hashlib.sha256()
                for k, v in sorted(model.state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().numpy().tobytes())
                parts.append('weights:' + h.hexdigest())
            else:
                st = os.stat(self.clip_checkpoint)
                parts.append(f'file:{osp.realpath(self.clip_checkpoint)}:{st.st_size}:{st.st_mtime_ns}')
            parts.append(json.dumps(list(VILD_TEMPLATES)))
            self._text_key = hashlib.sha256('\n'.join(parts).encode()).hexdigest()
        return self._text_key

    def _name_key(self, names: Sequence[str]) -> str:
        return hashlib.sha256((self._text_identity() + '\n' + '\n'.join(names)).encode()).hexdigest()[:24]

    def encode_class_names(self, names: Sequence[str]) -> Tensor:
        """(K, P, D) text embeddings of ``names``, from the caches where possible."""
        names = _check_names(names)
        path = None
        if self.cache_dir:
            path = osp.join(self.cache_dir, f'vocab_{self._name_key(names)}.pth')
            if osp.isfile(path):
                emb, _ = load_text_embeddings(path, class_names=names)
                for n, e in zip(names, emb):
                    self._class_cache.setdefault(self._name_key([n]), e[:len(split_synonyms(n))])
                return emb
        keys = [self._name_key([n]) for n in names]
        missing = list(dict.fromkeys(n for n, k in zip(names, keys) if k not in self._class_cache))
        if missing:
            model, tok = self._text_model()
            emb = encode_class_names(model, tok, missing, progress=False)
            for n, e in zip(missing, emb):
                self._class_cache[self._name_key([n])] = e[:len(split_synonyms(n))].cpu()
        rows = [self._class_cache[k] for k in keys]
        out = _pad_synonyms(rows)
        if path is not None:
            save_text_embeddings(path, out, names, meta=dict(clip_model=self.clip_model,
                                                             clip_checkpoint=self.clip_checkpoint))
        return out

    def set_vocabulary(self,
                       names: Union[str, Sequence[str]],
                       embeddings: Optional[Tensor] = None,
                       seen_classes: Optional[Sequence[Union[int, str]]] = None) -> None:
        """Recognise ``names`` from now on (one class per item; commas inside
        an item separate synonyms). ``embeddings`` (K, P, D) skips the text
        tower. ``seen_classes`` (indices or names) are the classes the head was
        trained on: they lean on the head (alpha), all others on frozen CLIP
        (beta); by default every class counts as unseen, as in the released
        code without a split.
        """
        if isinstance(names, str):
            names = [names]
        names = _check_names(names)
        if embeddings is None:
            embeddings = self.encode_class_names(names)
        self._install(torch.as_tensor(embeddings), names, seen_classes)

    def set_vocabulary_file(self, path: str, seen_classes: Optional[Sequence[Union[int, str]]] = None) -> None:
        """Load a text-embedding file written by ``tools/gen_text_embeddings.py``."""
        emb, names = load_text_embeddings(path)
        self._install(emb, names, seen_classes)

    def set_vocabulary_spec(self, spec: Union[str, Sequence[str]]) -> None:
        """An embedding file, ``coco`` / ``lvis`` / ``shapes``, a class file or names."""
        from .vocabularies import resolve_vocabulary
        path, names = resolve_vocabulary(spec)
        if path is not None:
            self.set_vocabulary_file(path)
        else:
            self.set_vocabulary(names)

    def _install(self, emb: Tensor, names: List[str], seen_classes) -> None:
        dim = self.model.mask_decoder.embed_dim
        if emb.dim() == 2:
            emb = emb[:, None]
        if emb.dim() != 3 or emb.shape[-1] != dim:
            raise ValueError(f'text embeddings of shape {tuple(emb.shape)} do not fit this model: it needs '
                             f'(classes, synonyms, {dim}); they were made with another CLIP model')
        self.model.mask_decoder.classifier.set_vocabulary(emb.to(self.device), names)
        seen = None
        if seen_classes is not None:
            seen = []
            for c in seen_classes:
                idx = c if isinstance(c, (int, np.integer)) else match_class(str(c), names)
                if idx is None or not 0 <= int(idx) < len(names):
                    raise ValueError(f'seen class {c!r} is not in the vocabulary')
                seen.append(int(idx))
        self._seen, self._allowed = seen, None

    def vocabulary_embeddings(self) -> Tensor:
        """Current (K, P, D) unit-norm text embeddings."""
        cls_embed = self.model.mask_decoder.classifier.cls_embed
        return cls_embed.permute(1, 2, 0)[:-1].detach().cpu()

    def find_class(self, query: str) -> Optional[int]:
        """Index of the class sharing a synonym with ``query``, or None."""
        return match_class(query, self.class_names)

    def add_class(self, name: str) -> int:
        """Index of ``name`` in the vocabulary, appending it (embedded by the
        text tower) when no class shares one of its synonyms."""
        idx = self.find_class(name)
        if idx is not None:
            return idx
        names = self.class_names
        new = self.encode_class_names([name])[0]
        if names:
            old = self.vocabulary_embeddings()
            emb = _pad_synonyms(list(old) + [new])
        else:
            emb = new[None]
        seen, allowed = self._seen, self._allowed
        self.model.mask_decoder.classifier.set_vocabulary(emb.to(self.device), names + [name])
        self._seen = seen
        self._allowed = None if allowed is None else allowed + [len(names)]
        return len(names)

    def _require_vocabulary(self) -> None:
        if self.num_classes <= 0:
            raise RuntimeError('no vocabulary: call set_vocabulary(names), set_vocabulary_file(path) '
                               'or set_vocabulary_spec("coco") before predicting')

    # ------------------------------------------------------------ prompts
    def _prepare_prompts(self, point_coords, point_labels, box, mask_input):
        """Validate prompts in the original frame; return tensors in the input frame."""
        h, w = self._state['meta']['ori_shape']
        sx, sy = self._state['meta']['scale_factor']
        counts = {}
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = _float_array(point_coords, 'point_coords')
            if coords.ndim == 2:
                coords = coords[None]
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
                raise PromptError(f'point_coords must have shape (P, 2) for one prompt or (N, P, 2) '
                                  f'as x, y in pixels, got {tuple(np.shape(point_coords))}')
            counts['point_coords'] = coords.shape[0]
            if point_labels is None:
                labels = np.ones(coords.shape[:2], dtype=np.int64)
            else:
                labels = _to_numpy(point_labels)
                if labels.ndim == 1 and coords.shape[0] == 1:
                    labels = labels[None]
                if labels.shape != coords.shape[:2]:
                    raise PromptError(f'point_labels must have shape {coords.shape[:2]} to match '
                                      f'point_coords, got {tuple(labels.shape)}')
                if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels).all():
                    raise PromptError('point_labels must be numbers (1 foreground, 0 background, -1 ignore)')
                if not np.isin(labels, (-1, 0, 1)).all():
                    raise PromptError(f'point_labels must be 1 (foreground), 0 (background) or -1 '
                                      f'(padding), got values {sorted(set(labels.ravel().tolist()))[:6]}')
                labels = labels.astype(np.int64)
        elif point_labels is not None:
            raise PromptError('point_labels given without point_coords')
        if box is not None:
            boxes = _float_array(box, 'box')
            if boxes.ndim == 1:
                boxes = boxes[None]
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise PromptError(f'box must have shape (4,) or (N, 4) as x1, y1, x2, y2, '
                                  f'got {tuple(np.shape(box))}')
            counts['box'] = boxes.shape[0]
        if mask_input is not None:
            masks = _float_array(mask_input, 'mask_input')
            size = self.mask_input_size
            if masks.ndim == 2:
                masks = masks[None, None]
            elif masks.ndim == 3:
                masks = masks[:, None]
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != size:
                raise PromptError(f'mask_input must be low-res logits of shape (N, 1, {size[0]}, {size[1]}) '
                                  f'(the low_res_logits of an earlier prediction), got {tuple(np.shape(mask_input))}')
            counts['mask_input'] = masks.shape[0]
        if not counts:
            raise PromptError('no prompt: give point_coords, box and/or mask_input')
        if len(set(counts.values())) > 1:
            raise PromptError(f'prompt counts differ: {counts}; every prompt type needs the same N')
        if min(counts.values()) == 0:
            raise PromptError('zero prompts given')
        inst = InstanceData()
        if coords is not None:
            inst.point_coords = torch.from_numpy(coords)
        if boxes is not None:
            inst.bboxes = torch.from_numpy(boxes)
        check_prompts(inst, (h, w))
        dev = self.device
        scale = np.array([sx, sy], dtype=np.float32)
        t_coords = None if coords is None else torch.from_numpy(coords * scale).to(dev)
        t_labels = None if labels is None else torch.from_numpy(labels).to(dev)
        t_boxes = None if boxes is None else torch.from_numpy(boxes * np.tile(scale, 2)).to(dev)
        t_masks = None if masks is None else torch.from_numpy(masks).to(dev)
        return t_coords, t_labels, t_boxes, t_masks

    # ------------------------------------------------------------ predict
    @torch.no_grad()
    def predict_torch(self,
                      point_coords: Optional[Tensor] = None,
                      point_labels: Optional[Tensor] = None,
                      boxes: Optional[Tensor] = None,
                      mask_input: Optional[Tensor] = None,
                      top_k: int = 5,
                      return_logits: bool = True) -> Dict[str, Tensor]:
        """Prompts already in the model's input frame (torch, on :attr:`device`).

        Shapes: ``point_coords`` (N, P, 2), ``point_labels`` (N, P),
        ``boxes`` (N, 4), ``mask_input`` (N, 1, 4E, 4E). Returns a dict of
        tensors: ``low_res_logits``, ``logits`` (N, H, W at the original size,
        if ``return_logits``), ``masks``, ``stability_scores``,
        ``mask_confidence``, ``mask_boxes`` / ``boxes`` (input frame),
        ``class_probs`` (N, K), ``scores_log`` (N, K + 1, the ensemble's
        log-probabilities), ``labels``, ``scores``, ``topk_labels``,
        ``topk_scores``.
        """
        from segment_anything.utils.amg import calculate_stability_score

        from ..models.ovsam import postprocess_masks
        self._require_image()
        self._require_vocabulary()
        model = self.model
        pe, head = model.pe, model.mask_decoder
        st = self._state
        points = None
        if point_coords is not None:
            if point_labels is None:
                point_labels = torch.ones(point_coords.shape[:2], dtype=torch.long, device=point_coords.device)
            points = (point_coords.float(), point_labels)
        if points is None and boxes is None and mask_input is None:
            raise PromptError('no prompt: give point_coords, boxes and/or mask_input')
        sparse, dense = pe(points, None if boxes is None else boxes.float(),
                           None if mask_input is None else mask_input.float())
        n = sparse.shape[0]
        batch_idx = torch.zeros(n, dtype=torch.long, device=sparse.device)
        mask_logits, head_logits, mask_boxes = head(st['image_embed'], pe.get_dense_pe(), sparse, dense,
                                                    st['fpn_feats'], batch_idx=batch_idx)
        clip_boxes = mask_boxes if boxes is None else boxes.float()
        scores = self._ensemble(mask_logits, head_logits, clip_boxes)
        probs = scores.softmax(-1)[:, :-1]
        label_scores, labels = probs.max(dim=-1)
        k = max(1, min(int(top_k), probs.shape[1]))
        topk_scores, topk_labels = probs.topk(k, dim=-1)

        meta = st['meta']
        full = postprocess_masks(mask_logits, meta['batch_input_shape'], meta['img_shape'],
                                 meta['ori_shape'])[:, 0]
        masks = full > 0
        stability = calculate_stability_score(full, 0.0, 1.0)
        stability = torch.nan_to_num(stability, nan=0.0)
        fg = masks.flatten(1).float()
        conf = (full.sigmoid().flatten(1) * fg).sum(1) / fg.sum(1).clamp(min=1)
        out = dict(low_res_logits=mask_logits, masks=masks, stability_scores=stability, mask_confidence=conf,
                   mask_boxes=mask_boxes, boxes=clip_boxes, class_probs=probs, scores_log=scores,
                   labels=labels, scores=label_scores, topk_labels=topk_labels, topk_scores=topk_scores)
        if return_logits:
            out['logits'] = full
        return out

    def _ensemble(self, mask_logits: Tensor, head_logits: Tensor, clip_boxes: Tensor) -> Tensor:
        """The model's test-time fusion of head and frozen-CLIP scores (as
        :meth:`OVSAM.predict_single`), with this predictor's class split."""
        model = self.model
        if not model.use_clip_ensemble:
            return head_logits
        head = model.mask_decoder
        c5 = self._state['clip_feats'][-1]
        low = F.interpolate(mask_logits, c5.shape[-2:], mode='bilinear', align_corners=False)
        if model.backbone.roi_size > 0:
            clip_logits = model.classify_with_clip(c5, clip_boxes)
        else:
            embed = model.backbone.mask_embed(c5, (low[:, 0] > 0).float())
            clip_logits = head.classifier(embed)
        valid = (low[:, 0] > 0).flatten(1).any(dim=1)
        k = head.num_classes
        seen = torch.zeros(k + 1, dtype=torch.bool, device=head_logits.device)
        seen[-1] = True
        if self._seen:
            seen[self._seen] = True
        allowed = None
        if self._allowed is not None:
            allowed = torch.zeros(k, dtype=torch.bool, device=head_logits.device)
            allowed[self._allowed] = True
        return open_vocab_ensemble(head_logits, clip_logits, seen, model.alpha, model.beta, valid=valid,
                                   allowed=allowed)

    def predict(self,
                point_coords: Optional[ArrayLike] = None,
                point_labels: Optional[ArrayLike] = None,
                box: Optional[ArrayLike] = None,
                mask_input: Optional[ArrayLike] = None,
                multimask_output: bool = False,
                top_k: int = 5,
                return_logits: bool = False) -> OVSAMPrediction:
        """Masks and classes for prompts in ORIGINAL image pixels.

        Args:
            point_coords: (P, 2) points of one prompt or (N, P, 2) for N prompts.
            point_labels: (P,) / (N, P): 1 foreground, 0 background, -1 ignored
                (default all 1).
            box: (4,) or (N, 4) x1, y1, x2, y2; combined with the points of
                the same prompt when both are given.
            mask_input: (N, 1, 4E, 4E) low-res logits from an earlier call
                (``low_res_logits``), fed through SAM's dense prompt path.
            multimask_output: OV-SAM's head has a single mask token; only
                False is accepted (kept for SamPredictor compatibility).
            top_k: how many classes to report per prompt.
            return_logits: also return full-size mask logits.
        Raises:
            RuntimeError: no image or no vocabulary set.
            PromptError: wrong shapes, NaN, boxes or points outside the image.
        """
        if multimask_output:
            raise ValueError('OV-SAM predicts one mask per prompt (its decoder has a single mask token); '
                             'use multimask_output=False')
        self._require_image()
        self._require_vocabulary()
        coords, labels, boxes, masks = self._prepare_prompts(point_coords, point_labels, box, mask_input)
        out = self.predict_torch(coords, labels, boxes, masks, top_k=top_k, return_logits=return_logits)
        sx, sy = self._state['meta']['scale_factor']
        scale = out['boxes'].new_tensor([sx, sy, sx, sy])
        names = self.class_names
        topk_labels = _to_numpy(out['topk_labels'])
        labels_np = _to_numpy(out['labels'])
        return OVSAMPrediction(
            masks=_to_numpy(out['masks']),
            low_res_logits=_to_numpy(out['low_res_logits']).astype(np.float32),
            mask_scores=_to_numpy(out['stability_scores']),
            mask_confidence=_to_numpy(out['mask_confidence']),
            boxes=_to_numpy(_clip_boxes(out['boxes'] / scale, self._state['meta']['ori_shape'])),
            labels=labels_np,
            scores=_to_numpy(out['scores']),
            class_names=[names[i] for i in labels_np.tolist()],
            topk_labels=topk_labels,
            topk_scores=_to_numpy(out['topk_scores']),
            topk_names=[[names[i] for i in row] for row in topk_labels.tolist()],
            class_probs=_to_numpy(out['class_probs']),
            logits=_to_numpy(out['logits']) if return_logits else None)

    # ------------------------------------------------------------ text query
    def find(self, query: str, **generator_kwargs) -> List[Dict[str, Any]]:
        """Instances of ``query`` in the current image (segment-everything mode).

        See :meth:`ovsam.apis.OVSAMAutomaticMaskGenerator.find`; keyword
        arguments configure the generator (``points_per_side`` etc.).
        """
        from .automatic import OVSAMAutomaticMaskGenerator
        self._require_image()
        min_score = generator_kwargs.pop('min_score', 0.0)
        gen = OVSAMAutomaticMaskGenerator(self, **generator_kwargs)
        return gen.find(query, image=None, min_score=min_score)


# ---------------------------------------------------------------- helpers
def _plain(obj):
    """mmengine ConfigDict -> plain dict/list (for json and open_clip)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _clip_boxes(boxes: Tensor, shape) -> Tensor:
    h, w = shape
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                        boxes[:, 3].clamp(0, h)], dim=1)


def _quiet_init_weights(model) -> None:
    """``model.init_weights()`` without mmengine's per-parameter INFO log."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def _float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = _to_numpy(x)
        arr = arr.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise PromptError(f'{name} must be numeric, got {type(x).__name__} ({e})') from e
    if not np.isfinite(arr).all():
        raise PromptError(f'{name} contains NaN or Inf')
    return arr


def _check_names(names: Sequence[str]) -> List[str]:
    names = [str(n) for n in names]
    if not names:
        raise ValueError('empty vocabulary: give at least one class name')
    for n in names:
        split_synonyms(n)  # raises on names without a usable synonym
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f'duplicate class names in the vocabulary: {dup}')
    return names


def _pad_synonyms(rows: Sequence[Tensor]) -> Tensor:
    """Stack per-class (P_i, D) embeddings to (K, P, D), repeating each
    class's first synonym (the recipe of :func:`ovsam.vocabulary.encode_class_names`)."""
    width = max(r.shape[0] for r in rows)
    out = []
    for r in rows:
        if r.shape[0] < width:
            r = torch.cat([r, r[:1].expand(width - r.shape[0], -1)], dim=0)
        out.append(r)
    return torch.stack(out)
