"""Text-embedding files: the one writer and the one loader.

This project's files (``tools/gen_text_embeddings.py``) are a dict with
``embeddings`` (K, P, D), ``class_names`` and ``meta``, holding only tensors
and strings, so they load with ``torch.load(weights_only=True)``. The official
release's files (``RN50x16_LVISV1Dataset.pth``, ...) are a bare (K, P, D)
tensor without class names: the caller names the classes, in the file's order.

Large vocabularies (tens of thousands of classes, some with dozens of
synonyms) are written without padding: ``synonym_embeddings`` (R, D) (float32,
or float16 with ``dtype=torch.float16``), ``synonym_class`` (R,) and
``class_names`` (:class:`~ovsam.vocabulary.table.SynonymTable`); the loader
reads all three layouts and gives back the one asked for (``layout``). A
table file stores its class names as one text, one class per line.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .names import MAKE_COMMAND, builtin_class_names, check_class_names, resolve_vocabulary
from .table import SynonymTable

ClassNames = Union[str, Sequence[str]]


def save_text_embeddings(path: str, embeddings: Union[Tensor, SynonymTable], class_names: Sequence[str],
                         meta: Optional[Dict] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Atomically write a vocabulary file (:func:`ovsam.fileio.atomic_save_torch`).

    A (K, P, D) tensor is written padded (the released layout, with names); a
    :class:`SynonymTable` without padding, its rows in ``dtype`` (float32 by
    default; float16 halves the file, cosines then move by ~1e-3).
    """
    from ..fileio import atomic_save_torch
    names = check_class_names(class_names)
    if isinstance(embeddings, SynonymTable):
        return _save_table(path, embeddings, names, meta, dtype)
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 3 or embeddings.shape[0] != len(names):
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f'cannot write {path!r}: embeddings of shape {shape} do not fit {len(names)} class '
                         'names (expected (classes, synonyms, dim))')
    if not embeddings.is_floating_point():
        raise ValueError(f'cannot write {path!r}: embeddings are {embeddings.dtype}; text embeddings are floating '
                         'point (the unit-norm output of the text tower)')
    if 0 in embeddings.shape:
        raise ValueError(f'cannot write {path!r}: embeddings of shape {tuple(embeddings.shape)} are empty')
    if not bool(torch.isfinite(embeddings).all()):
        bad = (~torch.isfinite(embeddings)).flatten(1).any(1).nonzero().flatten().tolist()[:5]
        raise ValueError(f'cannot write {path!r}: the embeddings of classes {bad} hold NaN or Inf (a broken text '
                         'tower or checkpoint); nothing was written')
    payload = dict(embeddings=embeddings.float().cpu().contiguous(),
                   class_names=list(names),
                   meta={str(k): str(v) for k, v in (meta or {}).items()})
    atomic_save_torch(path, payload)


def _save_table(path: str, table: SynonymTable, names: List[str], meta: Optional[Dict],
                dtype: Optional[torch.dtype]) -> None:
    from ..fileio import atomic_save_torch
    if table.num_classes != len(names):
        raise ValueError(f'cannot write {path!r}: the table holds {table.num_classes} classes but '
                         f'{len(names)} class names were given')
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f'cannot write {path!r}: dtype {dtype} is not float32, float16 or bfloat16')
    emb = table.embeddings.detach().float().cpu()
    if not bool(torch.isfinite(emb).all()):
        raise ValueError(f'cannot write {path!r}: the synonym embeddings hold NaN or Inf; nothing was written')
    idx_dtype = torch.int32 if table.num_classes < 2**31 else torch.int64
    # the names as one text, one class per line (names never hold line breaks): unpickled in one
    # piece, where a list of 26k strings costs ~0.1 s in the weights-only unpickler
    payload = dict(synonym_embeddings=emb.to(dtype).contiguous(),
                   synonym_class=table.class_index.cpu().to(idx_dtype).contiguous(),
                   class_names='\n'.join(names),
                   meta={str(k): str(v) for k, v in (meta or {}).items()})
    atomic_save_torch(path, payload)


def _names_given(class_names: ClassNames) -> Tuple[List[str], str]:
    """``class_names`` as a list, and how it was given (for messages)."""
    if isinstance(class_names, str):
        vocab = resolve_vocabulary(class_names)
        if vocab.class_names is None:
            raise ValueError(f'class_names={class_names!r} is an embedding file; give the class names '
                             "(a list, a built-in name such as 'lvis' or a .txt file)")
        return vocab.class_names, f'class_names={class_names!r}'
    if isinstance(class_names, (set, frozenset, dict)):
        raise TypeError(f'class_names must be an ordered list (row i of the file is class i), got a '
                        f'{type(class_names).__name__}; use a list in the order the file was made for')
    try:
        names = list(class_names)
    except TypeError:
        raise TypeError(f'class_names must be a list of class names or a vocabulary spec such as \'lvis\', got '
                        f'{type(class_names).__name__} {class_names!r}'[:200]) from None
    bad = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        raise TypeError(f'class_names must be strings; (index, type) of the others: {bad[:5]}')
    return names, 'the class_names list'


def _builtins_with(count: int) -> List[str]:
    found = []
    for name in ('coco', 'coco-ov', 'lvis', 'shapes'):
        try:
            if len(builtin_class_names(name)) == count:
                found.append(name)
        except Exception:  # a data set module that cannot be imported here
            continue
    return found


def _bare_hint(count: int) -> str:
    match = _builtins_with(count)
    if match:
        return f" ({count} classes: class_names={match[0]!r} fits)"
    return ''


LAYOUTS = ('padded', 'table', 'auto')


def load_text_embeddings(path: str,
                         class_names: Optional[ClassNames] = None,
                         num_classes: Optional[int] = None,
                         layout: str = 'padded') -> Tuple[Union[Tensor, SynonymTable], List[str]]:
    """Read a text-embedding file; return ``(embeddings, class_names)``.

    Args:
        path: this project's dict file (padded or a synonym table), or an
            official bare (K, P, D) tensor.
        class_names: a list of names or a spec (``'coco'``, ``'lvis'``, a
            ``.txt`` file, ...; see :func:`resolve_vocabulary`). Required for a
            bare tensor, where it names the rows in order; for a dict file it is
            checked against the stored names, position by position.
        num_classes: expected number of classes, checked.
        layout: ``'padded'``: a (K, P, D) tensor whatever the file holds (a
            synonym table is padded: mind the memory at tens of thousands of
            classes); ``'table'``: a :class:`SynonymTable` (padding dropped);
            ``'auto'``: the file's own layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'a text-embedding file path is a string, got {type(path).__name__} {path!r}'[:200])
    path = os.fspath(path)
    if osp.isdir(path):
        raise IsADirectoryError(f'text-embedding file {path!r} is a directory; give the .pth file inside it')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Text-embedding file {path!r} does not exist. Make it with:\n  {MAKE_COMMAND}')
    if osp.getsize(path) == 0:
        raise ValueError(f'text-embedding file {path!r} is empty (0 bytes; an interrupted copy?). '
                         f'Re-create it with:\n  {MAKE_COMMAND}')
    try:
        from ..checkpoint import sniff_format
        # mmap: the tensors are paged in from the file (a 26k-class table is ~180 MB), not copied first
        data = torch.load(path, map_location='cpu', weights_only=True, mmap=sniff_format(path) == 'torch_zip')
    except Exception as e:  # corrupt file, pickle payload, ...
        from ..checkpoint import describe_unloadable
        raise ValueError(f'{path!r} is not a valid text-embedding file: {describe_unloadable(path, e)}. '
                         f'Re-create it with:\n  {MAKE_COMMAND}') from e
    if isinstance(data, Tensor):
        if not data.is_floating_point():
            raise ValueError(f'{path!r} holds a {data.dtype} tensor; text embeddings are floating point')
        emb = data.float()
        if emb.dim() == 2:
            emb = emb[:, None]
        if emb.dim() != 3 or 0 in emb.shape:
            raise ValueError(f'{path!r} holds a tensor of shape {tuple(data.shape)}; a text-embedding '
                             'tensor has shape (classes, synonyms, dim)')
        k = emb.shape[0]
        if class_names is None:
            raise ValueError(
                f"{path!r} is a bare tensor of shape {tuple(data.shape)} (the official release's layout) with "
                f'no class names inside{_bare_hint(k)}. Say which class each row is, in the file\'s order: '
                f"load_text_embeddings({path!r}, class_names='lvis'), or in a config "
                f"classifier=dict(vocabulary={path!r}, class_names='lvis'). class_names is 'coco', "
                "'coco-ov', 'lvis', 'shapes', a .txt file (one class per line) or a list of names "
                "(RN50x16_LVISV1Dataset.pth: 'lvis'; the COCO files: 'coco').")
        names, given = _names_given(class_names)
        if len(names) != k:
            raise ValueError(f'{path!r} holds {k} classes (a bare tensor of shape {tuple(data.shape)}) but '
                             f'{given} has {len(names)}: give the names the file was made for, in its '
                             f'order{_bare_hint(k)}')
        names = check_class_names(names)
    elif isinstance(data, dict) and 'synonym_embeddings' in data:
        emb, names = _read_table(path, data)
        if class_names is not None:
            _check_names(path, class_names, names)
    else:
        if not isinstance(data, dict) or 'embeddings' not in data or 'class_names' not in data:
            raise ValueError(f'{path!r} is not a text-embedding file (expected a dict with keys embeddings, '
                             'class_names, or a bare (classes, synonyms, dim) tensor). '
                             f'Re-create it with:\n  {MAKE_COMMAND}')
        emb, names = data['embeddings'], data['class_names']
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ValueError(f'{path!r}: class_names is a {type(names).__name__} ({names!r}'[:120] + '), not a '
                             f'list with one class per item; re-create the file with:\n  {MAKE_COMMAND}')
        try:
            names = check_class_names(list(names))
        except (TypeError, ValueError) as e:
            raise ValueError(f'{path!r}: its class names are not a valid vocabulary ({e}); re-create the file '
                             f'with:\n  {MAKE_COMMAND}') from None
        if isinstance(emb, Tensor) and not emb.is_floating_point():
            raise ValueError(f'{path!r}: embeddings are {emb.dtype}; text embeddings are floating point')
        if not isinstance(emb, Tensor) or emb.dim() != 3 or emb.shape[0] != len(names) or 0 in emb.shape:
            shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
            raise ValueError(f'{path!r}: embeddings of shape {shape} do not match {len(names)} class names')
        if class_names is not None:
            _check_names(path, class_names, names)
    if isinstance(emb, Tensor) and not torch.isfinite(emb).all():
        bad = sorted({int(i) for i in (~torch.isfinite(emb)).flatten(1).any(1).nonzero().flatten()})
        raise ValueError(f'{path!r}: the embeddings of classes {bad[:10]} ({[names[i] for i in bad[:3]]}...) hold '
                         f'NaN or Inf; re-create the file with:\n  {MAKE_COMMAND}')
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f'{path!r} holds {len(names)} classes but the model expects {num_classes}. '
                         f'Re-create it for this dataset with:\n  {MAKE_COMMAND}')
    if layout == 'padded' and isinstance(emb, SynonymTable):
        emb = emb.to_padded()
    elif layout == 'table' and isinstance(emb, Tensor):
        emb = SynonymTable.from_padded(emb)
    return emb, names


def _check_names(path: str, class_names: ClassNames, names: List[str]) -> None:
    expected, given = _names_given(class_names)
    if expected != names:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(expected, names)) if a != b][:3]
        same_set = sorted(expected) == sorted(names)
        raise ValueError(
            f'{path!r} was made for other class names'
            f'{" (the same classes in another order)" if same_set else ""}: first differences '
            f'(index, expected, file): {diff}; {len(expected)} vs {len(names)} classes ({given}). '
            f'Re-create it with:\n  {MAKE_COMMAND}')


def _read_table(path: str, data: Dict) -> Tuple[SynonymTable, List[str]]:
    """A synonym-table file's content, checked."""
    emb, idx, names = data.get('synonym_embeddings'), data.get('synonym_class'), data.get('class_names')
    fix = ('re-create the file with tools/build_vocabulary.py (--vocab CLASSES --out PATH ...) or:\n  '
           f'{MAKE_COMMAND}')
    if isinstance(names, str):  # one class per line
        names = names.split('\n')
    if not isinstance(names, (list, tuple)):
        raise ValueError(f'{path!r}: class_names is a {type(names).__name__}, not a list of classes; {fix}')
    try:
        names = check_class_names(list(names))
    except (TypeError, ValueError) as e:
        raise ValueError(f'{path!r}: its class names are not a valid vocabulary ({e}); {fix}') from None
    if not isinstance(emb, Tensor) or not emb.is_floating_point() or emb.dim() != 2 or 0 in emb.shape:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(f'{path!r}: synonym_embeddings must be a float (rows, dim) tensor, got {shape}; {fix}')
    if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.shape != emb.shape[:1]:
        raise ValueError(f'{path!r}: synonym_class must be an integer tensor with one class id per synonym row '
                         f'({emb.shape[0]}); {fix}')
    emb = emb.float()
    if not bool(torch.isfinite(emb.sum())):  # one cheap pass; NaN / Inf propagate into the sum
        bad = sorted({int(i) for i in idx[~torch.isfinite(emb).all(1)][:10]})
        raise ValueError(f'{path!r}: the embeddings of classes {bad} hold NaN or Inf; {fix}')
    try:
        table = SynonymTable.from_flat(emb, idx, len(names))
    except ValueError as e:
        raise ValueError(f'{path!r}: {e}; {fix}') from None
    return table, names
