"""COCO-format sources of a co-training run: segmentation or detection data.

* :class:`CoTrainCocoDataset` — any COCO-format instance file: segmentation
  data (COCO, V3Det/Objects365 with masks) when its pipeline loads masks
  (``LoadAnnotations(with_mask=True)``), detection data (V3Det, Objects365:
  boxes and labels, no masks; CLIP2SAM then learns only recognition from it)
  when it does not. Classes come from the config's ``metainfo`` or, by
  default, from the file's categories (by id). A file whose annotations lack
  masks while the pipeline loads them is an error naming the annotation, not a
  ``KeyError`` deep inside mmdet.
* :class:`CoTrainLVISDataset` — LVIS v1 without rare classes, the same with
  joint labels.

Both map their labels into a joint vocabulary when given one
(:mod:`ovsam.datasets.joint_labels`).
"""
import json
import os.path as osp
from typing import Optional

from mmdet.datasets import LVISV1Dataset

from ..registry import DATASETS
from .checked_coco import AnnotationError, CheckedCocoDataset
from .coco_ov import LVISV1NoRareDataset
from .joint_labels import JointLabelsMixin


def pipeline_loads_masks(pipeline) -> bool:
    """Whether a dataset pipeline (configs or built transforms) loads masks."""
    for t in pipeline or ():
        if isinstance(t, dict):
            if t.get('type') in ('LoadAnnotations', 'mmdet.LoadAnnotations') and t.get('with_mask', False):
                return True
        elif type(t).__name__ == 'LoadAnnotations' and getattr(t, 'with_mask', False):
            return True
    return False


def _missing(path: str, what: str, hint: Optional[str]) -> FileNotFoundError:
    return FileNotFoundError(f'{what} {path!r} does not exist. ' + (hint or 'Check data_root and the paths of the '
                                                                       'config.'))


@DATASETS.register_module()
class CoTrainCocoDataset(JointLabelsMixin, CheckedCocoDataset):
    """A COCO-format source (segmentation or detection data), labels optionally joint.

    Args:
        joint_vocabulary / source: see :class:`JointLabelsMixin`.
        missing_hint: what to tell the user when the annotation file or the
            image folder is missing (how to make them).
        Other arguments: :class:`CheckedCocoDataset` (``metainfo=dict(classes=...)``
            optional: the file's categories by default).
    """

    def __init__(self, *args, joint_vocabulary: Optional[str] = None, source: Optional[str] = None,
                 missing_hint: Optional[str] = None, **kwargs) -> None:
        self._init_joint(joint_vocabulary, source)
        self.missing_hint = missing_hint
        self._given_classes = (kwargs.get('metainfo') or {}).get('classes')
        self.expects_masks = pipeline_loads_masks(kwargs.get('pipeline'))
        super().__init__(*args, **kwargs)
        if not self._fully_initialized:
            self._use_joint_metainfo()

    def load_data_list(self):
        if not osp.isfile(self.ann_file):
            raise _missing(self.ann_file, 'annotation file', self.missing_hint)
        img_dir = self.data_prefix.get('img', '')
        if img_dir and not osp.isdir(img_dir):
            raise _missing(img_dir, 'image folder', self.missing_hint)
        classes = self._given_classes
        if classes is None:
            classes = self._file_classes()
        self._metainfo = dict(self._metainfo, classes=tuple(classes))
        data_list = super().load_data_list()
        self._check_source_classes(classes, self.ann_file)
        for info in data_list:
            for inst in info['instances']:
                inst['bbox_label'] = int(self._to_joint([inst['bbox_label']])[0])
        self._use_joint_metainfo()
        return data_list

    def _file_classes(self):
        try:
            with open(self.ann_file) as f:
                cats = json.load(f).get('categories', [])
        except (ValueError, AttributeError):
            return self._metainfo.get('classes', ())  # CheckedCocoDataset then names the problem
        return [c['name'] for c in sorted(cats, key=lambda c: c.get('id', 0)) if isinstance(c, dict)]

    def parse_data_info(self, raw_data_info: dict):
        if self.expects_masks:
            for ann in raw_data_info['raw_ann_info']:
                if not ann.get('segmentation') and not ann.get('iscrowd', 0):
                    raise AnnotationError(
                        f"{self.ann_file}: annotation {ann.get('id')} (image {raw_data_info['raw_img_info']['id']}) "
                        'has no mask ("segmentation"), but the pipeline loads masks (LoadAnnotations '
                        'with_mask=True: segmentation data). For detection data (boxes and labels; CLIP2SAM '
                        'learns only recognition from them) use LoadAnnotations(with_bbox=True, with_mask=False) '
                        'and drop FilterAnnotations(by_mask=True); otherwise give every annotation its mask.')
        return super().parse_data_info(raw_data_info)


@DATASETS.register_module()
class CoTrainLVISDataset(JointLabelsMixin, LVISV1NoRareDataset):
    """LVIS v1, labels optionally joint; without the rare classes' annotations
    (training) unless ``drop_rare=False`` (evaluation)."""

    def __init__(self, *args, joint_vocabulary: Optional[str] = None, source: Optional[str] = None,
                 missing_hint: Optional[str] = None, drop_rare: bool = True, **kwargs) -> None:
        self._init_joint(joint_vocabulary, source)
        self.missing_hint = missing_hint
        self.drop_rare = drop_rare
        super().__init__(*args, **kwargs)
        if not self._fully_initialized:
            self._use_joint_metainfo()

    def load_data_list(self):
        if not osp.isfile(self.ann_file):
            raise _missing(self.ann_file, 'LVIS annotation file', self.missing_hint)
        self._metainfo = dict(self._metainfo, classes=tuple(LVISV1NoRareDataset.METAINFO['classes']))
        data_list = super().load_data_list() if self.drop_rare else LVISV1Dataset.load_data_list(self)
        self._check_source_classes(self._metainfo['classes'], self.ann_file)
        for info in data_list:
            for inst in info['instances']:
                inst['bbox_label'] = int(self._to_joint([inst['bbox_label']])[0])
        self._use_joint_metainfo()
        return data_list
