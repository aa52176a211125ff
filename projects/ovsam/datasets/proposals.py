"""Detector results as prompts (the detector protocol of OV-SAM).

A detector's boxes, scores and labels become OV-SAM's prompts: OV-SAM
segments each box (and may relabel it) and the standard COCO / LVIS mask AP
is computed on the result. Two result formats are read:

* COCO results JSON: a list of ``{image_id, category_id, bbox: [x, y, w, h],
  score}`` (what Detic, detectron2 and mmdet's ``CocoMetric`` write);
* mmdet result pickles from ``tools/test.py --out``: a list of dicts with
  ``img_id`` / ``img_path`` and ``pred_instances`` holding ``bboxes`` (xyxy),
  ``scores`` and ``labels`` (label indices of the detector's dataset).

Pipeline (test)::

    LoadImageFromFile -> Resize -> LoadProposalPrompts -> PackDetInputsWithProposals

:class:`LoadProposalPrompts` maps the boxes with ``results['scale_factor']``
as mmdet's ``Resize`` maps ``gt_bboxes``, so it must come after ``Resize``.
:class:`PackDetInputsWithProposals` puts them in ``data_sample.pred_instances``
(``bboxes``, ``scores``, ``labels``), where ``OVSAM(prompt_source='pred')``
reads its prompts.

Files are read once per process (cached by path and modification time), never
per image. Problems are not silently turned into zeros: unreadable or empty
files and files that match no image raise; unknown category ids, detections
on images outside the annotation file and boxes that are degenerate after
clipping to the image are dropped and reported in one warning with counts.
"""
import io
import json
import logging
import os
import os.path as osp
import pickle
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PackDetInputs
from mmengine.logging import print_log
from mmengine.structures import InstanceData

from ..registry import TRANSFORMS
from .ann_index import load_annotation_index

__all__ = ['DetectionTable', 'read_detections', 'LoadProposalPrompts', 'PackDetInputsWithProposals',
           'ProposalFileError']


class ProposalFileError(ValueError):
    """A detector results file that cannot be used as prompts."""


class DetectionTable:
    """All detections of one results file as flat arrays.

    Attributes:
        image_keys: (N,) image id of each detection (int where possible).
        boxes: (N, 4) float64 x1, y1, x2, y2 in original image pixels.
        scores: (N,) float64.
        categories: (N,) int64: category ids (COCO JSON) or label indices
            of the detector's classes (mmdet pickles).
        kind: ``'coco_json'`` or ``'mmdet_pkl'``.
        num_images: number of images the file lists (pickles list images
            without detections too; JSON only images with detections).
    """

    def __init__(self, path, image_keys, boxes, scores, categories, kind, num_images) -> None:
        self.path = path
        self.image_keys = image_keys
        self.boxes = boxes
        self.scores = scores
        self.categories = categories
        self.kind = kind
        self.num_images = num_images

    def __len__(self) -> int:
        return len(self.scores)


_TABLES: Dict[Tuple[str, int, int], DetectionTable] = {}
_TABLES_SIZE = 4


def _image_key(value: Any) -> Any:
    """Image ids as Python ints where they are integers (JSON ints, numpy ints, tensors)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (np.integer, int)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return value


def _whole_number(value: Any, what: str) -> int:
    """A whole number from a JSON / pickle value: ints, integral floats
    (``3.0``); never booleans, fractions or strings."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise ProposalFileError(f'{what} is the boolean {value!r}, not a number')
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ProposalFileError(f'{what} is {value!r} ({type(value).__name__}), not a whole number')


def _real(value: Any, what: str) -> float:
    """A number (NaN / Inf allowed: counted and dropped later); never booleans or strings."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ProposalFileError(f'{what} is {value!r} ({type(value).__name__}), not a number')
    return float(value)


def _key_array(keys: List[Any]) -> np.ndarray:
    """Image keys as int64 (fast to sort and group) when all are ints, else objects."""
    if all(type(k) is int for k in keys):
        return np.asarray(keys, dtype=np.int64)
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return arr


# ------------------------------------------------------------------ pickles
class _ResultsUnpickler(pickle.Unpickler):
    """Unpickler for mmdet result pickles: containers, numpy arrays / scalars
    and CPU tensors only. Any other global (which could run code) is refused."""

    _ALLOWED = {
        ('collections', 'OrderedDict'),
        ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'slice'), ('builtins', 'complex'),
        ('_codecs', 'encode'),
        ('numpy', 'dtype'), ('numpy', 'ndarray'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('torch._utils', '_rebuild_tensor_v2'), ('torch', 'Size'),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ('torch.storage', '_load_from_bytes'):
            # torch's own helper unpickles the storage without weights_only
            return _storage_from_bytes
        if module == 'numpy.dtypes' and name.endswith('DType'):
            return super().find_class(module, name)
        if module == 'torch' and name in ('float16', 'float32', 'float64', 'int32', 'int64', 'uint8', 'bool'):
            return getattr(torch, name)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed in a detection results pickle')


def _storage_from_bytes(b: bytes):
    return torch.load(io.BytesIO(b), weights_only=True)


def _as_array(x: Any, dtype, what: str, path: str) -> np.ndarray:
    """``x`` as an array of ``dtype``; strings, booleans, objects and (for
    integer dtypes) fractions are errors, never silently converted."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ProposalFileError(f'{path}: {what} is not numeric ({e})') from e
    if raw.size and raw.dtype.kind not in 'iuf':
        kind = {'b': 'booleans', 'U': 'strings', 'S': 'bytes', 'O': 'objects'}.get(raw.dtype.kind, raw.dtype)
        raise ProposalFileError(f'{path}: {what} holds {kind}, not numbers')
    if np.issubdtype(np.dtype(dtype), np.integer) and raw.dtype.kind == 'f':
        if not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
            bad = raw[~(np.isfinite(raw) & (raw == np.round(raw)))].ravel()[:3].tolist()
            raise ProposalFileError(f'{path}: {what} holds non-integer values {bad}; labels are whole numbers')
    return raw.astype(dtype, copy=False)


def _read_pickle(path: str) -> DetectionTable:
    try:
        with open(path, 'rb') as f:
            data = _ResultsUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise ProposalFileError(f'refusing to read {path!r}: {e}. Only plain mmdet result pickles '
                                '(tools/test.py --out) are read; convert other files to COCO results JSON') from e
    except Exception as e:
        raise ProposalFileError(f'cannot read {path!r} as an mmdet result pickle: {e}') from e
    if not isinstance(data, (list, tuple)):
        raise ProposalFileError(f'{path!r}: expected a list of per-image results (tools/test.py --out), '
                                f'got {type(data).__name__}')
    keys, boxes, scores, labels = [], [], [], []
    seen: Dict[Any, int] = {}
    full_paths: Dict[str, Tuple[int, str]] = {}
    for i, item in enumerate(data):
        if not isinstance(item, Mapping) or 'pred_instances' not in item:
            raise ProposalFileError(f'{path!r}: entry {i} has no pred_instances; is this a tools/test.py --out '
                                    'pickle of a detector?')
        if item.get('img_id') is not None:
            key = _whole_number(item['img_id'], f'{path!r}: entry {i} img_id')
        elif isinstance(item.get('img_path'), str) and item['img_path']:
            key = osp.basename(item['img_path'])
            other = full_paths.setdefault(key, (i, item['img_path']))
            if other[1] != item['img_path']:
                raise ProposalFileError(
                    f'{path!r}: entries {other[0]} ({other[1]!r}) and {i} ({item["img_path"]!r}) have the same file '
                    'name in two folders and no img_id, so their detections cannot be told apart; write the '
                    'results with img_id (tools/test.py --out does)')
        else:
            raise ProposalFileError(f'{path!r}: entry {i} has neither img_id nor img_path')
        if key in seen:
            raise ProposalFileError(f'{path!r}: entries {seen[key]} and {i} are both image {key!r}; each image '
                                    'is listed once (two result files concatenated?)')
        seen[key] = i
        pred = item['pred_instances']
        missing = [k for k in ('bboxes', 'scores', 'labels') if k not in pred]
        if missing:
            raise ProposalFileError(f'{path!r}: entry {i} pred_instances lacks {missing}')
        b = _as_array(pred['bboxes'], np.float64, f'entry {i} bboxes', path).reshape(-1, 4)
        s = _as_array(pred['scores'], np.float64, f'entry {i} scores', path).reshape(-1)
        lab = _as_array(pred['labels'], np.int64, f'entry {i} labels', path).reshape(-1)
        if not len(b) == len(s) == len(lab):
            raise ProposalFileError(f'{path!r}: entry {i} has {len(b)} boxes, {len(s)} scores, {len(lab)} labels')
        keys.extend([key] * len(s))
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
    if not keys:
        raise ProposalFileError(f'{path!r} holds no detections ({len(data)} images, all empty)')
    return DetectionTable(path, _key_array(keys), np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels),
                          'mmdet_pkl', len(data))


# --------------------------------------------------------------------- JSON
def _read_json(path: str) -> DetectionTable:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ProposalFileError(f'cannot read {path!r} as JSON: {e}') from e
    if isinstance(data, dict) and 'annotations' in data and 'images' in data:
        raise ProposalFileError(f'{path!r} is an annotation file, not detection results: '
                                'give a COCO results list [{image_id, category_id, bbox, score}, ...]')
    if not isinstance(data, list):
        raise ProposalFileError(f'{path!r}: COCO results must be a JSON list, got {type(data).__name__}')
    if not data:
        raise ProposalFileError(f'{path!r} holds no detections (empty list)')
    need = ('image_id', 'category_id', 'bbox', 'score')
    n = len(data)
    xywh = np.empty((n, 4), dtype=np.float64)
    scores = np.empty(n, dtype=np.float64)
    cats = np.empty(n, dtype=np.int64)
    image_ids = []
    for i, d in enumerate(data):
        if not isinstance(d, dict) or any(k not in d for k in need):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ProposalFileError(f'{path!r}: entry {i} is not a COCO result (needs {need}, has {got})')
        where = f'{path!r}: entry {i}'
        box = d['bbox']
        if not isinstance(box, list) or len(box) != 4:
            raise ProposalFileError(f'{where} bbox {box!r} is not [x, y, w, h]')
        xywh[i] = [_real(v, f'{where} bbox {box!r} value') for v in box]
        scores[i] = _real(d['score'], f'{where} score')
        cats[i] = _whole_number(d['category_id'], f'{where} category_id')
        image_ids.append(_whole_number(d['image_id'], f'{where} image_id'))
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    keys = _key_array(image_ids)
    return DetectionTable(path, keys, boxes, scores, cats, 'coco_json', len(set(image_ids)))


def read_detections(path: str, file_format: str = 'auto') -> DetectionTable:
    """Read a results file once per process (cached by path, mtime and size).

    Args:
        file_format: ``'json'``, ``'pkl'`` or ``'auto'`` (by extension).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'proposal_file must be a path (str), got {type(path).__name__} {path!r}'[:200])
    path = osp.abspath(os.fspath(path))
    if osp.isdir(path):
        raise IsADirectoryError(f'detector results file {path!r} is a directory; give the .json or .pkl file '
                                'inside it')
    if not osp.isfile(path):
        raise FileNotFoundError(f'detector results file {path!r} does not exist')
    if file_format == 'auto':
        ext = osp.splitext(path)[1].lower()
        if ext == '.json':
            file_format = 'json'
        elif ext in ('.pkl', '.pickle'):
            file_format = 'pkl'
        else:
            raise ProposalFileError(f'{path!r}: cannot tell the format from the extension; '
                                    "give file_format='json' or 'pkl'")
    if file_format not in ('json', 'pkl'):
        raise ValueError(f"file_format must be 'json', 'pkl' or 'auto', got {file_format!r}")
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _TABLES:
        table = _read_json(path) if file_format == 'json' else _read_pickle(path)
        while len(_TABLES) >= _TABLES_SIZE:  # bounded: evaluating many files does not keep them all
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return _TABLES[key]


# ------------------------------------------------------------ box utilities
def clip_and_filter(boxes: np.ndarray, height: float, width: float) -> Tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; return the clipped boxes and a mask of
    the boxes with positive width and height after clipping."""
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


def _warn(msg: str) -> None:
    print_log(msg, logger='current', level=logging.WARNING)


@TRANSFORMS.register_module()
class LoadProposalPrompts(BaseTransform):
    """Load a detector's results for the image as prompts.

    Adds ``proposal_bboxes`` (N, 4) float32 xyxy in the resized input frame,
    ``proposal_scores`` (N,) float32 and ``proposal_labels`` (N,) int64
    (dataset label indices), sorted by score (highest first). An image without
    detections gets N = 0 (its prediction is empty, not an error).

    Args:
        proposal_file: COCO results JSON or mmdet result pickle.
        ann_file: the dataset's annotation file. Needed to map COCO category
            ids to label indices (unless ``category_map`` is given); also used
            to check image ids and count boxes outside their image up front.
        classes: the dataset's class names (``metainfo['classes']``); label
            indices are the positions of the annotation file's categories
            with these names in id order, as mmdet's ``CocoDataset`` does.
            None: all categories of ``ann_file`` (``LVISV1Dataset``).
        category_map: explicit ``{detector category id (JSON) or label
            (pickle): dataset label index or class name}``. Detections of
            categories not in it are dropped.
        detector_classes: for pickles, the detector's class names (label
            order); labels are mapped to the dataset's ``classes`` by name.
            Without it, pickle labels are taken as dataset label indices.
        score_thr: keep detections with ``score >= score_thr``.
        topk: keep at most this many detections per image (highest scores,
            after dropping invalid boxes); None for all.
        on_unknown_category / on_unknown_image: ``'warn'`` (drop, count, warn
            once) or ``'error'``. A file none of whose detections map to a
            known category or image always raises.
        file_format: ``'auto'``, ``'json'`` or ``'pkl'``.
    """

    def __init__(self,
                 proposal_file: str,
                 ann_file: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None,
                 category_map: Optional[Mapping[int, Union[int, str]]] = None,
                 detector_classes: Optional[Sequence[str]] = None,
                 score_thr: float = 0.0,
                 topk: Optional[int] = 100,
                 on_unknown_category: str = 'warn',
                 on_unknown_image: str = 'warn',
                 file_format: str = 'auto') -> None:
        for name, value in (('on_unknown_category', on_unknown_category), ('on_unknown_image', on_unknown_image)):
            if value not in ('warn', 'error'):
                raise ValueError(f"{name} must be 'warn' or 'error', got {value!r}")
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk <= 0):
            raise ValueError(f'topk must be a whole number >= 1 or None (all), got {topk!r}')
        if (isinstance(score_thr, bool) or not isinstance(score_thr, (int, float, np.integer, np.floating))
                or not np.isfinite(score_thr)):
            raise ValueError(f'score_thr must be a finite number (detections with score >= score_thr are kept; '
                             f'0 keeps all), got {score_thr!r}')
        if classes is not None:
            if isinstance(classes, str):
                raise TypeError(f'classes must be a list of class names, got the string {classes!r}')
            bad = [c for c in classes if not isinstance(c, str)]
            if bad:
                raise TypeError(f'classes must be strings, got {bad[0]!r} ({type(bad[0]).__name__})')
        self.proposal_file = proposal_file
        self.ann_file = ann_file
        self.classes = None if classes is None else list(classes)
        self.score_thr = float(score_thr)
        self.topk = topk
        self.on_unknown_category = on_unknown_category
        self.on_unknown_image = on_unknown_image
        self.counts: Counter = Counter()
        self._runtime_warned = False

        table = read_detections(proposal_file, file_format)
        index = load_annotation_index(ann_file) if ann_file is not None else None
        self.label_names = self._label_names(index)
        lookup = self._category_lookup(table, index, category_map, detector_classes)
        self._by_image = self._group(table, index, lookup)

    # -------------------------------------------------------------- set-up
    def _label_names(self, index) -> Optional[List[str]]:
        if self.classes is not None:
            return self.classes
        if index is not None:
            return [c['name'] for c in index.categories]
        return None

    def _category_lookup(self, table: DetectionTable, index, category_map, detector_classes) -> Dict[int, int]:
        """``{detector category: dataset label}``."""
        names = self.label_names
        if category_map is not None:
            if not isinstance(category_map, Mapping):
                raise TypeError(f'category_map must be a dict {{detector category: label or class name}}, got '
                                f'{type(category_map).__name__}')
            lookup = {}
            for k, v in category_map.items():
                try:
                    key = _whole_number(k, f'category_map key {k!r}')
                    if isinstance(v, str):
                        if names is None or v not in names:
                            raise ValueError(f'category_map: class {v!r} is not a dataset class')
                        v = names.index(v)
                    v = _whole_number(v, f'category_map[{k!r}]')
                except ProposalFileError as e:
                    raise ValueError(str(e)) from None
                if v < 0 or (names is not None and v >= len(names)):
                    raise ValueError(f'category_map: label {v} (for {k!r}) out of range for '
                                     f'{len(names) if names is not None else "the"} classes')
                lookup[key] = v
            return lookup
        if table.kind == 'coco_json':
            if index is None:
                raise ValueError(f'{table.path}: mapping COCO category ids to labels needs the dataset\'s '
                                 'ann_file (and classes), or an explicit category_map')
            return {cid: i for i, cid in enumerate(index.label_cat_ids(self.classes))}
        # mmdet pickle: labels are indices into the detector's classes
        if names is None:
            raise ValueError(f'{table.path}: give classes (or ann_file) so the detector labels can be checked '
                             'against the dataset classes')
        if detector_classes is not None:
            return {i: names.index(c) for i, c in enumerate(detector_classes) if c in names}
        return {i: i for i in range(len(names))}

    def _group(self, table: DetectionTable, index, lookup: Dict[int, int]) -> Dict[Any, Tuple[np.ndarray, ...]]:
        path = table.path
        n = len(table)
        cats = table.categories
        labels = np.array([lookup.get(c, -1) for c in cats.tolist()], dtype=np.int64).reshape(-1)
        known_cat = labels >= 0
        if n and not known_cat.any():
            raise ProposalFileError(
                f'{path}: none of the {n} detections has a category of the dataset (file categories e.g. '
                f'{sorted(set(cats.tolist()))[:8]}); wrong file, wrong ann_file/classes or a category_map is '
                'needed')
        finite = np.isfinite(table.boxes).all(1) & np.isfinite(table.scores)
        positive = (table.boxes[:, 2] > table.boxes[:, 0]) & (table.boxes[:, 3] > table.boxes[:, 1])
        keep = known_cat & finite & positive
        unknown_cats = Counter(cats[~known_cat].tolist())
        self.counts['unknown_category'] = int((~known_cat).sum())
        self.counts['degenerate'] = int((known_cat & ~(finite & positive)).sum())
        if self.counts['unknown_category'] and self.on_unknown_category == 'error':
            raise ProposalFileError(f'{path}: {self.counts["unknown_category"]} detections of categories not in the '
                                    f'mapping: {dict(unknown_cats.most_common(8))} (id: count)')

        if index is not None:
            known_img = np.array([k in index.image_sizes for k in table.image_keys.tolist()], dtype=bool)
            if n and not known_img.any():
                raise ProposalFileError(f'{path}: none of its image ids (e.g. {table.image_keys[:5].tolist()}) are '
                                        f'images of {index.path}; results of another split or dataset?')
            unknown_imgs = set(table.image_keys[~known_img].tolist())
            self.counts['unknown_image'] = int((~known_img).sum())
            if unknown_imgs and self.on_unknown_image == 'error':
                raise ProposalFileError(f'{path}: {len(unknown_imgs)} image ids are not in {index.path}, '
                                        f'e.g. {sorted(unknown_imgs, key=str)[:5]}')
            keep &= known_img
        self.counts['below_score_thr'] = int((keep & (table.scores < self.score_thr)).sum())
        keep &= table.scores >= self.score_thr

        sel = np.flatnonzero(keep)
        by_image = {}
        for k, idx in self._per_image(table.image_keys[sel], table.scores[sel]):
            idx = sel[idx]
            boxes, scores, labs = table.boxes[idx], table.scores[idx], labels[idx]
            if index is not None:
                h, w = index.image_sizes[k]
                boxes, ok = clip_and_filter(boxes, h, w)
                self.counts['outside_image'] += int((~ok).sum())
                boxes, scores, labs = boxes[ok], scores[ok], labs[ok]
            if self.topk is not None and len(scores) > self.topk:
                self.counts['beyond_topk'] += len(scores) - self.topk
                boxes, scores, labs = boxes[:self.topk], scores[:self.topk], labs[:self.topk]
            by_image[k] = (boxes, scores, labs)
        if index is not None:
            self.counts['images_without_proposals'] = sum(1 for k in index.image_sizes if k not in by_image)
        self.counts['kept'] = sum(len(v[1]) for v in by_image.values())
        self._report(path, unknown_cats, table)
        return by_image

    @staticmethod
    def _per_image(keys: np.ndarray, scores: np.ndarray):
        """Yield ``(image key, indices)`` with indices sorted by score, highest
        first (ties keep file order); vectorised for files with millions of rows."""
        if len(keys) == 0:
            return
        try:
            uniq, inv = np.unique(keys, return_inverse=True)
        except TypeError:  # image keys of mixed types
            pos: Dict[Any, int] = {}
            inv = np.array([pos.setdefault(k, len(pos)) for k in keys.tolist()])
            uniq = np.empty(len(pos), dtype=object)
            uniq[:] = list(pos)
        order = np.lexsort((-scores, inv))  # by image, then score; lexsort is stable
        bounds = np.flatnonzero(np.diff(inv[order])) + 1
        for chunk in np.split(order, bounds):
            key = uniq[inv[chunk[0]]]
            yield (int(key) if isinstance(key, np.integer) else key), chunk

    def _report(self, path: str, unknown_cats: Counter, table: DetectionTable) -> None:
        c = self.counts
        parts = []
        if c['unknown_category']:
            parts.append(f'{c["unknown_category"]} with categories not in the mapping '
                         f'({dict(unknown_cats.most_common(5))}, id: count)')
        if c['unknown_image']:
            parts.append(f'{c["unknown_image"]} on images not in the annotation file')
        if c['degenerate']:
            parts.append(f'{c["degenerate"]} with non-finite values or zero width/height')
        if c['outside_image']:
            parts.append(f'{c["outside_image"]} empty after clipping to their image')
        if parts:
            _warn(f'LoadProposalPrompts: {path}: dropped detections: ' + '; '.join(parts) + '.')
        msg = (f'LoadProposalPrompts: {path}: {len(table)} detections, kept {c["kept"]} '
               f'(score >= {self.score_thr}: {c["below_score_thr"]} below; top-{self.topk}: '
               f'{c["beyond_topk"]} cut)')
        if self.ann_file is not None:
            msg += f'; {c["images_without_proposals"]} dataset images have no proposal (empty predictions)'
        print_log(msg, logger='current', level=logging.INFO)

    # ------------------------------------------------------------ per image
    def _lookup(self, results: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        if results.get('img_id') is None:
            by_name = any(isinstance(k, str) for k in self._by_image)
            if not by_name or results.get('img_path') is None:
                raise KeyError(f"LoadProposalPrompts needs results['img_id'] (the image id of the detections in "
                               f'{self.proposal_file!r}) {"or img_path " if by_name else ""}to find the image\'s '
                               'detections; without it every image would silently get none. Use it after '
                               'LoadImageFromFile in a dataset that sets img_id (e.g. CocoDataset)')
        key = _image_key(results.get('img_id'))
        if key in self._by_image:
            return self._by_image[key]
        path = results.get('img_path')
        if path is not None and osp.basename(path) in self._by_image:
            return self._by_image[osp.basename(path)]
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)

    def transform(self, results: dict) -> dict:
        if 'scale_factor' not in results:
            raise KeyError('LoadProposalPrompts must come after Resize in the pipeline: it maps the boxes to '
                           "the input frame with results['scale_factor']")
        if results.get('flip', False):
            raise ValueError('LoadProposalPrompts does not support flipped inputs (put it in a test pipeline '
                             'without RandomFlip)')
        boxes, scores, labels = self._lookup(results)
        h, w = results['ori_shape'][:2]
        boxes, ok = clip_and_filter(boxes, h, w)
        if not ok.all():
            # only possible without ann_file or when its sizes disagree with the image
            self.counts['outside_image_runtime'] += int((~ok).sum())
            if not self._runtime_warned:
                self._runtime_warned = True
                _warn(f'LoadProposalPrompts: {int((~ok).sum())} boxes of {results.get("img_path")} are empty after '
                      'clipping to the image and were dropped; later drops are counted in '
                      "counts['outside_image_runtime'] without further warnings")
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        if self.topk is not None:
            boxes, scores, labels = boxes[:self.topk], scores[:self.topk], labels[:self.topk]
        sw, sh = results['scale_factor']
        boxes = boxes * np.array([sw, sh, sw, sh])
        ih, iw = results['img_shape'][:2]
        boxes, ok = clip_and_filter(boxes.astype(np.float32), ih, iw)
        results['proposal_bboxes'] = boxes[ok].reshape(-1, 4)
        results['proposal_scores'] = scores[ok].astype(np.float32)
        results['proposal_labels'] = labels[ok].astype(np.int64)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(proposal_file={self.proposal_file!r}, score_thr={self.score_thr}, '
                f'topk={self.topk})')


@TRANSFORMS.register_module()
class PackDetInputsWithProposals(PackDetInputs):
    """``PackDetInputs`` that also packs :class:`LoadProposalPrompts`' output
    as ``data_sample.pred_instances`` (``bboxes``, ``scores``, ``labels``).

    Args:
        require_proposals: raise when the proposals are missing (a pipeline
            without ``LoadProposalPrompts`` would otherwise give a model with
            ``prompt_source='pred'`` nothing to segment).
        meta_keys: as ``PackDetInputs``.
    """

    def __init__(self, require_proposals: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.require_proposals = require_proposals

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        if 'proposal_bboxes' not in results:
            if self.require_proposals:
                raise KeyError('no proposals in the results: put LoadProposalPrompts (after Resize) before '
                               'PackDetInputsWithProposals')
            return packed
        pred = InstanceData()
        pred.bboxes = torch.from_numpy(np.ascontiguousarray(results['proposal_bboxes'], dtype=np.float32))
        pred.scores = torch.from_numpy(np.ascontiguousarray(results['proposal_scores'], dtype=np.float32))
        pred.labels = torch.from_numpy(np.ascontiguousarray(results['proposal_labels'], dtype=np.int64))
        packed['data_samples'].pred_instances = pred
        return packed
