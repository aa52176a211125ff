"""``OVSAMInferencer``: OV-SAM with the habits of mmdet's ``DetInferencer``.

Images in (paths, folders, arrays or a list of them), one prompt spec per image
(or one for all), batches, ``out_dir/vis/`` (drawings) and ``out_dir/preds/``
(one JSON per image: COCO RLE masks, labels, scores, boxes), ``return_vis``,
``no_save_pred`` / ``no_save_vis``, a progress bar; built from a shipped config
name (``'ovsam_coco'``), a config file, a saved model folder
(:mod:`ovsam.pretrained`) or a ready predictor.

The maths is the predictor's and the model's: the inferencer converts inputs,
batches the image side (one ``OVSAM.extract_feat`` call per batch, then one
:class:`~ovsam.apis.ImageState` per image), hands each image's prompts to
:meth:`OVSAMPredictor.predict` or to :class:`OVSAMAutomaticMaskGenerator`, and
draws with :func:`ovsam.apis.draw_predictions`.

Prompts, per image:

* ``'everything'`` (default): segment everything, a class for every mask;
* ``dict(boxes=(N, 4))``: N box prompts, x1, y1, x2, y2 in pixels;
* ``dict(points=(N, 2))``: N one-point prompts; ``(N, P, 2)`` with
  ``point_labels`` (N, P) (1 foreground, 0 background): N prompts of P points;
  with ``boxes`` too, point and box of the same row form one prompt;
* ``dict(text=['cat', 'dog,puppy'])``: segment everything and keep the masks
  recognised as one of the queries (queries missing from the vocabulary are
  added to it, as :meth:`OVSAMPredictor.add_class`);
* a list with one of these per input image.

Example::

    from ovsam.apis import OVSAMInferencer
    inferencer = OVSAMInferencer('work_dirs/ovsam_coco_rn50x16')      # a model folder
    inferencer = OVSAMInferencer('ovsam_coco', weights='epoch_12.pth', vocabulary='coco')
    result = inferencer('photos/', out_dir='outputs', no_save_pred=False, batch_size=2)
    result = inferencer(image_array, prompts=dict(boxes=[[10, 20, 200, 240]]), return_vis=True)

Everything and text prompts segment the predictor's current image, so a
predictor handed to the inferencer is left with the last such image as its
current one (``restore_image_state`` sets it back).

As in ``DetInferencer``, predictions are written only with ``no_save_pred=False``
(its default is True) and drawings whenever ``out_dir`` is given
(``no_save_vis=True`` turns them off). Unlike it, ``pred_score_thr`` defaults to
0: every prompt was asked for, so every mask is drawn.
"""
import os
import os.path as osp
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.infer import BaseInferencer

from ..models.prompts import PromptError
from .inputs import check_float, check_int, image_to_rgb, preprocess_image
from .predictor import ImageState, OVSAMPredictor

__all__ = ['OVSAMInferencer']

_PROMPT_KEYS = ('boxes', 'points', 'point_labels', 'text')
_VIS_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


@dataclass
class _Item:
    """One input image on its way through the inferencer."""
    source: Any  #: the path or the array given
    name: str  #: file stem for vis/ and preds/
    vis_name: str
    prompt: Any  #: 'everything' or a checked dict
    img_path: Optional[str] = None
    rgb: Optional[np.ndarray] = None
    inputs: Optional[torch.Tensor] = None
    meta: Optional[Dict[str, Any]] = None


@dataclass
class _Result:
    """One image's predictions (numpy), before they become JSON or a data sample."""
    item: _Item
    mode: str
    masks: np.ndarray  #: (N, H, W) bool
    boxes: np.ndarray  #: (N, 4) x1, y1, x2, y2
    labels: np.ndarray
    scores: np.ndarray
    class_names: List[str]
    mask_scores: np.ndarray  #: stability scores
    topk: List[List[Tuple[str, float]]]
    points: Optional[np.ndarray] = None  #: prompt points to draw, (M, 2)
    point_labels: Optional[np.ndarray] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class OVSAMInferencer(BaseInferencer):
    """Batch inference over images, in the style of mmdet's ``DetInferencer``.

    Args:
        model: a shipped config name (``'ovsam_coco'``, see
            :func:`ovsam.config_path.ovsam_config_path`), a config file, an
            mmengine ``Config``, a model folder written by
            :func:`ovsam.pretrained.save_pretrained`, an :class:`OVSAMPredictor`
            or an OVSAM model.
        weights: checkpoint for a config (``None``: the config's own official
            ``model.checkpoints``, else random weights, with a warning). Not
            used with a model folder, which holds its weights.
        device: where to run (default ``'cpu'``).
        vocabulary: any vocabulary spec (:func:`ovsam.vocabulary.resolve_vocabulary`);
            default: the model folder's, or the config's classifier file.
        show_progress: a progress bar over the batches.
        generator_options: options of :class:`OVSAMAutomaticMaskGenerator`
            (everything and text prompts).
        **predictor_kwargs: options of :class:`OVSAMPredictor` (``clip_checkpoint``
            to embed new class names, ``allow_random_text``, ``fast``, ...).
    """
    preprocess_kwargs: set = {'image_format'}
    forward_kwargs: set = {'top_k'}
    visualize_kwargs: set = {'return_vis', 'draw_pred', 'pred_score_thr', 'img_out_dir', 'no_save_vis'}
    postprocess_kwargs: set = {'print_result', 'pred_out_dir', 'return_datasamples', 'no_save_pred'}

    def __init__(self,
                 model: Any = None,
                 weights: Optional[str] = None,
                 device: Union[str, torch.device] = 'cpu',
                 vocabulary: Any = None,
                 show_progress: bool = True,
                 generator_options: Optional[Dict[str, Any]] = None,
                 **predictor_kwargs) -> None:
        # BaseInferencer.__init__ is not called: it loads weights with mmengine's
        # non-strict loader and builds a test pipeline from the config's
        # dataloader; here the predictor loads strictly and converts the images.
        self.scope = 'mmdet'
        self.predictor, self.cfg = self._init_predictor(model, weights, device, predictor_kwargs)
        if vocabulary is not None:
            self.predictor.set_vocabulary_spec(vocabulary)
        self.model = self.predictor.model
        self.pipeline = self._init_pipeline(self.cfg)
        self.collate_fn = list
        self.visualizer = None  # drawings: ovsam.apis.draw_predictions (mmdet's DetLocalVisualizer)
        self.show_progress = show_progress
        self.generator_options = dict(generator_options or {})
        self.num_visualized_imgs = 0
        self.num_predicted_imgs = 0

    # ------------------------------------------------------------ building
    @staticmethod
    def _init_predictor(model, weights, device, kwargs) -> Tuple[OVSAMPredictor, Any]:
        from mmengine.config import Config
        if isinstance(model, OVSAMPredictor):
            if weights is not None:
                raise ValueError('weights= is for a config; this predictor already holds its weights')
            return model, getattr(model.model, 'cfg', None)
        if isinstance(model, torch.nn.Module):
            return OVSAMPredictor(model, device=device, **kwargs), getattr(model, 'cfg', None)
        if model is None:
            raise ValueError("model is required: a shipped config name ('ovsam_coco'), a config file, a model folder "
                             '(ovsam.pretrained.save_pretrained) or an OVSAMPredictor')
        if isinstance(model, (str, os.PathLike)):
            from ..pretrained import is_pretrained_folder, predictor_from_pretrained
            path = os.fspath(model)
            if is_pretrained_folder(path):
                if weights is not None:
                    raise ValueError(f'{path!r} is a model folder, which holds its weights: leave weights=None')
                pred = predictor_from_pretrained(path, device=device, **kwargs)
                return pred, pred.model.cfg
            if osp.isdir(path):
                from ..pretrained import read_manifest
                read_manifest(path)  # raises, saying what the folder is
            if not osp.isfile(path):
                from ..config_path import ovsam_config_path
                path = ovsam_config_path(path)  # a shipped config's name; unknown names list close matches
            model = Config.fromfile(path)
        if not isinstance(model, Config):
            raise TypeError(f'model must be a config name or file, a Config, a model folder, an OVSAMPredictor or an '
                            f'OVSAM model, got {type(model).__name__}')
        if weights is None and not model.model.get('checkpoints'):
            warnings.warn('weights is None and the config names no official checkpoints: the model has random '
                          'weights and its results mean nothing')
        pred = OVSAMPredictor.from_config(model, weights, device=device, **kwargs)
        pred.model.cfg = model
        return pred, model

    def _init_pipeline(self, cfg) -> Any:
        """Images are read and converted by :meth:`preprocess` (no mmdet pipeline)."""
        return None

    # ------------------------------------------------------------ inputs
    def _inputs_to_list(self, inputs: Any) -> list:
        """A folder (its images, sorted, not recursive, as mmdet), a path, an array,
        or a list of these -> a flat list of paths and arrays."""
        from .annotate import IMAGE_EXTENSIONS
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        out = []
        for x in items:
            if isinstance(x, os.PathLike):
                x = os.fspath(x)
            if isinstance(x, str):
                if osp.isdir(x):
                    names = sorted(n for n in os.listdir(x) if not n.startswith('.')
                                   and osp.splitext(n)[1].lower() in IMAGE_EXTENSIONS and osp.isfile(osp.join(x, n)))
                    if not names:
                        raise ValueError(f'no images in folder {x!r} (extensions {", ".join(IMAGE_EXTENSIONS)})')
                    out += [osp.join(x, n) for n in names]
                elif not osp.isfile(x):
                    raise FileNotFoundError(f'input {x!r}: no such image file or folder')
                else:
                    out.append(x)
            else:
                out.append(x)
        if not out:
            raise ValueError('no inputs: give image paths, a folder, arrays or a list of them')
        return out

    @staticmethod
    def _check_prompt(prompt: Any, where: str) -> Any:
        if prompt is None or (isinstance(prompt, str) and prompt == 'everything'):
            return 'everything'
        if not isinstance(prompt, dict):
            raise PromptError(f"{where}: a prompt is 'everything' or a dict with keys {_PROMPT_KEYS}, got "
                              f'{type(prompt).__name__} {prompt!r}'[:200])
        unknown = set(prompt) - set(_PROMPT_KEYS)
        if unknown or not prompt:
            raise PromptError(f'{where}: prompt keys must be among {_PROMPT_KEYS}, got {sorted(map(str, prompt))}')
        if 'text' in prompt:
            if len(prompt) > 1:
                raise PromptError(f'{where}: text prompts segment everything; do not mix them with boxes or points')
            text = prompt['text']
            text = [text] if isinstance(text, str) else text
            if not isinstance(text, (list, tuple)) or not text or not all(
                    isinstance(q, str) and q.strip(' ,') for q in text):
                raise PromptError(f'{where}: text must be a class name or a list of class names, got {text!r}'[:200])
            return dict(text=[q.strip() for q in text])
        if 'point_labels' in prompt and 'points' not in prompt:
            raise PromptError(f'{where}: point_labels without points')
        return dict(prompt)

    def _prompts_per_image(self, prompts: Any, texts: Any, n: int) -> List[Any]:
        if texts is not None:
            if prompts not in (None, 'everything'):
                raise ValueError('give prompts or texts, not both (texts=Q is prompts=dict(text=Q) for every image)')
            prompts = dict(text=texts)
        if isinstance(prompts, (list, tuple)):
            if len(prompts) != n:
                raise ValueError(f'prompts is a list of {len(prompts)} prompt specs but there are {n} input images: '
                                 'give one per image (in input order; a folder\'s images are sorted by name), or one '
                                 'spec for all')
            return [self._check_prompt(p, f'prompts[{i}]') for i, p in enumerate(prompts)]
        one = self._check_prompt(prompts, 'prompts')
        return [one] * n

    def _items(self, sources: list, prompts: List[Any], check_names: bool) -> List[_Item]:
        items, seen = [], {}
        for src, prompt in zip(sources, prompts):
            if isinstance(src, str):
                base = osp.basename(src)
                stem, ext = osp.splitext(base)
                vis = base if ext.lower() in _VIS_EXTENSIONS else stem + '.png'
                item = _Item(src, stem, vis, prompt, img_path=src)
                if check_names and stem in seen:
                    raise ValueError(f'inputs {seen[stem]!r} and {src!r} would both write {stem}.* into out_dir: '
                                     'rename one, or run them separately')
                seen[stem] = src
            else:
                name = f'{self.num_predicted_imgs + len(items):08d}'
                item = _Item(src, name, name + '.jpg', prompt)
            items.append(item)
        return items

    def preprocess(self, inputs: List[_Item], batch_size: int = 1, image_format: str = 'RGB') -> Iterator:
        """Read and convert the images of each batch to the model's input frame.

        Yields ``(items, items)`` per batch (the original inputs and the data,
        as DetInferencer yields them): each item with ``rgb``, ``inputs``
        (1, 3, S, S) and ``meta``.
        """
        from .annotate import ImageReadError, read_image
        size = self.predictor.input_size
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            for item in chunk:
                if item.img_path is not None:
                    try:
                        rgb = read_image(item.img_path)
                    except ImageReadError as e:
                        raise ValueError(f'cannot read image {item.img_path!r}: {e}') from None
                else:
                    rgb = image_to_rgb(item.source, image_format, name=f'input image {item.name}')
                rgb.flags.writeable = False
                item.rgb = rgb
                item.inputs, item.meta = preprocess_image(self.model, rgb, size, self.predictor.device)
            yield chunk, chunk

    # ------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, inputs: List[_Item], top_k: int = 5) -> List[_Result]:
        """One image-side pass for the batch, then each image's prompts."""
        feats = self.model.extract_feat(torch.cat([item.inputs for item in inputs]))
        results = []
        for i, item in enumerate(inputs):
            # each image's own copy: a view would keep the whole batch alive with the predictor's last image
            take = (lambda t: t[i:i + 1].clone()) if len(inputs) > 1 else (lambda t: t)  # noqa: E731
            one = type(feats)(*(tuple(take(f) for f in v) if isinstance(v, (tuple, list)) else take(v)
                                for v in feats))
            state = ImageState(image=item.rgb, meta=types.MappingProxyType(item.meta), inputs=item.inputs, feats=one)
            try:
                results.append(self._predict_one(item, state, top_k))
            except PromptError as e:
                raise PromptError(f'{item.img_path or "input " + item.name}: {e}') from None
            item.inputs = None  # the batch's features are released with it
        return results

    def _generator(self, top_k: int):
        from .automatic import OVSAMAutomaticMaskGenerator
        opts = dict(self.generator_options, output_mode='binary_mask', top_k=top_k)
        return OVSAMAutomaticMaskGenerator(self.predictor, **opts)

    def _predict_one(self, item: _Item, state: ImageState, top_k: int) -> _Result:
        pred, prompt = self.predictor, item.prompt
        vocab = pred.vocabulary
        h, w = state.meta['ori_shape']
        if prompt == 'everything' or 'text' in prompt:
            pred.restore_image_state(state)  # the generator segments the predictor's current image
            recs = self._generator(top_k).generate()
            extra = {}
            if prompt != 'everything':
                wanted = {vocab.find(q): q for q in prompt['text']}
                recs = sorted((r for r in recs if r['label'] in wanted), key=lambda r: -r['score'])
                extra = dict(queries=prompt['text'], query=[wanted[r['label']] for r in recs])
            n = len(recs)
            return _Result(
                item, 'everything' if prompt == 'everything' else 'text',
                masks=np.stack([r['segmentation'] for r in recs]) if n else np.zeros((0, h, w), bool),
                boxes=np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (r['bbox'] for r in recs)],
                               np.float32).reshape(n, 4),
                labels=np.array([r['label'] for r in recs], np.int64), scores=np.array([r['score'] for r in recs],
                                                                                      np.float32),
                class_names=[r['class_name'] for r in recs],
                mask_scores=np.array([r['stability_score'] for r in recs], np.float32),
                topk=[[(c, float(s)) for c, s in r['topk']] for r in recs],
                points=np.array([r['point_coords'][0] for r in recs], np.float32).reshape(n, 2), extra=extra)
        boxes = prompt.get('boxes')
        points, labels = prompt.get('points'), prompt.get('point_labels')
        if points is not None:
            points = np.asarray(points, dtype=np.float32)
            if points.ndim == 2:  # (N, 2): N one-point prompts
                points = points[:, None]
                if labels is not None:
                    labels = np.asarray(labels).reshape(-1, 1)
        n = len(boxes) if boxes is not None else len(points)
        if n == 0:
            e = np.zeros(0, np.float32)
            return _Result(item, 'prompts', np.zeros((0, h, w), bool), np.zeros((0, 4), np.float32),
                           np.zeros(0, np.int64), e, [], e, [])
        out = pred.predict(point_coords=points, point_labels=labels, box=boxes, top_k=top_k, image_state=state,
                           vocabulary=vocab)
        flat_pts = flat_lab = None
        if points is not None:
            flat_pts = points.reshape(-1, 2)
            flat_lab = np.ones(len(flat_pts)) if labels is None else np.asarray(labels).reshape(-1)
        return _Result(item, 'prompts', out.masks, out.boxes.astype(np.float32), out.labels, out.scores,
                       out.class_names, out.mask_scores,
                       [[(c, float(s)) for c, s in zip(names, sc)]
                        for names, sc in zip(out.topk_names, out.topk_scores)],
                       points=flat_pts, point_labels=flat_lab)

    # ------------------------------------------------------------ outputs
    def visualize(self, inputs: List[_Item], preds: List[_Result], return_vis: bool = False, draw_pred: bool = True,
                  pred_score_thr: float = 0.0, no_save_vis: bool = False, img_out_dir: str = '',
                  **kwargs) -> Optional[List[np.ndarray]]:
        """Draw masks, boxes, labels and prompt points (RGB arrays); written to
        ``img_out_dir/vis/`` unless ``no_save_vis``. None when nothing is asked."""
        import cv2

        from ..fileio import atomic_save_bytes
        from .visualization import draw_predictions
        if no_save_vis:
            img_out_dir = ''
        if not img_out_dir and not return_vis:
            return None
        drawn = []
        for res in preds:
            keep = res.scores >= pred_score_thr
            if draw_pred and keep.any():
                img = draw_predictions(res.item.rgb, res.masks[keep], res.boxes[keep], res.labels[keep],
                                       res.scores[keep], self.predictor.class_names,
                                       points=res.points if res.mode == 'prompts' else None,
                                       point_labels=res.point_labels if res.mode == 'prompts' else None)
            else:
                img = draw_predictions(res.item.rgb)
            if img_out_dir:
                path = osp.join(img_out_dir, 'vis', res.item.vis_name)
                ok, buf = cv2.imencode(osp.splitext(path)[1], np.ascontiguousarray(img[:, :, ::-1]))
                if not ok:
                    raise OSError(f'OpenCV cannot encode {path}')
                atomic_save_bytes(path, buf.tobytes())
            self.num_visualized_imgs += 1
            drawn.append(img)
        return drawn if return_vis else None

    @staticmethod
    def pred2dict(res: _Result) -> Dict[str, Any]:
        """One image's predictions as JSON-able data (DetInferencer's keys plus OV-SAM's):
        ``labels``, ``scores``, ``bboxes`` (x1, y1, x2, y2), ``masks`` (COCO
        compressed RLE, ``counts`` as text), ``class_names``, ``mask_scores``
        (stability), ``topk`` ([name, probability] pairs), ``prompt``, ``img_path``,
        ``width``, ``height``."""
        from pycocotools import mask as mask_utils
        rles = []
        if len(res.masks):
            rles = mask_utils.encode(np.asfortranarray(res.masks.transpose(1, 2, 0).astype(np.uint8)))
            for r in rles:
                r['counts'] = r['counts'].decode('ascii')
        h, w = res.item.rgb.shape[:2]
        out = dict(labels=res.labels.tolist(), scores=[float(s) for s in res.scores],
                   bboxes=[[float(v) for v in b] for b in res.boxes], masks=list(rles),
                   class_names=list(res.class_names), mask_scores=[float(s) for s in res.mask_scores],
                   topk=[[[c, s] for c, s in row] for row in res.topk], prompt=res.mode, width=int(w), height=int(h))
        if res.item.img_path is not None:
            out['img_path'] = res.item.img_path
        out.update(res.extra)
        return out

    @staticmethod
    def _datasample(res: _Result):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        h, w = res.item.rgb.shape[:2]
        sample = DetDataSample(metainfo=dict(img_path=res.item.img_path, ori_shape=(h, w), img_shape=(h, w)))
        inst = InstanceData()
        inst.masks = torch.from_numpy(res.masks)
        inst.bboxes = torch.from_numpy(res.boxes)
        inst.labels = torch.from_numpy(res.labels)
        inst.scores = torch.from_numpy(res.scores)
        inst.label_names = list(res.class_names)
        sample.pred_instances = inst
        return sample

    def postprocess(self, preds: List[_Result], visualization: Optional[List[np.ndarray]] = None,
                    return_datasamples: bool = False, print_result: bool = False, no_save_pred: bool = True,
                    pred_out_dir: str = '', **kwargs) -> Dict[str, Any]:
        """``dict(predictions=[...], visualization=...)``; each image's JSON goes to
        ``pred_out_dir/preds/NAME.json`` unless ``no_save_pred`` (the default, as
        DetInferencer)."""
        from ..fileio import atomic_save_json
        if no_save_pred:
            pred_out_dir = ''
        results = []
        for res in preds:
            data = self.pred2dict(res) if (pred_out_dir or not return_datasamples) else None
            if pred_out_dir:
                atomic_save_json(osp.join(pred_out_dir, 'preds', res.item.name + '.json'), data)
            self.num_predicted_imgs += 1
            results.append(self._datasample(res) if return_datasamples else data)
        out = dict(predictions=results, visualization=visualization)
        if print_result:
            print(out)
        return out

    # ------------------------------------------------------------ call
    def __call__(self,
                 inputs: Any,
                 prompts: Any = 'everything',
                 batch_size: int = 1,
                 texts: Optional[Union[str, Sequence[str]]] = None,
                 return_vis: bool = False,
                 no_save_vis: bool = False,
                 draw_pred: bool = True,
                 pred_score_thr: float = 0.0,
                 return_datasamples: bool = False,
                 print_result: bool = False,
                 no_save_pred: bool = True,
                 out_dir: str = '',
                 **kwargs) -> Dict[str, list]:
        """Predict every input image.

        Args:
            inputs: an image path, a folder (its images, sorted), an array (RGB
                unless ``image_format='BGR'``), or a list of these.
            prompts: one prompt spec for all images or a list with one per image
                (see the module docstring).
            batch_size: images whose image side runs in one model call.
            texts: text queries for every image (``prompts=dict(text=texts)``).
            return_vis: also return the drawings (RGB arrays).
            no_save_vis / no_save_pred: do not write ``out_dir/vis`` /
                ``out_dir/preds`` (``no_save_pred`` is True by default, as in
                DetInferencer).
            draw_pred / pred_score_thr: draw the predictions whose class
                probability is at least this.
            return_datasamples: predictions as mmdet ``DetDataSample`` objects.
            print_result: print the result dict.
            out_dir: output folder ('' writes nothing).
            **kwargs: ``top_k`` (classes listed per mask, default 5) and
                ``image_format`` (``'RGB'`` or ``'BGR'`` arrays).
        Returns:
            ``dict(predictions=[one per image], visualization=[drawings] or [])``.
        """
        pre_kw, fwd_kw, vis_kw, post_kw = self._dispatch_kwargs(**kwargs)
        batch_size = check_int(batch_size, 'batch_size', 1)
        pred_score_thr = check_float(pred_score_thr, 'pred_score_thr')
        if 'top_k' in fwd_kw:
            fwd_kw['top_k'] = check_int(fwd_kw['top_k'], 'top_k', 1)
        out_dir = os.fspath(out_dir or '')
        sources = self._inputs_to_list(inputs)
        prompts = self._prompts_per_image(prompts, texts, len(sources))
        writes = bool(out_dir) and not (no_save_vis and no_save_pred)
        items = self._items(sources, prompts, check_names=writes)
        for p in prompts:  # text queries join the vocabulary before anything runs
            for q in (p['text'] if isinstance(p, dict) and 'text' in p else ()):
                self.predictor.add_class(q)
        if self.predictor.vocabulary is None:
            raise RuntimeError('no vocabulary: build the inferencer with vocabulary= (e.g. "coco", a class file or '
                               'names) or give text queries')
        chunks = self.preprocess(items, batch_size=batch_size, **pre_kw)
        if self.show_progress:
            from rich.progress import track
            chunks = track(chunks, description='Inference', total=(len(items) + batch_size - 1) // batch_size)
        result: Dict[str, list] = dict(predictions=[], visualization=[])
        for ori, data in chunks:
            preds = self.forward(data, **fwd_kw)
            vis = self.visualize(ori, preds, return_vis=return_vis, draw_pred=draw_pred, pred_score_thr=pred_score_thr,
                                 no_save_vis=no_save_vis, img_out_dir=out_dir, **vis_kw)
            res = self.postprocess(preds, vis, return_datasamples=return_datasamples, print_result=print_result,
                                   no_save_pred=no_save_pred, pred_out_dir=out_dir, **post_kw)
            for item in ori:
                item.rgb = None  # keep memory flat over long runs
            result['predictions'].extend(res['predictions'])
            if res['visualization'] is not None:
                result['visualization'].extend(res['visualization'])
        return result
