"""Auto-annotation of image collections: one COCO instances file from many images.

:func:`annotate_images` runs an :class:`~ovsam.apis.OVSAMPredictor` over an image
folder (recursive), a list file or the images of a COCO file, with prompts from

* ``'everything'``: :class:`~ovsam.apis.OVSAMAutomaticMaskGenerator` (records keep
  segment_anything's keys: ``segmentation``, ``area``, ``bbox``, ``predicted_iou``,
  ``point_coords``, ``stability_score``, ``crop_box``; plus the labels);
* a detector's results file (COCO results JSON or mmdet pickle, read by
  :func:`ovsam.datasets.read_detections`): each box is segmented and labelled;
* text queries (``dict(text=['cat', 'dog'])``): the masks recognised as one of
  the queries, as :meth:`OVSAMAutomaticMaskGenerator.find` (one segment-everything
  pass per image for all queries);
* ``'coco'``: the boxes of the input COCO file (``dict(coco=path)`` for another
  file): re-label them and add masks;

and writes one COCO instances JSON (RLE masks, ``category_id`` = vocabulary
index + 1, ``score``, ``bbox`` x, y, w, h; the vocabulary as ``categories``;
``images`` with ``width`` / ``height``) plus a report listing every image that
could not be read or annotated.

Long runs: per-image results are written atomically into ``work_dir/items`` as
they are computed, so a rerun (same options) computes only what is missing; a
record's name holds the image's path, size and modification time, its prompts
and a fingerprint of every option that changes results (model weights,
vocabulary, generator options, ...), so results made with other options are
never merged; a rerun with other options than ``work_dir/options.json`` is an
error unless ``overwrite=True``. The output file and the report are written
atomically at the end. With ``torch.distributed`` (``WORLD_SIZE`` / ``RANK`` in
the environment, e.g. from ``torchrun``; gloo on CPU, NCCL on GPUs) the pending
images are dealt round-robin to the ranks and rank 0 merges; the file is the
same as one process writes.

Example::

    from ovsam.apis import OVSAMPredictor, annotate_images
    pred = OVSAMPredictor.from_config(cfg, ckpt, clip_checkpoint='RN50x16.pt')
    summary = annotate_images(pred, 'photos/', prompts='everything', vocabulary='coco',
                              out_file='photos.json')
"""
import hashlib
import json
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..fileio import atomic_save_bytes, atomic_save_json
from .automatic import OVSAMAutomaticMaskGenerator
from .inputs import check_int, image_to_rgb
from .predictor import OVSAMPredictor

__all__ = ['IMAGE_EXTENSIONS', 'ImageEntry', 'ImageReadError', 'AnnotationOptionsError', 'annotate_images',
           'collect_images', 'read_image']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.jp2')
FORMAT_VERSION = 1
# the keys segment_anything's SamAutomaticMaskGenerator gives every record
SAM_RECORD_KEYS = ('segmentation', 'area', 'bbox', 'predicted_iou', 'point_coords', 'stability_score', 'crop_box')


class ImageReadError(ValueError):
    """An image file that cannot be read or decoded."""


class AnnotationOptionsError(ValueError):
    """A work folder holding results made with other options."""


@dataclass
class ImageEntry:
    """One input image: its COCO ``id``, ``file_name`` (as written in the
    output) and the ``path`` it is read from."""
    id: int
    file_name: str
    path: str
    width: Optional[int] = None
    height: Optional[int] = None


# ------------------------------------------------------------------ inputs
def _is_image_name(name: str) -> bool:
    return osp.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: str, exclude: Sequence[str]) -> List[str]:
    """Image files under ``folder`` (recursive, sorted, hidden files and folders
    and the ``exclude`` folders skipped), relative to ``folder``."""
    exclude = {osp.realpath(e) for e in exclude if e}
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and osp.realpath(osp.join(root, d)) not in exclude)
        for f in sorted(files):
            if not f.startswith('.') and _is_image_name(f):
                out.append(osp.relpath(osp.join(root, f), folder).replace(os.sep, '/'))
    return out


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot read {what} {path!r} as JSON: {e}') from None


def collect_images(images: Union[str, Sequence[str]],
                   image_root: Optional[str] = None,
                   exclude: Sequence[str] = ()) -> Tuple[List[ImageEntry], Optional[dict]]:
    """The images to annotate, in a fixed order, and the COCO dict they came from.

    ``images`` is a folder (searched recursively for :data:`IMAGE_EXTENSIONS`;
    ``file_name`` is the path relative to it; ids 1, 2, ... in sorted order), a
    list file (one path per line, ``#`` comments; relative paths are relative to
    ``image_root`` or the list's folder), a COCO ``.json`` (its ``images``; files
    under ``image_root`` or the JSON's folder; its ids), or a list of paths.
    """
    coco = None
    if isinstance(images, (str, os.PathLike)):
        src = os.fspath(images)
        if osp.isdir(src):
            root = image_root or src
            names = _walk(src, exclude)
            entries = [ImageEntry(i + 1, n, osp.join(src, n)) for i, n in enumerate(names)]
            if image_root is not None:
                entries = [ImageEntry(e.id, osp.relpath(e.path, root).replace(os.sep, '/'), e.path) for e in entries]
            where = f'folder {src!r} (extensions {", ".join(IMAGE_EXTENSIONS)})'
        elif not osp.isfile(src):
            raise FileNotFoundError(f'images {src!r}: no such folder or file (give a folder, a list file or a COCO '
                                    '.json)')
        elif src.lower().endswith('.json'):
            coco = _load_json(src, 'COCO file')
            if not isinstance(coco, dict) or not isinstance(coco.get('images'), list):
                raise ValueError(f'{src!r} is not a COCO file: it needs an "images" list')
            root = image_root or osp.dirname(osp.abspath(src))
            entries, seen = [], set()
            for i, im in enumerate(coco['images']):
                if not isinstance(im, dict) or 'id' not in im or not isinstance(im.get('file_name'), str):
                    raise ValueError(f'{src!r}: images[{i}] needs an id and a file_name')
                if im['id'] in seen:
                    raise ValueError(f'{src!r}: image id {im["id"]!r} appears twice')
                seen.add(im['id'])
                entries.append(ImageEntry(im['id'], im['file_name'], osp.join(root, im['file_name']),
                                          im.get('width'), im.get('height')))
            where = f'COCO file {src!r}'
        else:
            base = image_root or osp.dirname(osp.abspath(src))
            with open(src, encoding='utf-8') as f:
                lines = [ln.strip() for ln in f]
            names = [ln for ln in lines if ln and not ln.startswith('#')]
            entries = [ImageEntry(i + 1, n, n if osp.isabs(n) else osp.join(base, n)) for i, n in enumerate(names)]
            where = f'list file {src!r}'
    else:
        try:
            names = [os.fspath(p) for p in images]
        except TypeError:
            raise TypeError(f'images must be a folder, a list file, a COCO .json or a list of paths, got '
                            f'{type(images).__name__}') from None
        entries = [ImageEntry(i + 1, osp.relpath(n, image_root).replace(os.sep, '/') if image_root else n,
                              n if osp.isabs(n) or not image_root else osp.join(image_root, n))
                   for i, n in enumerate(names)]
        where = 'the list of paths'
    if not entries:
        raise ValueError(f'no images found in {where}')
    names = [e.file_name for e in entries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f'image {dup!r} is listed twice in {where}')
    return entries, coco


def read_image(path: str) -> np.ndarray:
    """An (H, W, 3) RGB array (uint8, or float32 in 0..255 for 16-bit files) with
    the EXIF orientation applied; :class:`ImageReadError` for missing, empty,
    truncated or corrupt files."""
    try:
        from PIL import Image, ImageOps
        with Image.open(path) as im:
            im.load()  # decodes everything: truncated files raise here
            im = ImageOps.exif_transpose(im)
            return image_to_rgb(im, name=path)
    except Exception as e:  # PIL raises many types for bad files
        raise ImageReadError(f'{type(e).__name__}: {e}') from None


# ------------------------------------------------------------------ prompts
def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
        h.update(b'\0')
    return h.hexdigest()


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Prompts:
    mode: str  # everything | text | detections | coco
    queries: List[str] = field(default_factory=list)
    boxes: Dict[Any, Tuple[np.ndarray, List[dict]]] = field(default_factory=dict)  # image id -> xyxy, extras
    options: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)

    def digest(self, entry: ImageEntry) -> str:
        """What the prompts of one image are (part of its record's name)."""
        if self.mode not in ('detections', 'coco'):
            return ''
        boxes, extras = self.boxes.get(entry.id, (np.zeros((0, 4)), []))
        return _sha(np.ascontiguousarray(boxes, dtype=np.float64).tobytes(), extras)[:16]


def _detection_prompts(path: str, entries: List[ImageEntry], score_thr: float, topk: Optional[int]) -> _Prompts:
    from ..datasets.proposals import read_detections
    table = read_detections(path)
    by_id = {e.id: e for e in entries}
    by_name: Dict[str, Optional[ImageEntry]] = {}
    for e in entries:
        for key in {e.file_name, osp.basename(e.file_name)}:
            by_name[key] = e if key not in by_name or by_name[key] is e else None  # None: ambiguous
    rows: Dict[Any, List[int]] = {}
    unmatched = 0
    for i, key in enumerate(table.image_keys.tolist()):
        e = by_id.get(key) if not isinstance(key, str) else by_name.get(key)
        if e is None and isinstance(key, str) and key in by_name:
            raise ValueError(f'{path}: image {key!r} matches two input images by file name; give img_id in the '
                             'results, or a COCO file as input')
        if e is None:
            unmatched += 1
            continue
        rows.setdefault(e.id, []).append(i)
    if len(table) and not rows:
        raise ValueError(f'{path}: none of its {len(table)} detections is on an input image (its image ids, e.g. '
                         f'{table.image_keys[:5].tolist()}, are neither ids nor file names of the inputs; images of '
                         'a folder have ids 1, 2, ... in sorted order: give the COCO file the detector ran on)')
    out = _Prompts('detections', options=dict(det_score_thr=score_thr, det_topk=topk))
    below = cut = 0
    for img_id, idx in rows.items():
        idx = np.array(idx)
        idx = idx[np.argsort(-table.scores[idx], kind='stable')]
        keep = idx[table.scores[idx] >= score_thr]
        below += len(idx) - len(keep)
        if topk is not None and len(keep) > topk:
            cut += len(keep) - topk
            keep = keep[:topk]
        extras = [dict(det_score=float(table.scores[k]), det_category_id=int(table.categories[k])) for k in keep]
        out.boxes[img_id] = (table.boxes[keep].astype(np.float64), extras)
    out.stats = dict(detections=len(table), unmatched_detections=unmatched, below_det_score_thr=below,
                     beyond_det_topk=cut, kept_detections=sum(len(v[1]) for v in out.boxes.values()))
    return out


def _coco_box_prompts(coco: dict, where: str, entries: List[ImageEntry]) -> _Prompts:
    anns = coco.get('annotations')
    if not isinstance(anns, list):
        raise ValueError(f'{where}: prompts="coco" needs a COCO file with an "annotations" list')
    ids = {e.id for e in entries}
    rows: Dict[Any, List[Tuple[List[float], dict]]] = {}
    bad = other = 0
    for i, a in enumerate(anns):
        box = a.get('bbox') if isinstance(a, dict) else None
        if (not isinstance(box, list) or len(box) != 4 or
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) or
                not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0):
            bad += 1
            continue
        if a.get('image_id') not in ids:
            other += 1
            continue
        x, y, w, h = (float(v) for v in box)
        rows.setdefault(a['image_id'], []).append(([x, y, x + w, y + h], dict(source_ann_id=a.get('id'),
                                                                             source_category_id=a.get('category_id'))))
    out = _Prompts('coco')
    for img_id, items in rows.items():
        out.boxes[img_id] = (np.array([b for b, _ in items], np.float64).reshape(-1, 4), [x for _, x in items])
    out.stats = dict(boxes=sum(len(v) for v in rows.values()), invalid_boxes=bad, boxes_on_other_images=other)
    return out


def _resolve_prompts(prompts: Any, entries: List[ImageEntry], coco: Optional[dict], images: Any,
                     det_score_thr: float, det_topk: Optional[int], min_score: float) -> _Prompts:
    if isinstance(prompts, str) and prompts == 'everything':
        return _Prompts('everything')
    if isinstance(prompts, str) and prompts in ('coco', 'coco-boxes'):
        if coco is None:
            raise ValueError('prompts="coco" uses the boxes of the input COCO file, but the images are not a COCO '
                             'file: give images="instances.json" (or prompts=dict(coco=path))')
        return _coco_box_prompts(coco, str(images), entries)
    if isinstance(prompts, dict) and len(prompts) == 1:
        (kind, value), = prompts.items()
        if kind == 'coco':
            return _coco_box_prompts(_load_json(value, 'COCO file'), str(value), entries)
        if kind == 'detections':
            return _detection_prompts(value, entries, det_score_thr, det_topk)
        if kind == 'text':
            prompts = [value] if isinstance(value, str) else list(value)
        else:
            raise ValueError(f"prompts dict must be dict(text=[...]), dict(detections=path) or dict(coco=path), got "
                             f'key {kind!r}')
    if isinstance(prompts, (str, os.PathLike)) and osp.isfile(os.fspath(prompts)):
        path = os.fspath(prompts)
        if path.lower().endswith('.json'):
            data = _load_json(path, 'prompt file')
            if isinstance(data, dict) and 'annotations' in data:
                return _coco_box_prompts(data, path, entries)
        return _detection_prompts(path, entries, det_score_thr, det_topk)
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(q, str) for q in prompts):
        queries = [q.strip() for q in prompts]
        if not all(q.strip(' ,') for q in queries):
            raise ValueError(f'text queries must be non-empty class names, got {prompts!r}')
        return _Prompts('text', queries=queries, options=dict(min_score=min_score))
    raise ValueError(f"prompts must be 'everything', 'coco', a detections file (.json / .pkl), dict(text=[...]) or a "
                     f'list of text queries, got {prompts!r}'[:300])


# ------------------------------------------------------------------ fingerprint
def _model_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def _generator_options(gen: OVSAMAutomaticMaskGenerator) -> Dict[str, Any]:
    opts = {}
    for k, v in sorted(vars(gen).items()):
        if k == 'predictor':
            continue
        if k == 'point_grids':
            v = _sha(*[np.ascontiguousarray(g, dtype=np.float64).tobytes() for g in v])[:16]
        opts[k] = v
    return opts


def _differences(old: dict, new: dict, prefix: str = '') -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f'{prefix}{k}.')
        elif a != b:
            out.append(f'{prefix}{k}: {str(a)[:60]} -> {str(b)[:60]}')
    return out


# ------------------------------------------------------------------ one image
def _rle(masks: np.ndarray) -> List[dict]:
    from pycocotools import mask as mask_utils
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r['counts'] = r['counts'].decode('ascii')
    return rles


def _annotate_one(pred: OVSAMPredictor, gen: Optional[OVSAMAutomaticMaskGenerator], prompts: _Prompts,
                  query_index: Dict[int, str], entry: ImageEntry, rgb: np.ndarray, top_k: int,
                  prompt_batch: int) -> List[dict]:
    anns = []
    if prompts.mode in ('everything', 'text'):
        recs = gen.generate(rgb)  # segment_anything's record keys, predicted_iou aside (added below)
        for r in recs:
            if prompts.mode == 'text':
                if r['label'] not in query_index or r['score'] < prompts.options['min_score']:
                    continue
            a = dict(category_id=r['label'] + 1, segmentation=r['segmentation'], area=r['area'], bbox=r['bbox'],
                     # OV-SAM has no IoU head: its mask confidence stands in for SAM's predicted IoU
                     score=r['score'], iscrowd=0, predicted_iou=r['mask_confidence'],
                     point_coords=r['point_coords'], stability_score=r['stability_score'], crop_box=r['crop_box'],
                     mask_confidence=r['mask_confidence'], label=r['label'], class_name=r['class_name'],
                     topk=r['topk'])
            if prompts.mode == 'text':
                a['query'] = query_index[r['label']]
            anns.append(a)
        if prompts.mode == 'text':
            anns.sort(key=lambda a: -a['score'])  # as find(): best first
        return anns
    from ..datasets.proposals import clip_and_filter
    boxes, extras = prompts.boxes.get(entry.id, (np.zeros((0, 4)), []))
    if len(boxes) == 0:
        return anns
    h, w = rgb.shape[:2]
    boxes, ok = clip_and_filter(boxes, h, w)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        return anns
    state = pred.compute_image_state(rgb)
    vocab = pred.vocabulary
    for s in range(0, len(keep), prompt_batch):
        idx = keep[s:s + prompt_batch]
        out = pred.predict(box=boxes[idx].astype(np.float32), top_k=top_k, image_state=state, vocabulary=vocab)
        for j, (i, rle) in enumerate(zip(idx, _rle(out.masks))):
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            a = dict(category_id=int(out.labels[j]) + 1, segmentation=rle, area=int(out.masks[j].sum()),
                     bbox=[x1, y1, x2 - x1, y2 - y1], score=float(out.scores[j]), iscrowd=0,
                     stability_score=float(out.mask_scores[j]), mask_confidence=float(out.mask_confidence[j]),
                     label=int(out.labels[j]), class_name=out.class_names[j],
                     topk=[[n, float(p)] for n, p in zip(out.topk_names[j], out.topk_scores[j])])
            a.update(extras[i])
            anns.append(a)
    return anns


def _draw(rgb: np.ndarray, anns: List[dict], class_names: Sequence[str], path: str) -> None:
    import cv2
    from pycocotools import mask as mask_utils

    from .visualization import draw_predictions
    if anns:
        masks = np.stack([mask_utils.decode(dict(a['segmentation'], counts=a['segmentation']['counts'].encode()))
                          for a in anns]).astype(bool)
        boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]]
                          for a in anns], np.float32)
        drawn = draw_predictions(rgb, masks, boxes, [a['category_id'] - 1 for a in anns], [a['score'] for a in anns],
                                 class_names)
    else:
        drawn = draw_predictions(rgb)
    ok, buf = cv2.imencode(osp.splitext(path)[1] or '.png', np.ascontiguousarray(drawn[:, :, ::-1]))
    if not ok:
        raise OSError(f'could not encode {path} (OpenCV cannot write this extension)')
    atomic_save_bytes(path, buf.tobytes())


# ------------------------------------------------------------------ distributed
def _dist_setup(device: torch.device) -> Tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group)."""
    import datetime

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return 0, 1, False
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    # long runs: a rank waiting at the final barrier for a slower one must not time out
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=48))
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


# ------------------------------------------------------------------ main entry
def annotate_images(predictor: Union[OVSAMPredictor, torch.nn.Module],
                    images: Union[str, Sequence[str]],
                    prompts: Any = 'everything',
                    vocabulary: Any = None,
                    out_file: str = 'annotations.json',
                    work_dir: Optional[str] = None,
                    image_root: Optional[str] = None,
                    generator_options: Optional[Dict[str, Any]] = None,
                    top_k: int = 3,
                    min_score: float = 0.0,
                    det_score_thr: float = 0.0,
                    det_topk: Optional[int] = 100,
                    prompt_batch: int = 32,
                    vis_dir: Optional[str] = None,
                    report_file: Optional[str] = None,
                    overwrite: bool = False,
                    progress: bool = True,
                    max_consecutive_errors: int = 20,
                    callback: Optional[Callable[[ImageEntry, str], None]] = None) -> Dict[str, Any]:
    """Annotate many images into one COCO instances file (see the module docstring).

    Args:
        predictor: an :class:`OVSAMPredictor` or an OVSAM model (wrapped in one).
        images: a folder, a list file, a COCO ``.json`` or a list of paths
            (:func:`collect_images`).
        prompts: ``'everything'``; ``'coco'`` (the input COCO file's boxes) or
            ``dict(coco=path)``; a detections file (COCO results ``.json`` or
            mmdet ``.pkl``) or ``dict(detections=path)``; text queries as a list
            of class names or ``dict(text=[...])``.
        vocabulary: any spec of :func:`ovsam.vocabulary.resolve_vocabulary`
            (set on the predictor); None keeps the predictor's. Text queries
            not in it are added (:meth:`OVSAMPredictor.add_class`).
        out_file: the COCO JSON to write (atomically, at the end).
        work_dir: per-image results (default: ``<out_file without .json>_work``).
        generator_options: options of :class:`OVSAMAutomaticMaskGenerator`
            (everything and text modes).
        top_k: classes listed per annotation (``topk``).
        min_score: text mode: keep masks whose query probability is >= this.
        det_score_thr / det_topk: detections with a score >= ``det_score_thr``,
            at most ``det_topk`` per image (None: all), best first.
        prompt_batch: boxes predicted at once.
        vis_dir: also draw each image's annotations into this folder.
        report_file: default ``<out_file without .json>.report.json``.
        overwrite: allow a ``work_dir`` made with other options (its results
            are ignored, never merged).
        progress: a tqdm bar (rate, ETA) on rank 0.
        max_consecutive_errors: images that fail to annotate (not to read)
            are skipped and reported; this many failures in a row with no
            success at all stops the run (a broken set-up, not bad images).
        callback: ``callback(entry, status)`` after each image this process
            handles (status ``'done'``, ``'cached'`` or ``'skipped'``).
    Returns:
        A summary dict (rank 0: of the whole run; other ranks: of their shard).
    """
    t_start = time.time()
    if isinstance(predictor, OVSAMPredictor):
        pred = predictor
    elif isinstance(predictor, torch.nn.Module):
        pred = OVSAMPredictor(predictor)
    else:
        raise TypeError(f'predictor must be an OVSAMPredictor or an OVSAM model, got {type(predictor).__name__}')
    top_k = check_int(top_k, 'top_k', 1)
    prompt_batch = check_int(prompt_batch, 'prompt_batch', 1)
    if det_topk is not None:
        det_topk = check_int(det_topk, 'det_topk', 1, fix='or None for all')
    out_file = os.fspath(out_file)
    stem = out_file[:-5] if out_file.lower().endswith('.json') else out_file
    work_dir = os.fspath(work_dir) if work_dir is not None else stem + '_work'
    report_file = os.fspath(report_file) if report_file is not None else stem + '.report.json'
    for name, p in (('out_file', out_file), ('report_file', report_file)):
        if osp.isdir(p):
            raise IsADirectoryError(f'{name} {p!r} is a folder; give a .json file name')

    entries, coco = collect_images(images, image_root, exclude=[work_dir, vis_dir])
    p = _resolve_prompts(prompts, entries, coco, images, float(det_score_thr), det_topk, float(min_score))
    if vocabulary is not None:
        pred.set_vocabulary_spec(vocabulary)
    query_index: Dict[int, str] = {}
    for q in p.queries:
        query_index[pred.add_class(q)] = q
    vocab = pred.vocabulary
    if vocab is None:
        raise RuntimeError('no vocabulary: pass vocabulary= (e.g. "coco", a class file or names)')
    gen = None
    if p.mode in ('everything', 'text'):
        gen = OVSAMAutomaticMaskGenerator(pred, **dict(generator_options or {}, output_mode='coco_rle', top_k=top_k))

    options = dict(format=FORMAT_VERSION, mode=p.mode, top_k=top_k, model=_model_sha(pred.model)[:16],
                   vocabulary=dict(names=list(vocab.class_names),
                                   embeddings=_sha(vocab.embeddings().numpy().tobytes())[:16]),
                   prompts=p.options, queries=p.queries,
                   generator=_generator_options(gen) if gen is not None else None)
    fingerprint = _sha(options)[:16]
    items_dir = osp.join(work_dir, 'items')

    rank, world, own_group = _dist_setup(pred.device)
    try:
        # 1. every rank checks the work folder before anyone writes into it
        opt_file = osp.join(work_dir, 'options.json')
        if osp.isfile(opt_file) and not overwrite:
            try:
                old = _load_json(opt_file, 'options file')
            except ValueError:
                old = {}
            if old.get('fingerprint') != fingerprint:
                diff = _differences(old.get('options', {}), options) or ['(unreadable options file)']
                raise AnnotationOptionsError(
                    f'{work_dir!r} holds results made with other options ({"; ".join(diff[:6])}); they are never '
                    'mixed: use another work_dir, or overwrite=True (--overwrite) to ignore them')

        def key_of(e: ImageEntry) -> str:
            try:
                st = os.stat(e.path)
                stamp = [st.st_size, st.st_mtime_ns]
            except OSError:
                stamp = None
            return _sha(e.file_name, stamp, p.digest(e))[:24]

        keys = {e.file_name: key_of(e) for e in entries}

        def record_path(e: ImageEntry, error: bool = False) -> str:
            k = keys[e.file_name]
            return osp.join(items_dir, k[:2], f'{k}.{fingerprint}{".error" if error else ""}.json')

        pending = [e for e in entries if not osp.isfile(record_path(e))]
        _barrier(world)
        if rank == 0:
            atomic_save_json(opt_file, dict(fingerprint=fingerprint, options=options), indent=1)
        mine = pending[rank::world]
        cached = len(entries) - len(pending)

        bar = None
        if progress and rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=len(mine), unit='img', desc=f'annotate ({p.mode}, rank 0/{world})' if world > 1 else
                       f'annotate ({p.mode})', dynamic_ncols=True, file=sys.stderr)
            if cached:
                bar.write(f'annotate: {cached} of {len(entries)} images already done in {work_dir} (reused)')
        done = skipped = failures_in_row = successes = n_anns = 0
        t_work = time.time()
        for e in mine:
            try:
                rgb = read_image(e.path)
            except ImageReadError as err:
                atomic_save_json(record_path(e, True), dict(file_name=e.file_name, path=e.path, stage='read',
                                                           error=str(err)))
                skipped += 1
                status = 'skipped'
            else:
                try:
                    anns = _annotate_one(pred, gen, p, query_index, e, rgb, top_k, prompt_batch)
                except Exception as err:  # noqa: BLE001 - one bad image must not end a long run
                    failures_in_row += 1
                    if successes == 0 and failures_in_row >= max_consecutive_errors:
                        raise RuntimeError(f'the first {failures_in_row} images all failed to annotate (last: '
                                           f'{e.path}: {type(err).__name__}: {err}); stopping: this is not a bad '
                                           'image but a problem of the set-up') from err
                    atomic_save_json(record_path(e, True), dict(file_name=e.file_name, path=e.path,
                                                               stage='annotate', error=f'{type(err).__name__}: {err}'))
                    skipped += 1
                    status = 'skipped'
                else:
                    failures_in_row = 0
                    successes += 1
                    h, w = rgb.shape[:2]
                    atomic_save_json(record_path(e), dict(fingerprint=fingerprint, file_name=e.file_name, width=w,
                                                          height=h, annotations=anns))
                    if osp.isfile(record_path(e, True)):
                        os.remove(record_path(e, True))
                    if vis_dir is not None:
                        _draw(rgb, anns, vocab.class_names, osp.join(vis_dir, osp.splitext(e.file_name)[0] + '.jpg'))
                    done += 1
                    n_anns += len(anns)
                    status = 'done'
            if bar is not None:
                bar.set_postfix(annotations=n_anns, skipped=skipped, refresh=False)
                bar.update(1)
            if callback is not None:
                callback(e, status)
        if bar is not None:
            bar.close()
        work_s = time.time() - t_work
        shard = dict(rank=rank, world_size=world, images=len(mine), computed=done, skipped=skipped,
                     seconds=round(work_s, 3), images_per_second=round(done / work_s, 4) if work_s > 0 else None)
        _barrier(world)
        if rank != 0:
            return dict(shard=shard, out_file=out_file, report_file=report_file)
        return _merge(entries, vocab.class_names, record_path, out_file, report_file, p, options, fingerprint,
                      work_dir, shard, cached, t_start)
    finally:
        if own_group:
            import torch.distributed as dist
            dist.destroy_process_group()


def _merge(entries: List[ImageEntry], class_names: Sequence[str], record_path, out_file: str, report_file: str,
           p: _Prompts, options: dict, fingerprint: str, work_dir: str, shard: dict, cached: int,
           t_start: float) -> Dict[str, Any]:
    from ..vocabulary import short_name, split_synonyms
    images, annotations, skipped, missing = [], [], [], []
    for e in entries:
        path = record_path(e)
        rec = None
        if osp.isfile(path):
            try:
                rec = _load_json(path, 'per-image result')
            except ValueError as err:
                missing.append(dict(id=e.id, file_name=e.file_name, path=e.path, error=str(err)))
                continue
        if rec is None:
            err_path = record_path(e, True)
            if osp.isfile(err_path):
                info = _load_json(err_path, 'per-image error')
                skipped.append(dict(id=e.id, file_name=e.file_name, path=e.path, stage=info.get('stage'),
                                    error=info.get('error')))
            else:
                missing.append(dict(id=e.id, file_name=e.file_name, path=e.path, error='no result (a rank died?)'))
            continue
        images.append(dict(id=e.id, file_name=e.file_name, width=rec['width'], height=rec['height']))
        for a in rec['annotations']:
            annotations.append(dict(id=len(annotations) + 1, image_id=e.id, **a))
    categories = []
    for i, n in enumerate(class_names):
        try:
            syn = split_synonyms(n)
        except (TypeError, ValueError):
            syn = [n]
        categories.append(dict(id=i + 1, name=short_name(n), synonyms=syn, supercategory=''))
    dataset = dict(info=dict(description=f'OV-SAM auto-annotation ({p.mode} prompts)', version=str(FORMAT_VERSION),
                             fingerprint=fingerprint),
                   images=images, annotations=annotations, categories=categories)
    atomic_save_json(out_file, dataset)
    elapsed = time.time() - t_start
    report = dict(out_file=out_file, work_dir=work_dir, images=len(entries), annotated_images=len(images),
                  annotations=len(annotations), skipped=skipped, missing=missing, reused=cached,
                  computed_rank0=shard['computed'], seconds=round(elapsed, 3), rank0=shard, prompt_stats=p.stats,
                  fingerprint=fingerprint, options=options)
    atomic_save_json(report_file, report, indent=1)
    if skipped or missing:
        print(f'annotate: {len(skipped)} images skipped and {len(missing)} missing; listed in {report_file}',
              file=sys.stderr)
    return report
