"""Interactive OV-SAM: embed an image once, then prompt it many times.

:class:`OVSAMPredictor` follows segment_anything's ``SamPredictor``: a thin
facade over an :class:`~ovsam.models.OVSAM` that holds the current image's
state. ``set_image`` runs the image side (frozen CLIP, SAM2CLIP adapter, FPN)
once; every ``predict`` call converts the prompts from original pixels to the
model's input frame (:mod:`ovsam.apis.inputs`), and the model's own per-prompt
methods (:meth:`OVSAM.predict_prompts`: decode, recognise, the class split and
ensemble) do the rest. Every prompt gets a class from the current vocabulary,
which can be changed at any time (``set_vocabulary``; text embeddings come from
:class:`ovsam.vocabulary.TextEncoder`).

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
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..models.common import postprocess_masks
from ..models.ovsam import ImageFeatures
from ..models.prompts import PromptError
from ..vocabulary import (TextEncoder, check_class_names, load_text_embeddings, match_class, pad_synonyms,
                          resolve_vocabulary)
from .inputs import ArrayLike, clip_boxes, image_to_rgb, preprocess_image, to_numpy, transform_prompts

__all__ = ['ImageState', 'OVSAMPredictor', 'OVSAMPrediction', 'PromptError', 'default_tiny_config']


def default_tiny_config() -> str:
    """Path of the tiny model config shipped with the package (``ovsam/.mim/configs``)."""
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    path = osp.join(here, '.mim', 'configs', '_base_', 'models', 'ovsam_tiny.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} is missing: the ovsam package was installed without its configs '
                                '(reinstall it with pip install -e . or from a wheel built by setup.py)')
    return path


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


@dataclass(frozen=True)
class ImageState:
    """Everything :meth:`OVSAMPredictor.set_image` computed for one image."""
    image: np.ndarray  #: (H, W, 3) RGB, uint8 or float32 in 0..255
    meta: Dict[str, Any]  #: ori_shape, img_shape, scale_factor, batch_input_shape, pad_shape
    inputs: Tensor  #: (1, 3, S, S) the model's input
    feats: ImageFeatures  #: the model's image-side features


class OVSAMPredictor:
    """Prompted segmentation and open-vocabulary recognition on one image.

    Args:
        model: an :class:`ovsam.models.OVSAM` (put in eval mode here).
        device: where to run (default: the model's device).
        clip_model / clip_model_cfg / clip_checkpoint / allow_random_text /
            random_text_seed / cache_dir: the :class:`~ovsam.vocabulary.TextEncoder`
            that embeds new class names (default: the backbone's CLIP; without
            ``clip_checkpoint`` new names can only be embedded with
            ``allow_random_text=True``, for tests and the tiny model; vocabulary
            *files* always work).
        text_encoder: a ready :class:`~ovsam.vocabulary.TextEncoder` (or a
            ``(model, tokenizer)`` pair) instead.
        fast: swap in the equivalent CPU fast paths of
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
                 text_encoder: Optional[Any] = None,
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
        if not isinstance(text_encoder, TextEncoder):
            text_encoder = TextEncoder(clip_model=clip_model or getattr(model.backbone, 'model_name', 'RN50x16'),
                                       clip_model_cfg=clip_model_cfg, clip_checkpoint=clip_checkpoint,
                                       allow_random=allow_random_text, random_seed=random_text_seed,
                                       cache_dir=cache_dir, text_model=text_encoder)
        self.text_encoder = text_encoder
        self._state: Optional[ImageState] = None

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
        ``init_cfg`` or ``model.checkpoints.clip``). ``vocabulary`` is any
        vocabulary spec (see :meth:`set_vocabulary_spec`).
        """
        import ovsam  # noqa: F401  (registers modules)
        from mmdet.registry import MODELS
        from mmengine.config import Config
        cfg = Config.fromfile(config) if isinstance(config, str) else config
        model = MODELS.build(cfg.model)
        _quiet_init_weights(model)
        if checkpoint is not None:
            from ..checkpoint import load_state_dict_strict, safe_load, unwrap_state_dict
            load_state_dict_strict(model, unwrap_state_dict(safe_load(checkpoint)), repr(checkpoint))
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

    # ------------------------------------------------------------ image state
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
    def image_state(self) -> ImageState:
        """The current image's :class:`ImageState` (give it back to :meth:`restore_image_state`)."""
        if self._state is None:
            raise RuntimeError('no image set: call set_image(image) before predict()')
        return self._state

    def restore_image_state(self, state: Optional[ImageState]) -> None:
        """Make ``state`` (from :attr:`image_state`) the current image again, without recomputing it."""
        if state is not None and not isinstance(state, ImageState):
            raise TypeError(f'expected an ImageState from OVSAMPredictor.image_state, got {type(state).__name__}')
        self._state = state

    @property
    def original_size(self) -> Tuple[int, int]:
        return tuple(self.image_state.meta['ori_shape'])

    @property
    def original_image(self) -> np.ndarray:
        """The current image as (H, W, 3) RGB (uint8, or float32 in 0..255)."""
        return self.image_state.image

    @property
    def scale_factor(self) -> Tuple[float, float]:
        """(sx, sy): original pixels -> input-frame pixels."""
        return tuple(self.image_state.meta['scale_factor'])

    def reset_image(self) -> None:
        self._state = None

    @torch.no_grad()
    def set_image(self, image: Any, image_format: str = 'RGB') -> None:
        """Preprocess ``image`` like the model's test pipeline and cache its features
        (see :func:`ovsam.apis.inputs.preprocess_image`)."""
        rgb = image_to_rgb(image, image_format)
        inputs, meta = preprocess_image(self.model, rgb, self.input_size, self.device)
        self._state = ImageState(image=rgb, meta=meta, inputs=inputs, feats=self.model.extract_feat(inputs))

    def get_image_embedding(self) -> Tensor:
        """The cached SAM-style image embedding (1, C, E, E)."""
        return self.image_state.feats.image_embed

    # ------------------------------------------------------------ vocabulary
    @property
    def class_names(self) -> List[str]:
        clf = self.model.mask_decoder.classifier
        if clf.num_classes <= 0:
            return []
        return list(clf.class_names or [f'class{i}' for i in range(clf.num_classes)])

    @property
    def num_classes(self) -> int:
        return max(self.model.mask_decoder.classifier.num_classes, 0)

    def encode_class_names(self, names: Sequence[str]) -> Tensor:
        """(K, P, D) text embeddings of ``names`` (:meth:`TextEncoder.encode`)."""
        return self.text_encoder.encode(names)

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
        names = [names] if isinstance(names, str) else list(names)
        if embeddings is None:
            embeddings = self.encode_class_names(names)
        self._install(torch.as_tensor(embeddings), names, seen_classes)

    def set_vocabulary_file(self, path: str, class_names: Optional[Any] = None,
                            seen_classes: Optional[Sequence[Union[int, str]]] = None) -> None:
        """Load a text-embedding file: this project's (``tools/gen_text_embeddings.py``)
        or an official bare ``[classes, synonyms, dim]`` tensor with ``class_names``
        (a list or a spec such as ``'lvis'``)."""
        emb, names = load_text_embeddings(path, class_names=class_names)
        self._install(emb, names, seen_classes)

    def set_vocabulary_spec(self, spec: Union[str, Sequence[str]]) -> None:
        """Any vocabulary spec of :func:`ovsam.vocabulary.resolve_vocabulary`: an
        embedding file (an official bare tensor followed by its class names,
        ``[path, 'lvis']``), ``coco`` / ``lvis`` / ``shapes``, a class file or names."""
        vocab = resolve_vocabulary(spec)
        if vocab.embedding_file is not None:
            self.set_vocabulary_file(vocab.embedding_file, class_names=vocab.class_names)
        else:
            self.set_vocabulary(vocab.class_names)

    def _install(self, emb: Tensor, names: List[str], seen_classes) -> None:
        names = check_class_names(names)
        dim = self.model.mask_decoder.embed_dim
        if emb.dim() == 2:
            emb = emb[:, None]
        if emb.dim() != 3 or emb.shape[-1] != dim:
            raise ValueError(f'text embeddings of shape {tuple(emb.shape)} do not fit this model: it needs '
                             f'(classes, synonyms, {dim}); they were made with another CLIP model')
        seen = None
        if seen_classes is not None:
            seen = []
            for c in seen_classes:
                idx = c if isinstance(c, (int, np.integer)) else match_class(str(c), names)
                if idx is None or not 0 <= int(idx) < len(names):
                    raise ValueError(f'seen class {c!r} is not in the vocabulary')
                seen.append(int(idx))
        same_classes = list(names) == self.class_names
        self.model.mask_decoder.classifier.set_vocabulary(emb.to(self.device), names)
        # The model's class split belongs to its vocabulary: kept when the same
        # classes come back (e.g. as a file), replaced for other classes.
        if seen is not None or not same_classes:
            self.model.set_class_split(seen)

    def vocabulary_embeddings(self) -> Tensor:
        """Current (K, P, D) unit-norm text embeddings."""
        cls_embed = self.model.mask_decoder.classifier.cls_embed
        return cls_embed.permute(1, 2, 0)[:-1].detach().cpu()

    def find_class(self, query: str) -> Optional[int]:
        """Index of the class sharing a synonym with ``query``, or None."""
        return match_class(query, self.class_names)

    def add_class(self, name: str) -> int:
        """Index of ``name`` in the vocabulary, appending it (embedded by the
        text tower) when no class shares one of its synonyms. The model's class
        split is kept; a new class counts as unseen."""
        idx = self.find_class(name)
        if idx is not None:
            return idx
        names = self.class_names
        new = self.encode_class_names([name])[0]
        emb = pad_synonyms(list(self.vocabulary_embeddings()) + [new]) if names else new[None]
        model = self.model
        if names:
            model.class_split(len(names))  # resolve a lazily read split before it is extended
        base, novel = model.base_classes, model.novel_classes
        model.mask_decoder.classifier.set_vocabulary(emb.to(self.device), names + [name])
        model.set_class_split(base, None if novel is None else list(novel) + [len(names)])
        return len(names)

    # ------------------------------------------------------------ predict
    def transform_prompts(self, point_coords=None, point_labels=None, box=None,
                          mask_input=None) -> Tuple[Optional[Tensor], ...]:
        """Prompts in ORIGINAL pixels -> checked tensors in the model's input frame
        (``point_coords``, ``point_labels``, ``boxes``, ``mask_input``) for
        :meth:`predict_torch`."""
        return transform_prompts(point_coords, point_labels, box, mask_input, self.image_state.meta,
                                 self.mask_input_size, self.device)

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
        st = self.image_state
        self._require_vocabulary()
        if point_coords is None and boxes is None and mask_input is None:
            raise PromptError('no prompt: give point_coords, boxes and/or mask_input')
        points = None
        if point_coords is not None:
            if point_labels is None:
                point_labels = torch.ones(point_coords.shape[:2], dtype=torch.long, device=point_coords.device)
            points = (point_coords.float(), point_labels)
        model = self.model
        sparse, dense = model.pe(points, None if boxes is None else boxes.float(),
                                 None if mask_input is None else mask_input.float())
        out = model.predict_prompts(st.feats, sparse, dense, prompt_boxes=boxes)
        probs = model.class_probs(out.scores)
        label_scores, labels = probs.max(dim=-1)
        k = max(1, min(int(top_k), probs.shape[1]))
        topk_scores, topk_labels = probs.topk(k, dim=-1)

        meta = st.meta
        full = postprocess_masks(out.mask_logits, meta['batch_input_shape'], meta['img_shape'],
                                 meta['ori_shape'])[:, 0]
        masks = full > 0
        stability = torch.nan_to_num(calculate_stability_score(full, 0.0, 1.0), nan=0.0)
        fg = masks.flatten(1).float()
        conf = (full.sigmoid().flatten(1) * fg).sum(1) / fg.sum(1).clamp(min=1)
        res = dict(low_res_logits=out.mask_logits, masks=masks, stability_scores=stability, mask_confidence=conf,
                   mask_boxes=out.mask_boxes, boxes=out.boxes, class_probs=probs, scores_log=out.scores,
                   labels=labels, scores=label_scores, topk_labels=topk_labels, topk_scores=topk_scores)
        if return_logits:
            res['logits'] = full
        return res

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
        st = self.image_state
        self._require_vocabulary()
        out = self.predict_torch(*self.transform_prompts(point_coords, point_labels, box, mask_input),
                                 top_k=top_k, return_logits=return_logits)
        sx, sy = st.meta['scale_factor']
        names = self.class_names
        topk_labels = to_numpy(out['topk_labels'])
        labels = to_numpy(out['labels'])
        return OVSAMPrediction(
            masks=to_numpy(out['masks']),
            low_res_logits=to_numpy(out['low_res_logits']).astype(np.float32),
            mask_scores=to_numpy(out['stability_scores']),
            mask_confidence=to_numpy(out['mask_confidence']),
            boxes=to_numpy(clip_boxes(out['boxes'] / out['boxes'].new_tensor([sx, sy, sx, sy]),
                                      st.meta['ori_shape'])),
            labels=labels,
            scores=to_numpy(out['scores']),
            class_names=[names[i] for i in labels.tolist()],
            topk_labels=topk_labels,
            topk_scores=to_numpy(out['topk_scores']),
            topk_names=[[names[i] for i in row] for row in topk_labels.tolist()],
            class_probs=to_numpy(out['class_probs']),
            logits=to_numpy(out['logits']) if return_logits else None)

    def _require_vocabulary(self) -> None:
        if self.num_classes <= 0:
            raise RuntimeError('no vocabulary: call set_vocabulary(names), set_vocabulary_file(path) '
                               'or set_vocabulary_spec("coco") before predicting')


# ---------------------------------------------------------------- helpers
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
