"""SA-1B images (and dumped SAM features) for SAM2CLIP distillation.

Layout: ``data_root/<img_dir>/sa_*.jpg`` (+ ``sa_*.json``, unused here) and a
split list ``data_root/<split_file>`` with one image name per line (with or
without extension; entries may be in subfolders of the image folder, never
outside it; blank and ``#`` lines are skipped). Dumped teacher features live
in ``data_root/<feat_dir>/<entry without extension>.pth``
(``tools/dump_sam_features.py``), mirroring the image folder, so two images
with the same name in different folders never share a feature.
"""
import os.path as osp
from typing import List, Optional, Tuple

import torch
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PackDetInputs
from mmengine.dataset import BaseDataset

from ..registry import DATASETS, TRANSFORMS


def split_entry_key(name: str, split: str = 'split list', line_no: int = 0) -> Tuple[str, str]:
    """``(feature key, relative image path)`` of one split-list entry.

    The key is the entry's path relative to the image folder without its
    extension (``'sub/sa_1'`` for ``'sub/sa_1.jpg'``): images with the same
    file name in two folders get two features. Entries must stay inside the
    image folder: absolute paths and ``..`` are refused, since the key also
    names the feature file that ``tools/dump_sam_features.py`` writes.
    """
    where = f'{split}: line {line_no} ({name!r})'
    if not isinstance(name, str):
        raise TypeError(f'{where} is a {type(name).__name__}, not an image path (str)')
    if '\0' in name:
        raise ValueError(f'{where} contains a NUL character')
    if name.startswith(('/', '\\')) or osp.isabs(name) or (len(name) > 1 and name[1] == ':'):
        raise ValueError(f'{where} is an absolute path; list images relative to the image folder '
                         '(img_dir)')
    parts = [p for p in name.replace('\\', '/').split('/') if p not in ('', '.')]
    if '..' in parts:
        raise ValueError(f'{where} leaves the image folder (".."); list images relative to the image '
                         'folder (img_dir), inside it')
    if not parts:
        raise ValueError(f'{where} names no image')
    rel = '/'.join(parts)
    key = osp.splitext(rel)[0]
    if not osp.basename(key):
        raise ValueError(f'{where} names no image')
    return key, rel


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
        with open(split, encoding='utf-8-sig') as f:
            lines = [(i + 1, line.strip()) for i, line in enumerate(f)]
        entries = [(n, line) for n, line in lines if line and not line.startswith('#')]
        if not entries:
            raise ValueError(f'split list {split!r} is empty')
        data, seen = [], {}
        for i, (line_no, name) in enumerate(entries):
            key, rel = split_entry_key(name, split, line_no)
            if key in seen:
                other_no, other = seen[key]
                raise ValueError(
                    f'{split}: line {line_no} ({name!r}) and line {other_no} ({other!r}) '
                    f'{"list the same image" if other == name else "would share one feature file"} '
                    f'({key}.pth); list each image once and give images distinct names')
            seen[key] = (line_no, name)
            img = osp.join(img_dir, rel if osp.splitext(rel)[1] else rel + '.jpg')
            item = dict(img_path=img, img_id=i, name=key)
            if self.feat_dir is not None:
                item['feat_path'] = osp.join(root, self.feat_dir, key + '.pth')
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
