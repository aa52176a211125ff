"""Image-level classification data (ImageNet-21k style) as CLIP2SAM instances.

The paper co-trains CLIP2SAM's recognition on ImageNet-21k: one label per
image, prompted with one box covering the whole image, and no mask (so only
the classification loss applies; see ``OVSAM.loss``). :class:`ImageLevelDataset`
reads the data with mmpretrain's datasets (``ImageNet21k`` / ``CustomDataset``),
in either of their layouts:

* folder layout: ``<img>/<class folder>/<image>``; the folders are the classes
  (WordNet ids such as ``n01440764`` in ImageNet-21k);
* annotation-file layout: ``<ann_file>`` lines ``relative/path.JPEG LABEL``,
  ``LABEL`` indexing the class list.

Class names come from ``classes`` (a ``.txt`` file or a list) or from the
folder names. A class list whose lines are ``'n01440764 tench,Tinca tinca'``
keeps the WordNet ids (``metainfo['wnids']``) and, in the folder layout, maps
each folder to its class by id, so the folder order does not matter. A folder
or a label that is not in the class list is an error.

:class:`LoadWholeImageBox` (after ``LoadImageFromFile``) turns the image label
into the one instance mmdet's transforms and ``PackDetInputs`` expect: the box
``[0, 0, w, h]`` and its label, without a mask.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset

from ..registry import DATASETS, TRANSFORMS
from .checked_coco import AnnotationError
from .joint_labels import JointLabelsMixin

ClassSpec = Union[None, str, Sequence[str]]


def read_image_level_classes(classes: ClassSpec) -> Tuple[Optional[List[str]], List[str]]:
    """``(names, wnids)`` of a class list: lines ``'n01440764 tench,Tinca tinca'``
    (WordNet id, then names) or plain class names (``wnids`` then all ``''``).
    None gives ``(None, [])`` (names from the folders)."""
    if classes is None:
        return None, []
    from ..vocabulary.joint import source_classes
    src = source_classes(classes if not isinstance(classes, tuple) else list(classes), 'image-level classes')
    return list(src.class_names), list(src.wnids)


@DATASETS.register_module()
class ImageLevelDataset(JointLabelsMixin, BaseDataset):
    """Image-level labels through mmpretrain, one whole-image instance per image.

    Args:
        data_root: root of ``ann_file`` and ``data_prefix``.
        data_prefix: ``dict(img='train/')``: the image folder.
        ann_file: the annotation list (``'meta/train.txt'``), or ``''`` for the
            folder layout.
        classes: class list (see the module doc), or None for the folder names.
        mmpretrain_type: mmpretrain dataset that reads the layout
            (``'ImageNet21k'`` or ``'CustomDataset'``).
        read_sizes: read each image's size from its header (``width`` /
            ``height`` in the data infos, which mmdet's
            ``GroupMultiSourceSampler`` groups by); slow for millions of images.
        joint_vocabulary / source: see :class:`JointLabelsMixin`.
        missing_hint: what to tell the user when the folder or the list is missing.
    """

    METAINFO = dict(classes=())

    def __init__(self, data_root: str = '', data_prefix: Optional[dict] = None, ann_file: str = '',
                 classes: ClassSpec = None, mmpretrain_type: str = 'CustomDataset', read_sizes: bool = False,
                 joint_vocabulary: Optional[str] = None, source: Optional[str] = None,
                 missing_hint: Optional[str] = None, **kwargs) -> None:
        self._init_joint(joint_vocabulary, source)
        self.classes_spec = classes
        self.mmpretrain_type = mmpretrain_type
        self.read_sizes = read_sizes
        self.missing_hint = missing_hint
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=data_prefix or dict(img=''), **kwargs)
        if not self._fully_initialized:
            self._use_joint_metainfo()

    # ---------------------------------------------------------------- loading
    def _missing(self, path: str, what: str) -> FileNotFoundError:
        how = self.missing_hint or (
            'Put the images in class folders (<img>/<class>/<image>, the ImageNet-21k layout) or list them in an '
            "annotation file ('<folder>/<image> <label>' per line, label indexing the class list), e.g.\n"
            "  cd <img> && find . -name '*.JPEG' | sed 's|^./||' | sort > files.txt  # then append each "
            'file\'s label')
        return FileNotFoundError(f'image-level data: {what} {path!r} does not exist. {how}')

    def _pretrain_dataset(self, img_dir: str):
        import mmpretrain.datasets as pretrain_datasets
        cls = getattr(pretrain_datasets, self.mmpretrain_type, None)
        if not (isinstance(cls, type) and issubclass(cls, pretrain_datasets.CustomDataset)):
            raise ValueError(f'mmpretrain_type {self.mmpretrain_type!r} is not one of mmpretrain\'s folder/list '
                             "datasets; use 'ImageNet21k' or 'CustomDataset'")
        return cls(data_root='', data_prefix=img_dir, ann_file=self.ann_file or '', lazy_init=False, pipeline=[])

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img', '') or self.data_root
        spec = self.classes_spec
        if isinstance(spec, str) and spec.lower().endswith(('.txt', '.json')) and not osp.isfile(spec):
            raise self._missing(spec, 'class list')
        names, wnids = read_image_level_classes(spec)
        if self.ann_file:
            if not osp.isfile(self.ann_file):
                raise self._missing(self.ann_file, 'annotation list')
            if names is None:
                raise ValueError(f'image-level data: the annotation list {self.ann_file!r} gives label numbers; '
                                 'give the classes they index with classes=FILE (one class per line, or '
                                 "'n01440764 tench,Tinca tinca' lines)")
        elif not osp.isdir(img_dir):
            raise self._missing(img_dir, 'image folder')
        ds = self._pretrain_dataset(img_dir)
        if self.ann_file:
            label_of = self._labels_from_list(ds, len(names))
        else:
            names, wnids, label_of = self._labels_from_folders(ds, names, wnids)
        self._check_source_classes(names, self.ann_file or img_dir)
        data_list = []
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            label = label_of(info, i)
            item = dict(img_path=info['img_path'], img_id=i, image_label=int(self._to_joint([label])[0]),
                        source_label=label)
            if self.read_sizes:
                from PIL import Image
                with Image.open(info['img_path']) as im:
                    item['width'], item['height'] = im.size
            data_list.append(item)
        self._metainfo = dict(classes=tuple(names), wnids=tuple(wnids))
        self._use_joint_metainfo()
        return data_list

    def _labels_from_list(self, ds, num_classes: int):
        def label_of(info, i):
            label = int(info['gt_label'])
            if not 0 <= label < num_classes:
                raise AnnotationError(
                    f'{self.ann_file}: entry {i} ({info["img_path"]}) has label {label}, but the class list '
                    f'({self.classes_spec!r}) has {num_classes} classes (0..{num_classes - 1}): an unknown '
                    'class. Fix the list or give the full class list.')
            return label
        return label_of

    def _labels_from_folders(self, ds, names, wnids):
        folders = list(ds.folder_to_idx)  # sorted folder names, mmpretrain's label order
        from ..vocabulary.joint import is_wnid
        if names is None:
            if all(is_wnid(f) for f in folders):
                raise ValueError(f'image-level data: the class folders of {ds.img_prefix!r} are WordNet ids '
                                 f'({folders[0]}, ...); give their names with classes=FILE, lines '
                                 "'n01440764 tench,Tinca tinca'")
            names, wnids = folders, [f if is_wnid(f) else '' for f in folders]
            return names, wnids, lambda info, i: int(info['gt_label'])
        if any(wnids):
            index = {w: k for k, w in enumerate(wnids) if w}
            what = 'WordNet ids'
        else:
            from ..vocabulary.names import split_synonyms
            index = {split_synonyms(n)[0]: k for k, n in enumerate(names)}
            what = 'class names (first synonyms)'
        keys = [f if any(wnids) else f.replace('_', ' ').lower() for f in folders]
        unknown = [f for f, k in zip(folders, keys) if k not in index]
        if unknown:
            raise AnnotationError(f'image-level data: class folders {unknown[:5]} of {ds.img_prefix!r} are not in '
                                  f'the class list {self.classes_spec!r} (matched by {what}): unknown classes. Add '
                                  'them to the list or remove the folders.')
        folder_label = [index[k] for k in keys]
        return names, wnids, lambda info, i: folder_label[int(info['gt_label'])]


@TRANSFORMS.register_module()
class LoadWholeImageBox(BaseTransform):
    """After ``LoadImageFromFile``: the image's label as one instance, the box
    ``[0, 0, w, h]`` (``gt_bboxes``, ``gt_bboxes_labels``, ``gt_ignore_flags``),
    no mask. mmdet's resize, flip and crop transforms then move the box with the
    image, so the prompt always covers what is left of the image."""

    def transform(self, results: dict) -> dict:
        from mmdet.structures.bbox import HorizontalBoxes
        if 'image_label' not in results:
            raise KeyError('LoadWholeImageBox needs "image_label" (an ImageLevelDataset sample)')
        h, w = results['img'].shape[:2]
        results['gt_bboxes'] = HorizontalBoxes(np.array([[0, 0, w, h]], dtype=np.float32))
        results['gt_bboxes_labels'] = np.array([results['image_label']], dtype=np.int64)
        results['gt_ignore_flags'] = np.array([False])
        return results
