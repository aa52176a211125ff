"""Joint vocabulary: the union of several data sources' class lists.

Co-training on segmentation (LVIS, COCO), detection (V3Det, Objects365) and
image-level data (ImageNet-21k) scores every instance against one label space.
:class:`JointVocabulary` builds it from the sources' class lists and maps each
source's label ids into it.

Sources (``JointVocabulary.build({'lvis': 'lvis', 'in21k': 'classes.txt'})``):

- any vocabulary spec :func:`~ovsam.vocabulary.resolve_vocabulary` accepts
  (``'lvis'``, ``'coco'``, a ``.txt`` class file, a list of names); a COCO /
  LVIS annotation ``.json`` gives its categories by id, with each category's
  ``synonyms`` list where it has one (LVIS);
- an ImageNet-21k-style list: a ``.txt`` file (or a list of strings) whose
  lines are ``'n01440764 tench,Tinca tinca'``: a WordNet id, then the class
  names (commas separate synonyms);
- ``dict(class_names=[...], wnids=[...])`` (``wnids`` optional, ``''`` for none).

Merging, deterministic (sources in the order given, classes in label order):

1. Synonyms are compared normalised as everywhere in the project (NFKC,
   case-folded, runs of spaces collapsed: :func:`~ovsam.vocabulary.class_key`).
2. Two classes with the same WordNet id are one class.
3. A class joins the earliest joint class it shares a normalised synonym with,
   unless that would put two WordNet ids into one class (``'crane'`` the bird
   and ``'crane'`` the machine stay apart) or two classes of one source into
   one class (a dataset's own classes are distinct by definition). Candidates
   are tried in creation order; each refusal is recorded in :attr:`conflicts`.
4. Classes whose synonym sets end up identical are merged whatever their ids:
   the text tower gives them the same embedding, so no classifier could tell
   them apart (recorded in :attr:`conflicts`; the source then maps two labels
   to one joint id).

A joint class's name is its members' synonyms, first-seen first, deduplicated
after normalisation and comma-joined (``'tench,tinca tinca'``): the project's
one class syntax. Joint ids follow the order in which classes first appear,
so the first source's classes keep their ids when nothing merged inside it.
"""
import json
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .names import JOINT_FORMAT as FORMAT
from .names import _fold, check_class_names, class_key, resolve_vocabulary, split_synonyms

WNID_RE = re.compile(r'^n\d{8}$')
_WNID_LINE = re.compile(r'^(n\d{8})(?:[\s:]+(.*))?$')

SourceSpec = Union[str, Sequence[str], Mapping]


@dataclass
class SourceClasses:
    """One source's classes in its label order: ``class_names[i]`` is label i."""
    class_names: List[str]
    wnids: List[str] = field(default_factory=list)  # '' where a class has no WordNet id

    def __post_init__(self):
        if not self.wnids:
            self.wnids = [''] * len(self.class_names)


def is_wnid(text: str) -> bool:
    """``'n01440764'``: a WordNet noun offset as ImageNet writes it."""
    return isinstance(text, str) and bool(WNID_RE.match(text.strip()))


def parse_wnid_lines(lines: Sequence[str], where: str = 'the list') -> SourceClasses:
    """``['n01440764 tench,Tinca tinca', ...]`` -> names and WordNet ids.

    The id and the names are separated by spaces, a tab or a colon; a line
    with an id and no name is refused (a class needs a name to be embedded).
    """
    names, wnids = [], []
    for i, line in enumerate(lines):
        m = _WNID_LINE.match(line.strip())
        if m is None:
            raise ValueError(f'{where}, line {i + 1} ({line.strip()[:80]!r}): expected a WordNet id and class '
                             "names ('n01440764 tench,Tinca tinca'); mixing lines with and without ids is not "
                             'allowed')
        if not (m.group(2) or '').strip():
            raise ValueError(f'{where}, line {i + 1}: WordNet id {m.group(1)} has no class name; write '
                             f"'{m.group(1)} NAME[,SYNONYM...]' (the names are what the text tower embeds)")
        names.append(m.group(2).strip())
        wnids.append(m.group(1))
    return SourceClasses(names, wnids)


def _looks_like_wnid_lines(lines: Sequence[str]) -> bool:
    """Whether a list is an ImageNet-21k-style list: its first line starts with a
    WordNet id (a later line without one is then an error, not a class name)."""
    return bool(lines) and isinstance(lines[0], str) and bool(_WNID_LINE.match(lines[0].strip()))


def _read_lines(path: str) -> List[str]:
    with open(path, encoding='utf-8-sig') as f:
        text = f.read()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith('#')]


def _coco_categories(path: str) -> SourceClasses:
    """A COCO / LVIS annotation file's categories by id, with LVIS synonyms."""
    from .names import read_class_file
    names = read_class_file(path)  # validates ids and names; sorted by id
    with open(path, encoding='utf-8-sig') as f:
        data = json.load(f)
    if not isinstance(data, dict):
        return SourceClasses(names)
    cats = sorted(data['categories'], key=lambda c: c['id'])
    out = []
    for name, cat in zip(names, cats):
        syn = cat.get('synonyms')
        if isinstance(syn, list) and all(isinstance(s, str) for s in syn) and syn:
            out.append(','.join([name] + [s for s in syn if s.strip()]))
        else:
            out.append(name)
    return SourceClasses(out)


def source_classes(spec: SourceSpec, name: str = 'source') -> SourceClasses:
    """Read one source spec (see the module doc) into names and WordNet ids."""
    where = f'joint vocabulary source {name!r}'
    if isinstance(spec, SourceClasses):
        return spec
    if isinstance(spec, Mapping):
        names = spec.get('class_names', spec.get('classes'))
        if names is None:
            raise ValueError(f'{where}: a dict source needs class_names=[...] (and optionally wnids=[...])')
        names = check_class_names(names)
        wnids = list(spec.get('wnids') or [''] * len(names))
        if len(wnids) != len(names):
            raise ValueError(f'{where}: {len(wnids)} wnids for {len(names)} class names')
        bad = [w for w in wnids if w and not is_wnid(w)]
        if bad:
            raise ValueError(f"{where}: {bad[0]!r} is not a WordNet id (expected 'n' and 8 digits, "
                             "e.g. 'n01440764'); use '' for a class without one")
        return SourceClasses(names, [w.strip() for w in wnids])
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    try:
        if isinstance(spec, str) and spec.lower().endswith('.json') and osp.isfile(osp.expanduser(spec)):
            return _coco_categories(osp.expanduser(spec))
        if isinstance(spec, str) and spec.lower().endswith('.txt') and osp.isfile(osp.expanduser(spec)):
            lines = _read_lines(osp.expanduser(spec))
            if _looks_like_wnid_lines(lines):
                return parse_wnid_lines(lines, f'{where} ({spec})')
        if isinstance(spec, (list, tuple)) and _looks_like_wnid_lines(spec):
            return parse_wnid_lines(spec, where)
        vocab = resolve_vocabulary(spec)
    except (ValueError, TypeError, OSError) as e:
        raise type(e)(f'{where}: {e}') from None
    if vocab.class_names is None:
        raise ValueError(f'{where}: {spec!r} is a text-embedding file without class names; give the class '
                         'list it was made for')
    return SourceClasses(list(vocab.class_names))


class _Groups:
    """Union-find over joint classes, each with its WordNet ids and sources."""

    def __init__(self):
        self.parent: List[int] = []
        self.wnids: List[set] = []
        self.sources: List[set] = []
        self.members: List[List[Tuple[str, int]]] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.wnids.append(set())
        self.sources.append(set())
        self.members.append([])
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, keep: int, other: int) -> None:
        keep, other = self.find(keep), self.find(other)
        if keep == other:
            return
        if other < keep:
            keep, other = other, keep
        self.parent[other] = keep
        self.wnids[keep] |= self.wnids[other]
        self.sources[keep] |= self.sources[other]
        self.members[keep] += self.members[other]


class JointVocabulary:
    """The joint label space of several sources (see the module doc).

    Attributes:
        class_names: joint classes, synonyms comma-joined (the project's syntax).
        wnids: WordNet id of each joint class (``''`` none; comma-joined in the
            rare case rule 4 merged classes with different ids).
        sources: ``{name: SourceClasses}`` in the order given.
        conflicts: human-readable records of refused and forced merges.
    """

    def __init__(self, class_names: List[str], wnids: List[str], sources: Dict[str, SourceClasses],
                 source_map: Dict[str, np.ndarray], conflicts: Optional[List[str]] = None) -> None:
        self.class_names = check_class_names(class_names)
        if len(wnids) != len(class_names):
            raise ValueError(f'{len(wnids)} wnids for {len(class_names)} joint classes')
        self.wnids = list(wnids)
        self.sources = dict(sources)
        self._map = {k: np.asarray(v, dtype=np.int64) for k, v in source_map.items()}
        for k, src in self.sources.items():
            ids = self._map.get(k)
            if ids is None or ids.shape != (len(src.class_names),):
                raise ValueError(f'source {k!r}: its id map does not fit its {len(src.class_names)} classes')
            if len(ids) and (ids.min() < 0 or ids.max() >= len(class_names)):
                raise ValueError(f'source {k!r}: joint ids outside 0..{len(class_names) - 1}')
        self.conflicts = list(conflicts or [])

    def __len__(self) -> int:
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def source_ids(self, source: str) -> np.ndarray:
        """(num_source_classes,) int64: the joint id of each of ``source``'s labels."""
        if source not in self._map:
            raise KeyError(f'unknown source {source!r}; this joint vocabulary has {list(self._map)}')
        return self._map[source].copy()

    # ------------------------------------------------------------ build
    @classmethod
    def build(cls, sources: Mapping[str, SourceSpec]) -> 'JointVocabulary':
        """Merge ``{source name: spec}`` (in the given order) into one vocabulary."""
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError('give the sources as a non-empty dict {name: spec}, e.g. '
                             "{'lvis': 'lvis', 'in21k': 'data/imagenet21k/classes.txt'}")
        read = {}
        for name, spec in sources.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f'source names are non-empty strings, got {name!r}')
            read[name] = source_classes(spec, name)
        groups, conflicts = _Groups(), []
        by_wnid: Dict[str, int] = {}
        by_syn: Dict[str, List[int]] = {}
        assigned: Dict[str, List[int]] = {}
        for src, classes in read.items():
            assigned[src] = []
            for i, (cname, wnid) in enumerate(zip(classes.class_names, classes.wnids)):
                keys = [_fold(s) for s in split_synonyms(cname)]
                cands = []
                if wnid and wnid in by_wnid:
                    cands.append(groups.find(by_wnid[wnid]))
                for k in keys:
                    for g in by_syn.get(k, ()):
                        g = groups.find(g)
                        if g not in cands:
                            cands.append(g)
                wn = {wnid} if wnid else set()
                srcs = {src}
                chosen = []
                for g in cands:
                    same_wnid = bool(wn) and wn == groups.wnids[g]
                    if wn and groups.wnids[g] and not (wn & groups.wnids[g]):
                        conflicts.append(f'{src}[{i}] {cname!r} ({wnid}) not merged with joint class '
                                         f'{groups.members[g][0]} ({",".join(sorted(groups.wnids[g]))}): '
                                         'different WordNet ids')
                        continue
                    if (srcs & groups.sources[g]) and not same_wnid:
                        conflicts.append(f'{src}[{i}] {cname!r} not merged with {groups.members[g]}: two classes '
                                         'of one source stay apart')
                        continue
                    chosen.append(g)
                    wn |= groups.wnids[g]
                    srcs |= groups.sources[g]
                g = chosen[0] if chosen else groups.new()
                for other in chosen[1:]:
                    groups.union(g, other)
                g = groups.find(g)
                groups.wnids[g] |= ({wnid} if wnid else set())
                groups.sources[g].add(src)
                groups.members[g].append((src, i))
                if wnid:
                    by_wnid.setdefault(wnid, g)
                for k in keys:
                    lst = by_syn.setdefault(k, [])
                    if g not in lst:
                        lst.append(g)
                assigned[src].append(g)
        return cls._finish(read, groups, assigned, conflicts)

    @classmethod
    def _finish(cls, read, groups: _Groups, assigned, conflicts) -> 'JointVocabulary':
        def names_of(g):
            seen, out = set(), []
            for src, i in groups.members[g]:
                for s in split_synonyms(read[src].class_names[i]):
                    if _fold(s) not in seen:
                        seen.add(_fold(s))
                        out.append(s)
            return out

        # rule 4: identical synonym sets are one class
        roots = list(dict.fromkeys(groups.find(g) for g in range(len(groups.parent))))
        by_key: Dict[Tuple[str, ...], int] = {}
        for g in roots:
            key = class_key(','.join(names_of(g)))
            if key in by_key:
                first = groups.find(by_key[key])
                conflicts.append(f'{groups.members[g]} merged into {groups.members[first]}: identical synonyms '
                                 f'{list(key)} (the text tower cannot tell them apart)')
                groups.union(first, g)
            else:
                by_key[key] = g
        roots = sorted({groups.find(g) for g in range(len(groups.parent))})
        joint_id = {g: j for j, g in enumerate(roots)}
        names = [','.join(names_of(g)) for g in roots]
        wnids = [','.join(dict.fromkeys(read[s].wnids[i] for s, i in groups.members[g] if read[s].wnids[i]))
                 for g in roots]
        source_map = {src: np.array([joint_id[groups.find(g)] for g in gs], dtype=np.int64)
                      for src, gs in assigned.items()}
        return cls(names, wnids, read, source_map, conflicts)

    # ------------------------------------------------------------ files
    def to_dict(self) -> Dict:
        return dict(format=FORMAT, class_names=self.class_names, wnids=self.wnids,
                    sources={k: dict(class_names=s.class_names, wnids=s.wnids,
                                     joint_ids=self._map[k].tolist()) for k, s in self.sources.items()},
                    conflicts=self.conflicts)

    def dump_json(self, path: str) -> str:
        """Write the vocabulary as JSON, atomically (:func:`ovsam.fileio.atomic_save_json`)."""
        from ..fileio import atomic_save_json
        return atomic_save_json(path, self.to_dict(), ensure_ascii=False, indent=1)

    save = dump_json

    @classmethod
    def from_dict(cls, data: Mapping, where: str = 'joint vocabulary') -> 'JointVocabulary':
        if not isinstance(data, Mapping) or data.get('format') != FORMAT:
            raise ValueError(f'{where} is not a joint vocabulary (expected "format": "{FORMAT}"); make one '
                             'with tools/build_vocabulary.py')
        try:
            sources = {k: SourceClasses(list(v['class_names']), list(v['wnids'])) for k, v in data['sources'].items()}
            source_map = {k: np.asarray(v['joint_ids'], dtype=np.int64) for k, v in data['sources'].items()}
            return cls(list(data['class_names']), list(data['wnids']), sources, source_map,
                       list(data.get('conflicts', [])))
        except (KeyError, TypeError) as e:
            raise ValueError(f'{where} is damaged ({type(e).__name__}: {e}); re-create it with '
                             'tools/build_vocabulary.py') from None

    @classmethod
    def load(cls, path: str) -> 'JointVocabulary':
        if not osp.isfile(path):
            raise FileNotFoundError(f'joint vocabulary {path!r} does not exist; make it with '
                                    'python tools/build_vocabulary.py --source NAME=SPEC ... --vocab-out PATH')
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except ValueError as e:
            raise ValueError(f'{path!r} is not valid JSON ({e}); re-create it with tools/build_vocabulary.py') \
                from None
        return cls.from_dict(data, repr(path))

    def __repr__(self) -> str:
        srcs = ', '.join(f'{k}: {len(s.class_names)}' for k, s in self.sources.items())
        return f'JointVocabulary({self.num_classes} classes from {srcs})'
