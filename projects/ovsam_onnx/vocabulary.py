"""The runtime's vocabulary: text embeddings chosen among those exported (or
given as arrays), with the class split of the open-vocabulary ensemble.

Embedding new class names needs CLIP's text tower, i.e. PyTorch: export the
vocabulary you need (``tools/deployment/export_onnx.py --vocabulary ...``),
pick a subset of it here, or pass embeddings computed elsewhere (e.g.
``ovsam.vocabulary.TextEncoder(...).encode(names).numpy()``).
"""
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .layout import classifier_embed


def _synonyms(name: str) -> set:
    return {s.strip().casefold() for s in name.split(',') if s.strip()}


def check_names(names) -> Tuple[str, ...]:
    """A non-empty list of distinct class names (a single string is one class)."""
    if isinstance(names, str):
        names = [names]
    if isinstance(names, (set, frozenset, dict)):
        raise TypeError(f'class names must be an ordered list, got a {type(names).__name__}')
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f'class names must be a list of strings, got {type(names).__name__}') from None
    if not names:
        raise ValueError('the vocabulary is empty: give at least one class name')
    bad = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise TypeError(f'class names must be non-empty strings; (index, type) of the others: {bad[:5]}')
    seen = {}
    for i, n in enumerate(names):
        key = ' '.join(n.casefold().split())
        if key in seen:
            raise ValueError(f'class {n!r} is given twice (items {seen[key]} and {i}): give each class once')
        seen[key] = i
    return tuple(names)


@dataclass(frozen=True)
class Vocabulary:
    """K classes as the prompt decoder scores them (never changed; replaced whole).

    ``embeddings`` (K, P, D) unit-norm text embeddings; ``seen`` (K,) classes
    the head was trained on (the ensemble leans on the head, alpha; others on
    frozen CLIP, beta); ``allowed`` (K,) classes that may be predicted.
    """
    class_names: Tuple[str, ...]
    embeddings: np.ndarray
    seen: np.ndarray
    allowed: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def feeds(self) -> dict:
        """The prompt decoder's vocabulary inputs (made once per vocabulary)."""
        return dict(class_embed=classifier_embed(self.embeddings),
                    class_seen=np.concatenate([self.seen, [True]]).astype(bool),
                    class_allowed=self.allowed.astype(bool))

    def find(self, query: str) -> Optional[int]:
        """Index of the class sharing a synonym with ``query`` (case-insensitive), or None."""
        want = _synonyms(query)
        for i, name in enumerate(self.class_names):
            if want & _synonyms(name):
                return i
        return None

    # ------------------------------------------------------------ making
    @classmethod
    def from_embeddings(cls, names, embeddings, seen_classes=None) -> 'Vocabulary':
        """``embeddings`` (K, P, D) or (K, D), any norm (normalised here)."""
        names = check_names(names)
        emb = np.asarray(embeddings)
        if emb.dtype.kind not in 'fiu':
            raise ValueError(f'embeddings must be a float array, got dtype {emb.dtype}')
        emb = emb.astype(np.float32)
        if emb.ndim == 2:
            emb = emb[:, None]
        if emb.ndim != 3 or emb.shape[0] != len(names) or emb.shape[1] == 0:
            raise ValueError(f'embeddings of shape {emb.shape} do not fit {len(names)} class names: give '
                             '(classes, synonyms, dim) or (classes, dim), one row per name')
        if not np.isfinite(emb).all():
            raise ValueError('embeddings contain NaN or Inf')
        norm = np.linalg.norm(emb, axis=-1, keepdims=True)
        if (norm.reshape(len(names), -1) == 0).all(1).any():
            raise ValueError('some classes have all-zero embeddings (the background embedding): re-create them')
        emb = emb / np.maximum(norm, 1e-12)
        return cls(names, emb, *cls._split(names, seen_classes))

    @staticmethod
    def _split(names: Tuple[str, ...], seen_classes) -> Tuple[np.ndarray, np.ndarray]:
        k = len(names)
        seen = np.zeros(k, bool)
        for c in ([] if seen_classes is None else [seen_classes] if isinstance(seen_classes, str)
                  else list(seen_classes)):
            if isinstance(c, (bool, np.bool_)):
                raise ValueError(f'seen_classes holds the boolean {c!r}: give class indices or names')
            if isinstance(c, str):
                idx = next((i for i, n in enumerate(names) if _synonyms(c) & _synonyms(n)), None)
                if idx is None:
                    raise ValueError(f'seen_classes: {c!r} is not in the vocabulary {list(names)[:8]}')
            elif isinstance(c, (int, np.integer)) and 0 <= int(c) < k:
                idx = int(c)
            else:
                raise ValueError(f'seen_classes: {c!r} is neither a class name nor an index in 0..{k - 1}')
            seen[idx] = True
        return seen, np.ones(k, bool)

    def select(self, names: Union[str, Sequence[str]], seen_classes=None) -> 'Vocabulary':
        """The classes ``names`` (each matched by a synonym) of this vocabulary,
        in the order given. The class split is kept when ``names`` is the whole
        vocabulary in its order; otherwise every class counts as unseen unless
        ``seen_classes`` says otherwise (as ``OVSAMPredictor.set_vocabulary``)."""
        names = check_names(names)
        idx, missing = [], []
        for n in names:
            i = self.find(n)
            (missing.append(n) if i is None else idx.append(i))
        if missing:
            raise KeyError(f'classes {missing[:5]} are not in the exported vocabulary ({self.num_classes} classes: '
                           f'{list(self.class_names)[:8]}{" ..." if self.num_classes > 8 else ""}). The ONNX '
                           'runtime cannot embed new names (that needs the PyTorch text tower): export them '
                           '(tools/deployment/export_onnx.py --vocabulary ...) or pass embeddings=')
        if len(set(idx)) != len(idx):
            raise ValueError(f'{names} name the same exported class twice')
        if idx == list(range(self.num_classes)) and seen_classes is None:
            return Vocabulary(names, self.embeddings, self.seen, self.allowed)
        return Vocabulary(names, self.embeddings[idx], *self._split(names, seen_classes))
