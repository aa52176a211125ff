"""COCO-format data with annotation checks that fail loudly and say where.

mmdet's ``CocoDataset`` trusts its input: a corrupt JSON surfaces as a bare
decoder error, a 2-point polygon or an empty mask becomes a silent zero-area
instance, and an image of another size than annotated is resized as if
nothing were wrong. Here each of those is an error naming the file, image and
annotation, and what to do.
"""
import json
import logging
import math
from collections import Counter
from typing import Any, Dict, List, Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets import CocoDataset
from mmengine.logging import print_log

from ..registry import DATASETS, TRANSFORMS


class AnnotationError(ValueError):
    """An annotation that cannot be used as it is."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rle_string_counts(counts: str) -> List[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``,
    in Python, so that a garbage string is an error and never reaches C code
    that trusts it)."""
    cnts: List[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError('the string ends inside a number')
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f'character {counts[p]!r} at {p} is not in the RLE alphabet')
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return cnts


def check_segmentation(seg, ann_id, img_id, height, width, ann_file):
    where = f'{ann_file}: annotation {ann_id} (image {img_id})'
    if isinstance(seg, list):
        if not seg:
            raise AnnotationError(f'{where} has an empty segmentation; remove the annotation or give its mask')
        for j, poly in enumerate(seg):
            if not isinstance(poly, list):
                raise AnnotationError(f'{where}: polygon {j} is a {type(poly).__name__}, not a flat list '
                                      '[x1, y1, x2, y2, ...]')
            arr = np.asarray(poly) if poly else np.zeros(0)
            if arr.ndim != 1 or arr.dtype.kind not in 'iuf' or any(type(v) is bool for v in poly):
                bad = next((v for v in poly if not _is_number(v)), poly[:4])
                raise AnnotationError(f'{where}: polygon {j} holds {bad!r}; coordinates must be numbers '
                                      '[x1, y1, x2, y2, ...]')
            if len(poly) < 6 or len(poly) % 2:
                raise AnnotationError(f'{where} has a polygon with {len(poly) // 2} points (at least 3 '
                                      'x, y pairs are needed); fix or drop that polygon')
            if not np.isfinite(arr).all():
                raise AnnotationError(f'{where}: polygon {j} holds NaN or Inf coordinates; fix or drop it')
            x, y = arr[0::2].astype(np.float64), arr[1::2].astype(np.float64)
            if abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) == 0:
                raise AnnotationError(f'{where}: polygon {j} has zero area (its points are on one line or '
                                      'repeated); fix or drop that polygon')
    elif isinstance(seg, dict):
        size = seg.get('size')
        if size is None or 'counts' not in seg:
            raise AnnotationError(f'{where}: RLE segmentation needs "size" and "counts"')
        if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) for v in size)):
            raise AnnotationError(f'{where}: RLE size {size!r} is not [height, width]')
        if list(size) != [height, width]:
            raise AnnotationError(f'{where}: RLE size {list(size)} differs from the image size '
                                  f'{[height, width]} in the annotation file')
        counts = seg['counts']
        if isinstance(counts, bytes):
            try:
                counts = counts.decode('ascii')
            except UnicodeDecodeError:
                raise AnnotationError(f'{where}: RLE counts are not ASCII; the mask is garbage') from None
        if isinstance(counts, str):
            try:
                runs = rle_string_counts(counts)
            except ValueError as e:
                raise AnnotationError(f'{where}: RLE counts string is garbage ({e}); re-encode the mask') from None
        elif isinstance(counts, list):
            if not all(_is_int(v) for v in counts):
                bad = next(v for v in counts if not _is_int(v))
                raise AnnotationError(f'{where}: RLE counts hold {bad!r}; run lengths are whole numbers')
            runs = counts
        else:
            raise AnnotationError(f'{where}: RLE counts must be a string or a list of run lengths, got '
                                  f'{type(counts).__name__}')
        if any(r < 0 for r in runs):
            raise AnnotationError(f'{where}: RLE has a negative run length; the mask is garbage')
        if sum(runs) != height * width:
            raise AnnotationError(f'{where}: RLE run lengths add up to {sum(runs)} pixels, the image has '
                                  f'{height} x {width} = {height * width}; the mask is garbage or for another size')
        if sum(runs[1::2]) == 0:
            raise AnnotationError(f'{where} has an empty mask; remove the annotation or fix its mask')
    else:
        raise AnnotationError(f'{where}: segmentation must be polygons or RLE, got {type(seg).__name__}')


def _duplicates(items: Sequence, what: str, ann_file: str) -> None:
    first: Dict[Any, int] = {}
    for i, v in enumerate(items):
        if v in first:
            raise AnnotationError(f'{ann_file}: {what} {v!r} is used twice (entries {first[v]} and {i}); every '
                                  f'{what.split()[0]} needs its own')
        first[v] = i


def validate_coco(raw, ann_file: str, check_masks: bool = True) -> Counter:
    """Check a parsed COCO instance file; raise :class:`AnnotationError` naming
    the file and the record, and return counts of annotations that mmdet will
    skip (``'box_outside_image'``, ``'zero_area_box'``) with example ids under
    ``'<name>_ids'``."""
    if not isinstance(raw, dict):
        raise AnnotationError(f'{ann_file!r} holds a JSON {type(raw).__name__}, not a COCO instance file '
                              '(an object with "images", "annotations", "categories")')
    for key in ('images', 'annotations', 'categories'):
        if key not in raw:
            raise AnnotationError(f'{ann_file!r} has no "{key}" list: not a COCO instance file')
        if not isinstance(raw[key], list):
            raise AnnotationError(f'{ann_file!r}: "{key}" is a {type(raw[key]).__name__}, not a list')
    for i, c in enumerate(raw['categories']):
        if not isinstance(c, dict) or not _is_int(c.get('id')):
            raise AnnotationError(f'{ann_file}: category {i} ({c!r}'[:200] + ') needs an integer "id"')
        if not isinstance(c.get('name'), str) or not c['name'].strip():
            raise AnnotationError(f'{ann_file}: category {c["id"]} (entry {i}) has no "name" (got '
                                  f'{c.get("name")!r}); every category needs its class name')
    _duplicates([c['id'] for c in raw['categories']], 'category id', ann_file)
    _duplicates([c['name'] for c in raw['categories']], 'category name', ann_file)
    images = {}
    for i, im in enumerate(raw['images']):
        if not isinstance(im, dict) or not _is_int(im.get('id')):
            raise AnnotationError(f'{ann_file}: image entry {i} ({im!r}'[:200] + ') needs an integer "id"')
        for key in ('height', 'width'):
            v = im.get(key)
            if not _is_int(v) or v <= 0:
                raise AnnotationError(f'{ann_file}: image {im["id"]} (entry {i}) has {key} {v!r}'
                                      f'{" (missing)" if key not in im else ""}; give its size in pixels')
        if not isinstance(im.get('file_name'), str) or not im['file_name']:
            raise AnnotationError(f'{ann_file}: image {im["id"]} (entry {i}) has no "file_name"')
        if im['id'] in images:
            raise AnnotationError(f'{ann_file}: image id {im["id"]} is used twice (entries {images[im["id"]][0]} '
                                  f'and {i}: {images[im["id"]][1]["file_name"]!r}, {im["file_name"]!r}); every '
                                  'image needs its own id')
        images[im['id']] = (i, im)
    cat_ids = {c['id'] for c in raw['categories']}
    counts: Counter = Counter()
    examples: Dict[str, List] = {'box_outside_image': [], 'zero_area_box': []}
    ann_ids: Dict[Any, int] = {}
    for i, a in enumerate(raw['annotations']):
        if not isinstance(a, dict):
            raise AnnotationError(f'{ann_file}: annotation entry {i} is a {type(a).__name__}, not an object')
        aid = a.get('id')
        if not _is_int(aid):
            raise AnnotationError(f'{ann_file}: annotation entry {i} has the id {aid!r}; ids are integers')
        if aid in ann_ids:
            raise AnnotationError(f'{ann_file}: annotation id {aid} is used twice (entries {ann_ids[aid]} and {i})')
        ann_ids[aid] = i
        entry = images.get(a.get('image_id')) if _is_int(a.get('image_id')) else None
        if entry is None:
            raise AnnotationError(f"{ann_file}: annotation {aid} refers to unknown image {a.get('image_id')!r}")
        im = entry[1]
        if not _is_int(a.get('category_id')) or a['category_id'] not in cat_ids:
            raise AnnotationError(f"{ann_file}: annotation {aid} has unknown category {a.get('category_id')!r}")
        if a.get('iscrowd', 0) not in (0, 1) or isinstance(a.get('iscrowd', 0), float):
            raise AnnotationError(f"{ann_file}: annotation {aid} has iscrowd {a.get('iscrowd')!r}; use 0 or 1")
        box = a.get('bbox')
        if box is None:
            raise AnnotationError(f'{ann_file}: annotation {aid} (image {im["id"]}) has no "bbox" [x, y, w, h]')
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise AnnotationError(f'{ann_file}: annotation {aid} (image {im["id"]}) has bbox {box!r}'[:300]
                                  + '; a bbox is [x, y, width, height] of finite numbers')
        if 'area' not in a or not _is_number(a['area']):
            raise AnnotationError(f'{ann_file}: annotation {aid} (image {im["id"]}) has area {a.get("area")!r}'
                                  f'{" (missing)" if "area" not in a else ""}; give the mask area in pixels')
        x, y, w, h = box
        inter_w = max(0, min(x + w, im['width']) - max(x, 0))
        inter_h = max(0, min(y + h, im['height']) - max(y, 0))
        if inter_w * inter_h == 0:
            counts['box_outside_image'] += 1
            examples['box_outside_image'].append(aid)
        elif a['area'] <= 0 or w < 1 or h < 1:
            counts['zero_area_box'] += 1
            examples['zero_area_box'].append(aid)
        if check_masks and 'segmentation' in a:
            check_segmentation(a['segmentation'], aid, im['id'], im['height'], im['width'], ann_file)
    for key, ids in examples.items():
        counts[f'{key}_ids'] = ids[:10]  # type: ignore[assignment]
    return counts


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that validates its annotation file (see module doc).

    Args:
        keep_classes: class indices whose annotations are kept (the others
            are dropped but the label space stays whole): open-vocabulary
            training on base classes only. None keeps all.
    """

    def __init__(self, *args, keep_classes=None, **kwargs) -> None:
        self.keep_classes = None if keep_classes is None else set(int(i) for i in keep_classes)
        super().__init__(*args, **kwargs)

    def parse_data_info(self, raw_data_info: dict):
        info = super().parse_data_info(raw_data_info)
        if self.keep_classes is not None:
            info['instances'] = [i for i in info['instances'] if i['bbox_label'] in self.keep_classes]
        return info

    def load_data_list(self):
        try:
            with open(self.ann_file) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f'annotation file {self.ann_file!r} does not exist')
        except json.JSONDecodeError as e:
            raise AnnotationError(f'{self.ann_file!r} is not valid JSON ({e}); re-export or re-download it') from e
        counts = validate_coco(raw, self.ann_file)
        self.skipped = counts
        parts = [f'{counts[k]} with {what} (ids e.g. {counts[k + "_ids"]})'
                 for k, what in (('box_outside_image', 'a box outside its image'),
                                 ('zero_area_box', 'a box narrower than 1 pixel or zero area'))
                 if counts[k]]
        if parts:
            print_log(f'{self.ann_file}: mmdet skips annotations: ' + '; '.join(parts) + '. Fix them to train '
                      'and evaluate on them.', logger='current', level=logging.WARNING)
        names = [c['name'] for c in raw['categories']]
        missing = [c for c in self.metainfo['classes'] if c not in names]
        if missing:
            raise AnnotationError(f'{self.ann_file}: classes {missing[:10]} of the config are not categories '
                                  f'of the file (it has {names[:10]}...); fix metainfo.classes')
        return super().load_data_list()


@TRANSFORMS.register_module()
class CheckImageSize(BaseTransform):
    """After ``LoadImageFromFile``: the image must have the annotated size."""

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        if 'height' in results and (results['height'], results['width']) != (h, w):
            raise AnnotationError(f"{results.get('img_path')}: image is {w}x{h} but its annotation says "
                                  f"{results['width']}x{results['height']}; the annotations belong to "
                                  'another version of the image')
        return results
