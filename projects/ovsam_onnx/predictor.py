"""OV-SAM on onnxruntime: the interface of :class:`ovsam.apis.OVSAMPredictor`
with numpy, onnxruntime and PIL only (no torch, mmcv, mmdet or mmengine).

Example::

    from ovsam_onnx import OVSAMOnnxPredictor
    p = OVSAMOnnxPredictor('work_dirs/ovsam_onnx')   # a folder of tools/deployment/export_onnx.py --out-dir
    p.set_image(rgb_array)                           # numpy or PIL, any size
    out = p.predict(box=[10, 20, 200, 240])
    out.masks[0], out.class_names[0], out.scores[0]
    out2 = p.predict(point_coords=[[50, 60]], mask_input=out.low_res_logits)  # refine
    p.set_vocabulary(['cat', 'dog'])                 # a subset of the exported classes

``set_image`` converts and resizes the image as the PyTorch predictor does
(:mod:`ovsam_onnx.image`) and runs the image encoder once; every ``predict``
checks the prompts (:mod:`ovsam_onnx.prompts`), moves them to the input frame,
runs the prompt decoder and brings the masks back to the original size
(:mod:`ovsam_onnx.masks`). The current image and vocabulary are immutable
objects replaced by one assignment: one predictor may serve several threads
(onnxruntime sessions are thread-safe), each call answering for the image and
vocabulary current when it started.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import layout
from .image import image_to_rgb, resize_longest_side
from .masks import postprocess
from .prompts import PromptError, check_prompts
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class OnnxImageState:
    """What :meth:`OVSAMOnnxPredictor.set_image` computed for one image."""
    meta: Dict[str, Any]  #: ori_shape, img_shape, scale_factor (sx, sy), input_size
    feats: Dict[str, np.ndarray] = field(repr=False)  #: the image encoder's outputs by name


@dataclass
class OnnxPrediction:
    """Result of :meth:`OVSAMOnnxPredictor.predict` for N prompts (the fields of
    ``ovsam.apis.OVSAMPrediction``)."""
    masks: np.ndarray  #: (N, H, W) bool at the original image size
    low_res_logits: np.ndarray  #: (N, 1, 4E, 4E), for ``mask_input``
    mask_scores: np.ndarray  #: (N,) stability scores
    mask_confidence: np.ndarray  #: (N,) mean foreground probability inside each mask
    boxes: np.ndarray  #: (N, 4) prompt box or mask box, original pixels
    labels: np.ndarray  #: (N,) top-1 class index
    scores: np.ndarray  #: (N,) its probability
    class_names: List[str]
    topk_labels: np.ndarray
    topk_scores: np.ndarray
    topk_names: List[List[str]]
    class_probs: np.ndarray  #: (N, K), background removed
    logits: Optional[np.ndarray] = None  #: (N, H, W) with ``return_logits=True``

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def load_manifest(model_dir: str) -> Dict[str, Any]:
    """The checked ``manifest.json`` of an exported folder."""
    if not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(f'model_dir must be the folder written by tools/deployment/export_onnx.py --out-dir, got '
                        f'{type(model_dir).__name__}')
    model_dir = os.fspath(model_dir)
    path = osp.join(model_dir, layout.MANIFEST)
    if not osp.isdir(model_dir):
        raise FileNotFoundError(f'{model_dir!r} is not a folder: give the folder written by '
                                'tools/deployment/export_onnx.py --out-dir')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{model_dir!r} has no {layout.MANIFEST}: it is not an exported OV-SAM model '
                                '(export one with tools/deployment/export_onnx.py --out-dir DIR)')
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not valid JSON ({e}): re-export the model') from None
    if not isinstance(manifest, dict) or manifest.get('format') != layout.FORMAT:
        raise ValueError(f'{path} is not an {layout.FORMAT} manifest: re-export the model')
    if manifest.get('format_version') != layout.FORMAT_VERSION:
        raise ValueError(f'{path} has format version {manifest.get("format_version")!r}; this runtime reads '
                         f'version {layout.FORMAT_VERSION}: re-export the model with this version of ovsam')
    for key in ('image_encoder', 'prompt_decoder', 'vocabulary'):
        name = manifest.get(key)
        if not isinstance(name, str) or not osp.isfile(osp.join(model_dir, name)):
            raise FileNotFoundError(f'{model_dir!r}: the {key} file {name!r} named in {layout.MANIFEST} is missing '
                                    '(an incomplete copy?): copy the whole folder, or re-export it')
    return manifest


class OVSAMOnnxPredictor:
    """Prompted segmentation and open-vocabulary recognition with onnxruntime.

    Args:
        model_dir: a folder written by ``tools/deployment/export_onnx.py --out-dir``.
        providers: onnxruntime execution providers (default: CPU).
        num_threads: intra-op threads of both sessions (default: onnxruntime's).
        session_options: an ``onnxruntime.SessionOptions`` (overrides ``num_threads``).
    """

    def __init__(self, model_dir: str, providers: Optional[Sequence[str]] = None,
                 num_threads: Optional[int] = None, session_options: Any = None) -> None:
        import onnxruntime as ort
        self.model_dir = os.fspath(model_dir) if isinstance(model_dir, os.PathLike) else model_dir
        self.manifest = load_manifest(self.model_dir)
        if session_options is None:
            session_options = ort.SessionOptions()
            if num_threads is not None:
                if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
                    raise ValueError(f'num_threads must be an integer >= 0 (0: onnxruntime decides), got '
                                     f'{num_threads!r}')
                session_options.intra_op_num_threads = num_threads
        providers = list(providers or ['CPUExecutionProvider'])
        m = self.manifest

        def session(key, inputs, outputs):
            sess = ort.InferenceSession(osp.join(self.model_dir, m[key]), sess_options=session_options,
                                        providers=providers)
            got = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
            if got != (inputs, outputs):
                raise ValueError(f'{m[key]} takes {got[0]} and returns {got[1]}, not the layout this runtime '
                                 f'expects ({inputs} -> {outputs}): re-export the folder with this version')
            return sess

        self.image_session = session('image_encoder', layout.IMAGE_INPUTS, layout.FEATURE_NAMES)
        self.prompt_session = session('prompt_decoder',
                                      layout.FEATURE_NAMES + layout.PROMPT_NAMES + layout.VOCABULARY_NAMES,
                                      layout.PROMPT_OUTPUTS)
        self.exported_vocabulary = self._load_vocabulary()
        self._vocab = self.exported_vocabulary
        self._state: Optional[OnnxImageState] = None

    def _load_vocabulary(self) -> Vocabulary:
        m = self.manifest
        path = osp.join(self.model_dir, m['vocabulary'])
        try:
            emb = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f'{path} is not a plain .npy array ({e}): re-export the model') from None
        names = tuple(m.get('class_names') or ())
        k = len(names)
        if emb.ndim != 3 or emb.shape[0] != k or emb.dtype != np.float32:
            raise ValueError(f'{path} holds {emb.dtype} {emb.shape}, not (K={k}, synonyms, dim) float32 for the '
                             f'{k} class names of the manifest: re-export the model')
        seen = np.zeros(k, bool)
        seen[list(m.get('seen_classes') or [])] = True
        allowed = np.ones(k, bool)
        if m.get('allowed_classes') is not None:
            allowed[:] = False
            allowed[list(m['allowed_classes'])] = True
        return Vocabulary(names, emb, seen, allowed)

    # ------------------------------------------------------------ properties
    @property
    def input_size(self) -> int:
        return int(self.manifest['input_size'])

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        return tuple(int(s) for s in self.manifest['mask_input_size'])

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocab

    @property
    def class_names(self) -> List[str]:
        return list(self._vocab.class_names)

    @property
    def num_classes(self) -> int:
        return self._vocab.num_classes

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def image_state(self) -> OnnxImageState:
        state = self._state
        if state is None:
            raise RuntimeError('no image set: call set_image(image) before predict()')
        return state

    @property
    def original_size(self) -> Tuple[int, int]:
        return tuple(self.image_state.meta['ori_shape'])

    def get_image_embedding(self) -> np.ndarray:
        """The cached SAM-style image embedding (1, C, E, E)."""
        return self.image_state.feats['image_embed']

    # ------------------------------------------------------------ image
    def compute_image_state(self, image: Any, image_format: str = 'RGB') -> OnnxImageState:
        """Run the image encoder on ``image`` without making it current."""
        rgb = image_to_rgb(image, image_format)
        resized, meta = resize_longest_side(rgb, self.input_size)
        outs = self.image_session.run(layout.FEATURE_NAMES, {'image': resized})
        return OnnxImageState(meta=meta, feats=dict(zip(layout.FEATURE_NAMES, outs)))

    def set_image(self, image: Any, image_format: str = 'RGB') -> None:
        """Make ``image`` (numpy / PIL; RGB, BGR, gray, RGBA; uint8, 16-bit or
        floats in [0, 1]) the current image. If it raises, the old one stays."""
        self._state = self.compute_image_state(image, image_format)

    def reset_image(self) -> None:
        self._state = None

    # ------------------------------------------------------------ vocabulary
    def set_vocabulary(self, names: Optional[Union[str, Sequence[str]]] = None,
                       embeddings: Optional[np.ndarray] = None,
                       seen_classes: Optional[Sequence[Union[int, str]]] = None) -> None:
        """Recognise ``names`` from now on.

        Without ``embeddings`` the names are looked up (by any synonym) in the
        exported vocabulary: this runtime has no text tower. ``embeddings``
        (K, P, D) or (K, D) gives text embeddings computed elsewhere.
        ``seen_classes`` (indices or names): classes the head was trained on;
        by default all count as unseen, except that the exported split comes
        back with the whole exported vocabulary. ``names=None`` restores the
        exported vocabulary. On any error the previous vocabulary stays.
        """
        if names is None:
            if embeddings is not None:
                raise ValueError('embeddings given without names: give one class name per embedding row')
            self._vocab = self.exported_vocabulary if seen_classes is None else \
                self.exported_vocabulary.select(self.exported_vocabulary.class_names, seen_classes)
            return
        if embeddings is None:
            self._vocab = self.exported_vocabulary.select(names, seen_classes)
            return
        vocab = Vocabulary.from_embeddings(names, embeddings, seen_classes)
        dim = self.exported_vocabulary.embeddings.shape[-1]
        if vocab.embeddings.shape[-1] != dim:
            raise ValueError(f'embeddings have width {vocab.embeddings.shape[-1]} but this model needs {dim}: they '
                             'were made with another CLIP model')
        self._vocab = vocab

    # ------------------------------------------------------------ predict
    def predict(self,
                point_coords: Optional[Any] = None,
                point_labels: Optional[Any] = None,
                box: Optional[Any] = None,
                mask_input: Optional[Any] = None,
                multimask_output: bool = False,
                top_k: Optional[int] = 5,
                return_logits: bool = False,
                image_state: Optional[OnnxImageState] = None,
                vocabulary: Optional[Vocabulary] = None) -> OnnxPrediction:
        """Masks and classes for prompts in ORIGINAL image pixels (the arguments
        of ``OVSAMPredictor.predict``; :mod:`ovsam_onnx.prompts` for the rules).
        ``image_state`` / ``vocabulary`` pin the image (:meth:`compute_image_state`)
        and the vocabulary (:attr:`vocabulary`); default: the current ones.

        Raises:
            RuntimeError: no image set.
            PromptError: bad prompts (shapes, NaN, outside the image, ...).
            ValueError: a bad ``top_k``, ``multimask_output`` or ``return_logits``.
        """
        if _flag(multimask_output, 'multimask_output'):
            raise ValueError('OV-SAM predicts one mask per prompt (its decoder has a single mask token); '
                             'use multimask_output=False')
        return_logits = _flag(return_logits, 'return_logits')
        st = self.image_state if image_state is None else image_state
        vocab = self._vocab if vocabulary is None else vocabulary
        if not isinstance(st, OnnxImageState) or st.meta.get('input_size') != self.input_size:
            raise TypeError(f'image_state must be an OnnxImageState of this predictor (compute_image_state), got '
                            f'{type(st).__name__}')
        dim = self.exported_vocabulary.embeddings.shape[-1]
        if not isinstance(vocab, Vocabulary) or vocab.embeddings.shape[-1] != dim:
            raise TypeError(f'vocabulary must be a Vocabulary of this predictor (its .vocabulary), got '
                            f'{type(vocab).__name__}')
        k = _top_k(top_k, vocab.num_classes)
        p = check_prompts(point_coords, point_labels, box, mask_input, st.meta['ori_shape'], self.mask_input_size)
        sx, sy = st.meta['scale_factor']
        scale = np.array([sx, sy], np.float32)
        pc, pl = layout.encode_prompts(None if p.point_coords is None else p.point_coords * scale,
                                       p.point_labels,
                                       None if p.boxes is None else p.boxes * np.tile(scale, 2))
        n = pc.shape[0]
        feeds = dict(st.feats, point_coords=pc, point_labels=pl,
                     mask_input=(np.zeros((n, 1) + self.mask_input_size, np.float32)
                                 if p.mask_input is None else p.mask_input),
                     has_mask_input=np.array([0.0 if p.mask_input is None else 1.0], np.float32),
                     **vocab.feeds)
        low_res, scores_log, boxes = self.prompt_session.run(layout.PROMPT_OUTPUTS, feeds)
        probs = _softmax(scores_log)[:, :-1]
        labels = probs.argmax(1)
        topk = np.argsort(-probs, axis=1, kind='stable')[:, :k]
        post = postprocess(low_res, self.input_size, st.meta['img_shape'], st.meta['ori_shape'], return_logits)
        h, w = st.meta['ori_shape']
        boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
        names = vocab.class_names
        return OnnxPrediction(
            masks=post['masks'], low_res_logits=low_res.astype(np.float32), mask_scores=post['stability'],
            mask_confidence=post['confidence'], boxes=boxes, labels=labels,
            scores=np.take_along_axis(probs, labels[:, None], 1)[:, 0], class_names=[names[i] for i in labels],
            topk_labels=topk, topk_scores=np.take_along_axis(probs, topk, 1),
            topk_names=[[names[i] for i in row] for row in topk.tolist()], class_probs=probs,
            logits=post.get('logits'))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f'{name} must be True or False, got {type(value).__name__} {value!r}'[:200])


def _top_k(top_k: Any, num_classes: int) -> int:
    if top_k is None:
        return max(1, num_classes)
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f'top_k must be an integer >= 1 (how many classes to report per prompt) or None for all, '
                         f'got {top_k!r}')
    return int(min(top_k, num_classes))


__all__ = ['OVSAMOnnxPredictor', 'OnnxPrediction', 'OnnxImageState', 'PromptError', 'load_manifest']
