"""Class names: the one synonym syntax, validation and the vocabulary spec parser.

Syntax (everywhere: Python lists, class files, the tools, the web demo): one
class per list item or per line of a ``.txt`` file (``#`` lines are comments);
inside one class, commas separate synonyms (``'cup,mug'``), ``'_or_'`` and
``'/'`` count as commas and ``'_'`` as a space (``'tv_or_monitor'``,
``'traffic_light'``). Synonyms are compared lower-cased with runs of spaces
collapsed, so ``'Cat'``, ``'cat '`` and ``' CAT'`` are one class.
"""
import json
import os.path as osp
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

BUILTIN_VOCABULARIES = ('coco', 'coco-ov', 'lvis', 'shapes')
EMBEDDING_FILE_EXTS = ('.pth', '.pt')
CLASS_FILE_EXTS = ('.txt', '.json')

MAKE_COMMAND = ('python tools/gen_text_embeddings.py --clip-model NAME --clip-checkpoint CKPT '
                '--classes DATASET_OR_CLASS_FILE --out PATH')

VocabularySpec = Union[str, Sequence[str], 'Vocabulary']


def split_synonyms(class_name: str) -> List[str]:
    """``'tv_or_monitor/Screen'`` -> ``['tv', 'monitor', 'screen']``."""
    if not isinstance(class_name, str):
        raise TypeError(f'a class name must be a string, got {type(class_name).__name__} ({class_name!r})')
    text = class_name.replace('_or_', ',').replace('/', ',').replace('_', ' ')
    names = [' '.join(s.split()).lower() for s in text.split(',')]
    names = [s for s in names if s]
    if not names:
        raise ValueError(f'class name {class_name!r} has no usable synonym')
    return names


def class_key(class_name: str) -> Tuple[str, ...]:
    """What makes two class strings the same class: their normalised synonyms."""
    return tuple(sorted(set(split_synonyms(class_name))))


def check_class_names(names: Sequence[str]) -> List[str]:
    """Validate a vocabulary and return it as a list.

    Rejects a bare string (give a list: one class per item), non-strings (no
    ``str()`` coercion), classes without a usable synonym and duplicates:
    classes with the same synonyms ignoring case and spaces (``'Cat'``,
    ``'cat '``, ``' CAT'``).
    """
    if isinstance(names, str):
        raise TypeError(f'class names must be a list with one class per item, got the string {names!r} '
                        f'(use [{names!r}] for one class; commas inside an item separate synonyms)')
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f'class names must be a list of strings, got {type(names).__name__}') from None
    if not names:
        raise ValueError('empty vocabulary: give at least one class name')
    bad = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        raise TypeError(f'class names must be strings; (index, type) of the others: {bad[:5]}'
                        f'{" ..." if len(bad) > 5 else ""}')
    first, dups = {}, []
    for i, n in enumerate(names):
        try:
            key = class_key(n)
        except ValueError as e:
            raise ValueError(f'class {i} ({n!r}) has no usable synonym: {e}') from None
        if key in first:
            dups.append((first[key], i))
        else:
            first[key] = i
    if dups:
        shown = '; '.join(f'{names[a]!r} (index {a}) and {names[b]!r} (index {b})' for a, b in dups[:5])
        raise ValueError(f'duplicate classes in the vocabulary (same synonyms, ignoring case and spaces): '
                         f'{shown}{" ..." if len(dups) > 5 else ""}. Give each class once; synonyms of one '
                         'class go in one item, separated by commas')
    return names


def short_name(class_name: str) -> str:
    """First synonym of a class string, for display."""
    try:
        return split_synonyms(class_name)[0]
    except (TypeError, ValueError):
        return str(class_name)


def match_class(query: str, class_names: Sequence[str]) -> Optional[int]:
    """Index of the first class sharing a synonym with ``query`` (case-insensitive), or None."""
    wanted = set(split_synonyms(query))
    for i, name in enumerate(class_names):
        try:
            if wanted & set(split_synonyms(name)):
                return i
        except (TypeError, ValueError):
            continue
    return None


def vocabulary_hash(class_names: Sequence[str]) -> str:
    """Short content hash of an ordered list of class names."""
    import hashlib
    return hashlib.sha256('\n'.join(class_names).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- sources
def builtin_class_names(name: str) -> List[str]:
    """Class names of a built-in vocabulary, in the dataset's label order:
    ``coco`` (80), ``coco-ov`` (the same 80 in COCO's order, with synonyms: the
    COCO open-vocabulary label space, as the released model uses it), ``lvis`` (1,203, v1) or
    ``shapes`` (10)."""
    key = name.strip().lower().replace('_', '-')
    if key == 'coco':
        from mmdet.datasets import CocoDataset
        return list(CocoDataset.METAINFO['classes'])
    if key == 'coco-ov':
        from ..datasets.coco_ov import COCO_CLASSES, with_synonyms
        return list(with_synonyms(COCO_CLASSES))
    if key == 'lvis':
        from mmdet.datasets import LVISV1Dataset
        return list(LVISV1Dataset.METAINFO['classes'])
    if key == 'shapes':
        from ..datasets.shapes import SHAPE_CLASSES
        return list(SHAPE_CLASSES)
    raise ValueError(f'unknown built-in vocabulary {name!r}; choose one of {", ".join(BUILTIN_VOCABULARIES)}')


def is_builtin(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower().replace('_', '-') in BUILTIN_VOCABULARIES


def parse_class_lines(text: str) -> List[str]:
    """One class per line; blank lines and lines starting with ``#`` are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith('#')]


def read_class_file(path: str) -> List[str]:
    """Class names from a ``.txt`` (one class per line, ``#`` comments) or a
    COCO annotation ``.json`` (its categories, by id)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'class file {path!r} does not exist')
    if path.lower().endswith('.json'):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or 'categories' not in data:
            raise ValueError(f'{path!r}: a .json vocabulary must be COCO annotations with "categories"')
        return [c['name'] for c in sorted(data['categories'], key=lambda c: c['id'])]
    with open(path, encoding='utf-8') as f:
        names = parse_class_lines(f.read())
    if not names:
        raise ValueError(f'{path!r} holds no class names')
    return names


@dataclass
class Vocabulary:
    """A resolved vocabulary spec.

    ``class_names`` are the classes in label order; ``embedding_file`` a text
    embedding file to load instead of running the text tower. Both are set for
    an official bare-tensor file given with its class names; only
    ``embedding_file`` for a file that stores its own names. Unpacks as the
    pair ``(embedding_file, class_names)``.
    """
    class_names: Optional[List[str]] = None
    embedding_file: Optional[str] = None

    def __iter__(self) -> Iterator:
        return iter((self.embedding_file, self.class_names))


def _names_from_item(item: str) -> List[str]:
    """Class names from one string: class file, built-in name, lines, or one class."""
    if '\n' in item:
        names = parse_class_lines(item)
        if not names:
            raise ValueError('no class names given (one class per line)')
        return names
    if osp.isfile(item):
        if item.lower().endswith(EMBEDDING_FILE_EXTS):
            raise ValueError(f'{item!r} is a text-embedding file; class names are wanted here '
                             '(a built-in name, a .txt/.json class file or a list of names)')
        return read_class_file(item)
    if is_builtin(item):
        return builtin_class_names(item)
    if item.lower().endswith(EMBEDDING_FILE_EXTS + CLASS_FILE_EXTS):
        raise FileNotFoundError(f'vocabulary file {item!r} does not exist')
    return [item]


def resolve_vocabulary(spec: VocabularySpec) -> Vocabulary:
    """Turn what a user gives into a :class:`Vocabulary`.

    ``spec`` is one string or a list of strings:

    - ``'coco'``, ``'coco-ov'``, ``'lvis'``, ``'shapes'``: a built-in dataset's classes;
    - a ``.txt`` file (one class per line, ``#`` comments) or COCO ``.json``;
    - a ``.pth`` / ``.pt`` text-embedding file, optionally followed by the
      class names of an official bare-tensor file (``['RN50x16_LVISV1Dataset.pth', 'lvis']``);
    - a string with line breaks: one class per line;
    - anything else: the class names themselves, one class per item (commas
      inside an item separate synonyms).

    Names are validated with :func:`check_class_names`; a missing file that
    looks like a path is an error, not a class name.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, str):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise TypeError(f'a vocabulary is a string or a list of strings, got {type(spec).__name__}')
    bad = [(i, type(s).__name__) for i, s in enumerate(items) if not isinstance(s, str)]
    if bad:
        raise TypeError(f'vocabulary items must be strings; (index, type) of the others: {bad[:5]}')
    items = [s.strip() for s in items]
    items = [s for s in items if s]
    if not items:
        raise ValueError('empty vocabulary: give a file, a built-in name '
                         f'({", ".join(BUILTIN_VOCABULARIES)}) or class names')
    first = items[0]
    if '\n' not in first and first.lower().endswith(EMBEDDING_FILE_EXTS):
        if not osp.isfile(first):
            raise FileNotFoundError(f'text-embedding file {first!r} does not exist. Make it with:\n  {MAKE_COMMAND}')
        rest = items[1:]
        if not rest:
            return Vocabulary(None, first)
        names = _names_from_item(rest[0]) if len(rest) == 1 else rest
        return Vocabulary(check_class_names(names), first)
    names = _names_from_item(first) if len(items) == 1 else items
    return Vocabulary(check_class_names(names), None)
