"""Resolving vocabulary specifications for the interactive tools.

A *vocabulary spec* is what a user types: a built-in dataset name (``coco``,
``lvis``, ``shapes``), a file (``.pth`` text-embedding file written by
``tools/gen_text_embeddings.py``, ``.txt`` with one class per line, COCO
``.json``) or the class names themselves. Inside one class name commas separate
synonyms (``'cup,mug'``), as everywhere in :mod:`ovsam.vocabulary`.
"""
import json
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

from ..vocabulary import split_synonyms

BUILTIN_VOCABULARIES = ('coco', 'lvis', 'shapes')


def builtin_class_names(name: str) -> List[str]:
    """Class names of a built-in vocabulary (``coco``, ``lvis`` or ``shapes``)."""
    key = name.strip().lower()
    if key == 'coco':
        from mmdet.datasets import CocoDataset
        return list(CocoDataset.METAINFO['classes'])
    if key == 'lvis':
        from mmdet.datasets import LVISV1Dataset
        return list(LVISV1Dataset.METAINFO['classes'])
    if key == 'shapes':
        from ..datasets.shapes import SHAPE_CLASSES
        return list(SHAPE_CLASSES)
    raise ValueError(f'unknown built-in vocabulary {name!r}; choose one of {BUILTIN_VOCABULARIES}')


def read_class_file(path: str) -> List[str]:
    """Class names from a ``.txt`` (one per line) or COCO annotation ``.json``."""
    if path.endswith('.json'):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or 'categories' not in data:
            raise ValueError(f'{path!r}: a .json vocabulary must be COCO annotations with "categories"')
        return [c['name'] for c in sorted(data['categories'], key=lambda c: c['id'])]
    with open(path) as f:
        names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith('#')]
    if not names:
        raise ValueError(f'{path!r} holds no class names')
    return names


def resolve_vocabulary(spec: Union[str, Sequence[str]]) -> Tuple[Optional[str], Optional[List[str]]]:
    """Turn a spec into ``(embedding_file, None)`` or ``(None, class_names)``.

    ``spec`` is one string or a list; a single item that is an existing file or
    a built-in name is resolved, anything else is taken as class names.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    items = [s for s in (str(i).strip() for i in items) if s]
    if not items:
        raise ValueError('empty vocabulary: give a file, a built-in name (coco, lvis, shapes) or class names')
    if len(items) == 1:
        one = items[0]
        if osp.isfile(one):
            if one.endswith(('.pth', '.pt')):
                return one, None
            return None, read_class_file(one)
        if one.lower() in BUILTIN_VOCABULARIES:
            return None, builtin_class_names(one)
    return None, items


def parse_name_list(text: str) -> List[str]:
    """A user-typed list, one class per comma (``'cat, dog, traffic light'``).

    Synonyms of one class can be joined with ``|`` (``'cup|mug, dog'``).
    """
    names = [t.strip().replace('|', ',') for t in text.replace('\n', ',').split(',')]
    names = [n for n in names if n.strip(', ')]
    if not names:
        raise ValueError('no class names given')
    return names


def short_name(class_name: str) -> str:
    """First synonym of a class string, for display."""
    try:
        return split_synonyms(class_name)[0]
    except ValueError:
        return class_name


def match_class(query: str, class_names: Sequence[str]) -> Optional[int]:
    """Index of the first class sharing a synonym with ``query`` (case-insensitive), or None."""
    wanted = set(split_synonyms(query))
    for i, name in enumerate(class_names):
        try:
            if wanted & set(split_synonyms(name)):
                return i
        except ValueError:
            continue
    return None
