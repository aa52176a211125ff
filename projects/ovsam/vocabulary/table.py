"""Text embeddings without padding: one row per synonym.

The released files pad every class to the largest synonym count
(``[classes, synonyms, dim]``, shorter classes repeat their first synonym).
At ~26k classes, where a few ImageNet-21k synsets have dozens of lemmas, that
layout is mostly padding. The classifier takes the **maximum** cosine over a
class's synonyms (not the mean), so the synonyms cannot be reduced to one
vector per class; a :class:`SynonymTable` keeps each distinct synonym once:

- ``embeddings`` (R, D): rows in canonical order: the first synonym of every
  class, in class order (rows 0..K-1), then the remaining synonyms ordered by
  (rank within the class, class);
- ``class_index`` (R,) int64: the class of each row.

The max over a class's rows equals the max over its padded row, so logits are
the same; :meth:`to_padded` gives the released layout back (padding by the
first synonym, as the recipe does).
"""
from dataclasses import dataclass
from typing import List, Sequence, Union

import numpy as np
import torch
from torch import Tensor


def _stable_argsort(values: Tensor) -> Tensor:
    """Stable argsort of an integer vector (numpy's radix sort: torch's stable
    CPU sort is ~50x slower at 50k entries)."""
    return torch.from_numpy(np.argsort(values.cpu().numpy(), kind='stable'))


@dataclass(frozen=True)
class SynonymTable:
    embeddings: Tensor  #: (R, D) one row per synonym, canonical order
    class_index: Tensor  #: (R,) int64 class of each row; rows 0..K-1 are classes 0..K-1
    num_classes: int  #: K

    def __post_init__(self):
        emb, idx, k = self.embeddings, self.class_index, self.num_classes
        if not isinstance(emb, Tensor) or emb.dim() != 2 or not emb.is_floating_point() or 0 in emb.shape:
            raise ValueError(f'synonym embeddings must be a float (rows, dim) tensor, got '
                             f'{tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__}')
        if not isinstance(idx, Tensor) or idx.shape != emb.shape[:1] or idx.is_floating_point():
            raise ValueError(f'class_index must be an integer tensor with one entry per synonym row '
                             f'({emb.shape[0]}), got {tuple(idx.shape) if isinstance(idx, Tensor) else idx!r}')
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > emb.shape[0]:
            raise ValueError(f'num_classes {k!r} does not fit {emb.shape[0]} synonym rows')
        if not torch.equal(idx[:k].cpu(), torch.arange(k)) or bool((idx[k:] < 0).any() | (idx[k:] >= k).any()):
            raise ValueError('class_index is not in canonical order (rows 0..K-1 = the first synonym of '
                             'classes 0..K-1, then class ids in 0..K-1): build tables with '
                             'SynonymTable.from_rows / from_padded / from_flat')

    # ------------------------------------------------------------ building
    @classmethod
    def from_flat(cls, embeddings: Tensor, class_index: Union[Tensor, Sequence[int]],
                  num_classes: int = None) -> 'SynonymTable':
        """Any row order -> canonical order (stable: a class's rows keep their
        relative order, so its first row stays its first synonym). Every class
        needs at least one row."""
        idx = torch.as_tensor(class_index).long().flatten().cpu()
        if embeddings.dim() != 2 or idx.numel() != embeddings.shape[0]:
            raise ValueError(f'{idx.numel()} class indices for synonym embeddings of shape '
                             f'{tuple(embeddings.shape)}')
        if idx.numel() == 0:
            raise ValueError('empty synonym table')
        k = int(idx.max()) + 1 if num_classes is None else int(num_classes)
        if int(idx.min()) < 0 or int(idx.max()) >= k:
            raise ValueError(f'class indices must lie in 0..{k - 1}, got {int(idx.min())}..{int(idx.max())}')
        counts = torch.bincount(idx, minlength=k)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0)[:5, 0].tolist()
            raise ValueError(f'classes {missing} have no synonym row; every class needs at least one')
        order = _stable_argsort(idx)  # rows grouped by class, original order inside
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(idx)
        rank[order] = torch.arange(idx.numel()) - starts[idx[order]]
        key = rank * k + idx  # (rank, class): rank-0 rows first, in class order
        perm = _stable_argsort(key)
        if torch.equal(perm, torch.arange(perm.numel())):  # already canonical (files we wrote): no copy
            return cls(embeddings, idx, k)
        return cls(embeddings[perm].contiguous(), idx[perm].contiguous(), k)

    @classmethod
    def from_rows(cls, rows: Sequence[Tensor]) -> 'SynonymTable':
        """Per-class (P_i, D) synonym embeddings -> table."""
        if len(rows) == 0:
            raise ValueError('empty vocabulary: nothing to store')
        idx = torch.cat([torch.full((r.shape[0],), i, dtype=torch.long) for i, r in enumerate(rows)])
        return cls.from_flat(torch.cat(list(rows)), idx, len(rows))

    @classmethod
    def from_padded(cls, embeddings: Tensor) -> 'SynonymTable':
        """(K, P, D) or (K, D) -> table, dropping the rows that repeat their
        class's first synonym (the recipe's padding; a repeat never changes a
        maximum)."""
        if embeddings.dim() == 2:
            embeddings = embeddings[:, None]
        if embeddings.dim() != 3 or 0 in embeddings.shape:
            raise ValueError(f'padded embeddings have shape (classes, synonyms, dim), got {tuple(embeddings.shape)}')
        k, p, _ = embeddings.shape
        keep = torch.ones(k, p, dtype=torch.bool)
        keep[:, 1:] = ~(embeddings[:, 1:] == embeddings[:, :1]).all(-1)
        idx = torch.arange(k)[:, None].expand(k, p)[keep]
        return cls.from_flat(embeddings[keep], idx, k)

    # ------------------------------------------------------------ views
    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def num_rows(self) -> int:
        return int(self.embeddings.shape[0])

    def synonym_counts(self) -> Tensor:
        """(K,) number of synonyms of each class."""
        return torch.bincount(self.class_index.cpu(), minlength=self.num_classes)

    @property
    def max_synonyms(self) -> int:
        return int(self.synonym_counts().max())

    def rows_of(self, k: int) -> Tensor:
        """(P_k, D) the synonyms of class ``k``, first synonym first."""
        return self.embeddings[self.class_index == k]

    def to_rows(self) -> List[Tensor]:
        order = _stable_argsort(self.class_index)
        return list(torch.split(self.embeddings[order], self.synonym_counts().tolist()))

    def to_padded(self) -> Tensor:
        """(K, P, D) the released layout: shorter classes repeat their first synonym."""
        counts = self.synonym_counts()
        out = self.embeddings[:self.num_classes, None].repeat(1, int(counts.max()), 1)  # first synonyms
        extra = self.class_index[self.num_classes:]
        if extra.numel():
            # slot of each extra row inside its class: 1 + its rank among the class's extra rows
            order = _stable_argsort(extra)
            grouped = extra[order]
            pos = torch.arange(grouped.numel())
            first = torch.ones_like(grouped, dtype=torch.bool)
            first[1:] = grouped[1:] != grouped[:-1]
            group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
            slot = torch.empty_like(extra)
            slot[order] = pos - group_start + 1
            out[extra, slot] = self.embeddings[self.num_classes:]
        return out

    def to(self, *args, **kwargs) -> 'SynonymTable':
        return SynonymTable(self.embeddings.to(*args, **kwargs), self.class_index, self.num_classes)

    def padded_size(self) -> int:
        """Rows the padded layout would hold (K x P)."""
        return self.num_classes * self.max_synonyms
