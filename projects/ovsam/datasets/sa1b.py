"""SA-1B images (and dumped SAM features) for SAM2CLIP distillation.

Layout: ``data_root/<img_dir>/sa_*.jpg`` (+ ``sa_*.json``, unused here) and a
split list ``data_root/<split_file>`` with one image name per line (with or
without extension). Dumped teacher features live in
``data_root/<feat_dir>/<name>.pth`` (``tools/dump_sam_features.py``).
"""
import os.path as osp
from typing import List, Optional

import torch
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PackDetInputs
from mmengine.dataset import BaseDataset

from ..registry import DATASETS, TRANSFORMS


@DATASETS.register_module()
class SA1BDataset(BaseDataset):
    """Images listed in a split file; no annotations are needed for distillation.

    Args:
        data_root: dataset root.
        split_file: list of image names relative to ``data_root``.
        img_dir: folder of the images, relative to ``data_root``.
        feat_dir: folder of dumped teacher features, or None (live teacher).
    """

    METAINFO = dict(classes=())

    def __init__(self, data_root: str, split_file: str = 'train.txt', img_dir: str = '',
                 feat_dir: Optional[str] = None, **kwargs) -> None:
        self.split_file = split_file
        self.img_dir = img_dir
        self.feat_dir = feat_dir
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> List[dict]:
        root = self.data_root
        split = osp.join(root, self.split_file)
        img_dir = osp.join(root, self.img_dir)
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f'SA-1B image folder {img_dir!r} does not exist: extract the SA-1B tars '
                                    'there (or generate toy data with tools/generate_shapes.py)')
        if not osp.isfile(split):
            raise FileNotFoundError(
                f'SA-1B split list {split!r} does not exist. Make one with e.g.\n'
                f'  ls {img_dir} | grep "\\.jpg$" | sed "s/\\.jpg$//" > {split}')
        with open(split) as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError(f'split list {split!r} is empty')
        data = []
        for i, name in enumerate(names):
            stem = osp.splitext(name)[0]
            img = osp.join(img_dir, name if osp.splitext(name)[1] else stem + '.jpg')
            item = dict(img_path=img, img_id=i, name=stem)
            if self.feat_dir is not None:
                item['feat_path'] = osp.join(root, self.feat_dir, stem + '.pth')
            data.append(item)
        return data


@TRANSFORMS.register_module()
class LoadTeacherFeature(BaseTransform):
    """Load a dumped SAM image embedding ``(C, h, w)`` into ``results['teacher_feat']``."""

    def transform(self, results: dict) -> dict:
        path = results.get('feat_path')
        if path is None or not osp.isfile(path):
            raise FileNotFoundError(f'teacher feature {path!r} is missing: run tools/dump_sam_features.py '
                                    'for this split first (it skips features already written)')
        feat = torch.load(path, map_location='cpu', weights_only=True)
        if not torch.is_tensor(feat) or feat.dim() != 3:
            raise ValueError(f'{path!r} is not a (C, h, w) feature tensor; delete it and dump again')
        results['teacher_feat'] = feat.float()
        return results


@TRANSFORMS.register_module()
class PackDistillInputs(PackDetInputs):
    """``PackDetInputs`` that also carries ``teacher_feat`` into the data sample."""

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        if 'teacher_feat' in results:
            packed['data_samples'].teacher_feat = results['teacher_feat']
        return packed
