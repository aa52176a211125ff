"""COCO-format data with annotation checks that fail loudly and say where.

mmdet's ``CocoDataset`` trusts its input: a corrupt JSON surfaces as a bare
decoder error, a 2-point polygon or an empty mask becomes a silent zero-area
instance, and an image of another size than annotated is resized as if
nothing were wrong. Here each of those is an error naming the file, image and
annotation, and what to do.
"""
import json

from mmcv.transforms import BaseTransform
from mmdet.datasets import CocoDataset

from ..registry import DATASETS, TRANSFORMS


class AnnotationError(ValueError):
    """An annotation that cannot be used as it is."""


def check_segmentation(seg, ann_id, img_id, height, width, ann_file):
    where = f'{ann_file}: annotation {ann_id} (image {img_id})'
    if isinstance(seg, list):
        if not seg:
            raise AnnotationError(f'{where} has an empty segmentation; remove the annotation or give its mask')
        for poly in seg:
            if len(poly) < 6 or len(poly) % 2:
                raise AnnotationError(f'{where} has a polygon with {len(poly) // 2} points (at least 3 '
                                      'x, y pairs are needed); fix or drop that polygon')
    elif isinstance(seg, dict):
        size = seg.get('size')
        if size is None or 'counts' not in seg:
            raise AnnotationError(f'{where}: RLE segmentation needs "size" and "counts"')
        if list(size) != [height, width]:
            raise AnnotationError(f'{where}: RLE size {list(size)} differs from the image size '
                                  f'{[height, width]} in the annotation file')
        from pycocotools import mask as mask_utils
        rle = dict(seg)
        if isinstance(rle['counts'], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        if int(mask_utils.area(rle)) == 0:
            raise AnnotationError(f'{where} has an empty mask; remove the annotation or fix its mask')
    else:
        raise AnnotationError(f'{where}: segmentation must be polygons or RLE, got {type(seg).__name__}')


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
        for key in ('images', 'annotations', 'categories'):
            if key not in raw:
                raise AnnotationError(f'{self.ann_file!r} has no "{key}" list: not a COCO instance file')
        images = {im['id']: im for im in raw['images']}
        cat_ids = {c['id'] for c in raw['categories']}
        for a in raw['annotations']:
            im = images.get(a.get('image_id'))
            if im is None:
                raise AnnotationError(f"{self.ann_file}: annotation {a.get('id')} refers to unknown image "
                                      f"{a.get('image_id')}")
            if a.get('category_id') not in cat_ids:
                raise AnnotationError(f"{self.ann_file}: annotation {a.get('id')} has unknown category "
                                      f"{a.get('category_id')}")
            if 'segmentation' in a and not a.get('iscrowd', 0):
                check_segmentation(a['segmentation'], a.get('id'), im['id'], im['height'], im['width'],
                                   self.ann_file)
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
