"""A light, cached index of a COCO / LVIS annotation file.

Several evaluation pieces need a little of the annotation file the dataset
already reads (category ids and names, image sizes, LVIS frequencies): the
detector-proposal loader maps detector category ids to label indices, the
LVIS prompt metric and the LVIS model need the frequent / common / rare
split. This module parses the file once per process and keeps only that.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ['AnnotationIndex', 'load_annotation_index', 'frequency_groups', 'labels_of_frequencies']

_CACHE: Dict[Tuple[str, float, int], 'AnnotationIndex'] = {}
_CACHE_SIZE = 8


class AnnotationIndex:
    """Categories and image sizes of one annotation file.

    Attributes:
        path: absolute path of the file.
        categories: the file's category dicts in file order (``id``,
            ``name`` and, for LVIS, ``frequency``): the order in which
            pycocotools / lvis-api, hence mmdet's datasets and metrics,
            number the labels.
        image_sizes: ``{image_id: (height, width)}``.
    """

    def __init__(self, path: str, categories: List[dict], image_sizes: Dict[int, Tuple[int, int]]) -> None:
        self.path = path
        self.categories = list(categories)
        self.image_sizes = image_sizes

    @property
    def cat_ids(self) -> List[int]:
        return [c['id'] for c in self.categories]

    def label_cat_ids(self, classes: Optional[Sequence[str]] = None) -> List[int]:
        """Category id of each label index, the way mmdet's datasets number them.

        ``CocoDataset`` keeps the file's categories whose names are in
        ``classes``, in file order (not in the order of ``classes``);
        ``LVISV1Dataset`` keeps all categories (``classes=None``).
        """
        if classes is None:
            return self.cat_ids
        wanted = set(classes)
        ids = [c['id'] for c in self.categories if c['name'] in wanted]
        missing = wanted - {c['name'] for c in self.categories}
        if missing:
            raise ValueError(f'{self.path}: classes {sorted(missing)[:5]} ({len(missing)} in all) are not '
                             'categories of this annotation file')
        return ids


def load_annotation_index(path: str) -> AnnotationIndex:
    """Parse ``path`` (once per process and file version) into an :class:`AnnotationIndex`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'ann_file must be a path (str), got {type(path).__name__} {path!r}'[:200])
    path = osp.abspath(os.fspath(path))
    if osp.isdir(path):
        raise IsADirectoryError(f'annotation file {path!r} is a directory; give the .json file inside it')
    if not osp.isfile(path):
        raise FileNotFoundError(f'annotation file {path!r} does not exist')
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _CACHE:
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except ValueError as e:
            raise ValueError(f'{path!r} is not valid JSON ({e}); re-export or re-download it') from None
        if not isinstance(data, dict) or 'categories' not in data or 'images' not in data:
            raise ValueError(f'{path!r} is not a COCO/LVIS annotation file (needs "images" and "categories")')
        cats, sizes = _categories(data, path), _image_sizes(data, path)
        while len(_CACHE) >= _CACHE_SIZE:  # bounded: a long process reading many files does not grow
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = AnnotationIndex(path, cats, sizes)
    return _CACHE[key]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _categories(data: dict, path: str) -> List[dict]:
    if not isinstance(data['categories'], list):
        raise ValueError(f'{path}: "categories" is a {type(data["categories"]).__name__}, not a list')
    cats, ids, names = [], {}, {}
    for i, c in enumerate(data['categories']):
        if not isinstance(c, dict) or not _is_int(c.get('id')):
            raise ValueError(f'{path}: category entry {i} ({c!r}'[:200] + ') needs an integer "id"')
        if not isinstance(c.get('name'), str) or not c['name'].strip():
            raise ValueError(f'{path}: category {c["id"]} (entry {i}) has no "name" (got {c.get("name")!r})')
        for seen, value, what in ((ids, c['id'], 'category id'), (names, c['name'], 'category name')):
            if value in seen:
                raise ValueError(f'{path}: {what} {value!r} is used twice (entries {seen[value]} and {i})')
            seen[value] = i
        cats.append({k: c[k] for k in ('id', 'name', 'frequency') if k in c})
    return cats


def _image_sizes(data: dict, path: str) -> Dict[int, Tuple[int, int]]:
    if not isinstance(data['images'], list):
        raise ValueError(f'{path}: "images" is a {type(data["images"]).__name__}, not a list')
    sizes, entry = {}, {}
    for i, im in enumerate(data['images']):
        if not isinstance(im, dict) or not _is_int(im.get('id')):
            raise ValueError(f'{path}: image entry {i} ({im!r}'[:200] + ') needs an integer "id"')
        for k in ('height', 'width'):
            v = im.get(k)
            if not _is_int(v) or v <= 0:
                raise ValueError(f'{path}: image {im["id"]} (entry {i}) has {k} {v!r}'
                                 f'{" (missing)" if k not in im else ""}; give its size in pixels')
        if im['id'] in sizes:
            raise ValueError(f'{path}: image id {im["id"]} is used twice (entries {entry[im["id"]]} and {i}); '
                             'every image needs its own id')
        sizes[im['id']] = (im['height'], im['width'])
        entry[im['id']] = i
    return sizes


def frequency_groups(ann_file: str) -> Dict[str, List[int]]:
    """LVIS label indices (file order of the categories) per frequency: ``{'f': [...], 'c': [...], 'r': [...]}``."""
    index = load_annotation_index(ann_file)
    groups: Dict[str, List[int]] = {'f': [], 'c': [], 'r': []}
    for label, cat in enumerate(index.categories):
        freq = cat.get('frequency')
        if freq not in groups:
            raise ValueError(f'{ann_file!r}: category {cat["id"]} ({cat["name"]!r}) has frequency {freq!r}; '
                             "an LVIS file gives every category 'f', 'c' or 'r'")
        groups[freq].append(label)
    return groups


def labels_of_frequencies(ann_file: str, frequencies: Sequence[str]) -> List[int]:
    """Sorted label indices of the categories whose frequency is in ``frequencies``."""
    groups = frequency_groups(ann_file)
    bad = set(frequencies) - set(groups)
    if bad:
        raise ValueError(f'unknown LVIS frequencies {sorted(bad)}; use f, c, r')
    return sorted(i for f in frequencies for i in groups[f])
