"""Class names: the one synonym syntax, validation and the vocabulary spec parser.

Syntax (everywhere: Python lists, class files, the tools, the web demo): one
class per list item or per line of a ``.txt`` file (``#`` lines are comments);
inside one class, commas separate synonyms (``'cup,mug'``), ``'_or_'`` and
``'/'`` count as commas and ``'_'`` as a space (``'tv_or_monitor'``,
``'traffic_light'``). Synonyms are compared lower-cased with runs of spaces
collapsed, so ``'Cat'``, ``'cat '`` and ``' CAT'`` are one class. For telling
classes apart (duplicates, look-ups) synonyms are also compared in Unicode
NFKC form, case-folded (``'café'`` written with a combining accent, full-width
``'ｃａｔ'`` and ``'STRASSE'`` / ``'straße'`` each match their plain twin).
Invisible format characters (zero-width spaces, joiners, direction marks) and
unpaired surrogates are refused in class names.

When is a string a file? Built-in names (``coco``, ``coco-ov``, ``lvis``,
``shapes``) always win. Otherwise a string is read as a file only when it
looks like a path: it ends with ``.txt``/``.json`` (class files) or
``.pth``/``.pt`` (embedding files), or it contains a folder separator and
the file exists (``./my_classes``). A single word such as ``'cat'`` is a
class name even when a file called ``cat`` sits in the working folder.
"""
import json
import os
import re
import unicodedata
import os.path as osp
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

BUILTIN_VOCABULARIES = ('coco', 'coco-ov', 'lvis', 'shapes')
EMBEDDING_FILE_EXTS = ('.pth', '.pt')
CLASS_FILE_EXTS = ('.txt', '.json')
JOINT_FORMAT = 'ovsam-joint-vocabulary-v1'  # ovsam.vocabulary.joint's JSON files

MAKE_COMMAND = ('python tools/gen_text_embeddings.py --clip-model NAME --clip-checkpoint CKPT '
                '--classes DATASET_OR_CLASS_FILE --out PATH')

VocabularySpec = Union[str, Sequence[str], 'Vocabulary']


def split_synonyms(class_name: str) -> List[str]:
    """``'tv_or_monitor/Screen'`` -> ``['tv', 'monitor', 'screen']``."""
    if not isinstance(class_name, str):
        raise TypeError(f'a class name must be a string, got {type(class_name).__name__} ({class_name!r}); '
                        'no str() conversion is done: give the name as text')
    text = class_name.replace('_or_', ',').replace('/', ',').replace('_', ' ')
    names = [' '.join(s.split()).lower() for s in text.split(',')]
    names = [s for s in names if s]
    if not names:
        raise ValueError(f'class name {class_name!r} has no usable synonym')
    return names


def _fold(synonym: str) -> str:
    """A synonym as compared: NFKC form, case-folded, spaces collapsed."""
    if synonym.isascii():  # NFKC leaves ASCII as it is (fast path for large vocabularies)
        return ' '.join(synonym.casefold().split())
    return ' '.join(unicodedata.normalize('NFKC', synonym).casefold().split())


def class_key(class_name: str) -> Tuple[str, ...]:
    """What makes two class strings the same class: their normalised synonyms
    (NFKC, case-folded)."""
    return tuple(sorted({_fold(s) for s in split_synonyms(class_name)}))


def _invisible(name: str) -> Optional[str]:
    """The first invisible format character or unpaired surrogate in ``name``."""
    if name.isascii():  # no format characters or surrogates in ASCII
        return None
    for c in name:
        cat = unicodedata.category(c)
        if cat in ('Cf', 'Cs'):
            return c
    return None


_LINE_BREAK = re.compile('[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]')
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f]')


def check_class_names(names: Sequence[str]) -> List[str]:
    """Validate a vocabulary and return it as a list.

    Rejects a bare string (give a list: one class per item), non-strings (no
    ``str()`` coercion), classes without a usable synonym, names with line
    breaks or other control characters, names starting with ``#`` (a comment
    line taken as a class), duplicates: classes with the same synonyms
    ignoring case, spaces and Unicode forms (``'Cat'``, ``'cat '``, ``' CAT'``,
    full-width ``'ｃａｔ'``); invisible format characters and unpaired surrogates. Two
    classes may share one synonym (``'cat'`` and ``'cat,kitty'``).
    """
    if names is None:
        raise TypeError('class names are None: give a list of class names (one class per item)')
    if isinstance(names, (bytes, bytearray)):
        raise TypeError(f'class names must be a list of strings, got bytes {bytes(names)[:40]!r}; decode them '
                        'first, one class per item')
    if isinstance(names, (set, frozenset, dict)):
        raise TypeError(f'class names must be an ordered list (label i is class i), got a '
                        f'{type(names).__name__}; use a list')
    if isinstance(names, str):
        raise TypeError(f'class names must be a list with one class per item, got the string {names!r} '
                        f'(use [{names!r}] for one class; commas inside an item separate synonyms)')
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f'class names must be a list of strings, got {type(names).__name__}') from None
    if not names:
        raise ValueError('empty vocabulary: give at least one class name')
    bad = [(i, n) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        shown = ', '.join(f'item {i} is {type(n).__name__} {n!r}'[:80] for i, n in bad[:5])
        raise TypeError(f'class names must be strings (no str() conversion is done): {shown}'
                        f'{" ..." if len(bad) > 5 else ""}. Give every class name as text')
    for i, n in enumerate(names):
        if _LINE_BREAK.search(n):
            raise ValueError(f'class {i} ({n!r}) contains a line break: give one class per item (a text with '
                             'one class per line is a vocabulary spec: resolve_vocabulary)')
        ctrl = _CONTROL.search(n)
        if ctrl:
            raise ValueError(f'class {i} ({n!r}) contains the control character {ctrl.group()!r}; remove it')
        bad = _invisible(n)
        if bad is not None:
            what = 'an unpaired surrogate' if unicodedata.category(bad) == 'Cs' else 'the invisible character'
            raise ValueError(f'class {i} ({n!r}) contains {what} {bad!r} (U+{ord(bad):04X}); it would make a '
                             'name that looks like another class but is not: remove it')
        if n.strip().startswith('#'):
            raise ValueError(f'class {i} ({n!r}) starts with "#": that is a comment line, not a class; '
                             'remove it from the list')
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
        raise ValueError('duplicate classes in the vocabulary (same synonyms, ignoring case, spaces and Unicode '
                         f'forms): '
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
    wanted = set(class_key(query))
    for i, name in enumerate(class_names):
        try:
            if wanted & set(class_key(name)):
                return i
        except (TypeError, ValueError):
            continue
    return None


def vocabulary_hash(class_names: Sequence[str]) -> str:
    """Short content hash of an ordered list of class names."""
    import hashlib
    return hashlib.sha256(json.dumps(list(class_names)).encode()).hexdigest()[:16]


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


def looks_like_file(item: str) -> bool:
    """Whether a vocabulary string is meant as a file (see the module doc):
    a class-file or embedding-file extension, or a folder separator and an
    existing file. Built-in names are never files."""
    if is_builtin(item):
        return False
    if item.lower().endswith(EMBEDDING_FILE_EXTS + CLASS_FILE_EXTS):
        return True
    seps = {'/', osp.sep} | ({osp.altsep} if osp.altsep else set())
    return any(c in item for c in seps) and osp.isfile(osp.expanduser(item))


def parse_class_lines(text: str) -> List[str]:
    """One class per line; blank lines and lines starting with ``#`` are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith('#')]


def read_class_file(path: str) -> List[str]:
    """Class names from a ``.txt`` (one class per line; blank lines and ``#``
    lines are skipped), a COCO annotation ``.json`` (its categories, by id), a
    ``.json`` list of class names or a joint vocabulary ``.json``
    (:class:`~ovsam.vocabulary.joint.JointVocabulary`)."""
    path = osp.expanduser(path)
    if osp.isdir(path):
        raise IsADirectoryError(f'class file {path!r} is a directory; give a .txt file (one class per line)')
    if not osp.isfile(path):
        raise FileNotFoundError(f'class file {path!r} does not exist')
    try:
        with open(path, encoding='utf-8-sig') as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f'class file {path!r} is not UTF-8 text ({e}); save it as UTF-8, one class per '
                         'line') from None
    if '\0' in text:
        raise ValueError(f'class file {path!r} is binary (it holds NUL bytes), not one class per line')
    if path.lower().endswith('.json'):
        return _names_from_json(path, text)
    names = parse_class_lines(text)
    if not names:
        raise ValueError(f'{path!r} holds no class names (only blank or # comment lines)')
    return names


def _names_from_json(path: str, text: str) -> List[str]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f'{path!r} is not valid JSON ({e})') from None
    if isinstance(data, list):
        bad = [(i, c) for i, c in enumerate(data) if not isinstance(c, str)]
        if bad:
            i, c = bad[0]
            raise TypeError(f'{path!r}: a .json list of class names holds only strings; item {i} is '
                            f'{type(c).__name__} {c!r}'[:200])
        if not data:
            raise ValueError(f'{path!r} holds an empty list of class names')
        return list(data)
    if isinstance(data, str):
        raise ValueError(f'{path!r} holds the single string {data[:60]!r}, not a list of classes; write '
                         f'[{data[:60]!r}] for one class')
    if isinstance(data, dict) and data.get('format') == JOINT_FORMAT:
        names = data.get('class_names')  # a joint vocabulary (tools/build_vocabulary.py --vocab-out)
        if not isinstance(names, list) or not names:
            raise ValueError(f'{path!r}: a joint vocabulary without class names; re-create it with '
                             'tools/build_vocabulary.py')
        return list(names)
    if not isinstance(data, dict) or not isinstance(data.get('categories'), list):
        raise ValueError(f'{path!r}: a .json vocabulary is COCO annotations with a "categories" list, a '
                         'list of class names or a joint vocabulary (tools/build_vocabulary.py)')
    cats = data['categories']
    if not cats:
        raise ValueError(f'{path!r} has no categories')
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or 'name' not in c or 'id' not in c:
            raise ValueError(f'{path!r}: category {i} ({c!r})'[:200] + ' needs an "id" and a "name"')
        if not isinstance(c['id'], int) or isinstance(c['id'], bool):
            raise ValueError(f'{path!r}: category {i} ({c["name"]!r}) has the id {c["id"]!r}; ids are integers')
    ids = [c['id'] for c in cats]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f'{path!r}: category ids {dup} are given twice; every category needs its own id')
    return [c['name'] for c in sorted(cats, key=lambda c: c['id'])]


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
    """Class names from one string: built-in name, class file, lines, or one class."""
    if '\n' in item or '\r' in item:
        names = parse_class_lines(item)
        if not names:
            raise ValueError('no class names given (one class per line; blank and # lines are skipped)')
        return names
    if is_builtin(item):
        return builtin_class_names(item)
    if looks_like_file(item):
        if item.lower().endswith(EMBEDDING_FILE_EXTS):
            if osp.isfile(osp.expanduser(item)):
                raise ValueError(f'{item!r} is a text-embedding file; class names are wanted here '
                                 '(a built-in name, a .txt/.json class file or a list of names)')
            raise FileNotFoundError(f'vocabulary file {item!r} does not exist')
        if not osp.exists(osp.expanduser(item)):
            raise FileNotFoundError(f'vocabulary file {item!r} does not exist (a string ending in .txt/.json '
                                    'is read as a class file; check the path)')
        names = read_class_file(item)
        try:
            return check_class_names(names)
        except (TypeError, ValueError) as e:
            raise type(e)(f'class file {item!r}: {e}') from None
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
    hint = (f'give a built-in name ({", ".join(BUILTIN_VOCABULARIES)}), a .txt/.json class file, a text-embedding '
            'file or a list of class names')
    if spec is None:
        raise TypeError(f'no vocabulary given (None): {hint}')
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    elif isinstance(spec, (set, frozenset, dict)):
        raise TypeError(f'a vocabulary is ordered (label i is class i), got a {type(spec).__name__}; give a list')
    else:
        raise TypeError(f'a vocabulary is a string or a list of strings, got {type(spec).__name__} '
                        f'{spec!r}'[:200] + f'; {hint}')
    items = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in items]
    bad = [(i, s) for i, s in enumerate(items) if not isinstance(s, str)]
    if bad:
        shown = ', '.join(f'item {i} is {type(s).__name__} {s!r}'[:80] for i, s in bad[:5])
        raise TypeError(f'vocabulary items must be strings (no str() conversion is done): {shown}')
    while items and not items[-1].strip():  # trailing blanks (a list from text.split('\n')) shift nothing
        items.pop()
    if not items:
        raise ValueError(f'empty vocabulary: {hint}')
    blank = [i for i, s in enumerate(items) if not s.strip()]
    if blank:
        raise ValueError(f'vocabulary items {blank[:5]} are blank; every item is one class (label i is item '
                         'i), so remove them rather than let the labels after them shift')
    lines = len(items) == 1 and ('\n' in items[0] or '\r' in items[0])  # one class per line
    items = [s if lines else s.strip() for s in items]
    first = items[0]
    if '\n' not in first and first.lower().endswith(EMBEDDING_FILE_EXTS):
        if not osp.isfile(first):
            raise FileNotFoundError(f'text-embedding file {first!r} does not exist. Make it with:\n  {MAKE_COMMAND}')
        rest = items[1:]
        if not rest:
            return Vocabulary(None, first)
        names = _names_from_item(rest[0]) if len(rest) == 1 else _check_list_items(rest, 1)
        return Vocabulary(check_class_names(names), first)
    names = _names_from_item(first) if len(items) == 1 else _check_list_items(items, 0)
    return Vocabulary(check_class_names(names), None)


def _check_list_items(items: List[str], offset: int) -> List[str]:
    """Several items are class names; refuse items that are plainly files or
    built-in vocabularies (they would silently become one class each)."""
    for i, s in enumerate(items):
        if is_builtin(s):
            raise ValueError(f'vocabulary item {i + offset} ({s!r}) is a built-in vocabulary name, but in a list of '
                             f'several items each item is one class. For its classes give {s!r} alone; to '
                             f'extend it: builtin_class_names({s!r}) + [...]')
        if s.lower().endswith(EMBEDDING_FILE_EXTS + CLASS_FILE_EXTS):
            raise ValueError(f'vocabulary item {i + offset} ({s!r}) is a file name, but in a list of several items '
                             'each item is one class; give the file alone (or an embedding file followed by '
                             'its class names)')
    return items
