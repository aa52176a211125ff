"""Open-vocabulary classifier: cosine similarity to CLIP text embeddings."""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..vocabulary.table import SynonymTable

LAYOUTS = ('auto', 'padded', 'flat')


def use_flat_layout(num_classes: int, max_synonyms: int, num_rows: int) -> bool:
    """Whether padding to ``max_synonyms`` would waste enough to store the
    vocabulary flat: more than twice the rows and over 64k padding rows
    (a handful of long synset lists in a 26k-class vocabulary, not LVIS's
    released 1,203 x P file)."""
    padded = num_classes * max_synonyms
    return padded > 2 * num_rows and padded - num_rows > 65536


class TextClassifier(nn.Module):
    """Scores embeddings against a vocabulary plus a background class.

    ``logits[k] = exp(logit_scale) * max_p cos(e, T[k, p])`` over the synonyms
    ``p`` of class ``k``; the last class is background, an all-zero text
    embedding, so its logit is always 0.

    Args:
        vocabulary: path of a text-embedding file: this project's (written by
            ``tools/gen_text_embeddings.py`` / ``tools/build_vocabulary.py``,
            padded or a synonym table) or an official release's bare
            ``[classes, synonyms, dim]`` tensor (see :mod:`ovsam.vocabulary`).
        num_classes: expected number of classes, checked against the file.
        class_names: a list of names or a spec (``'coco'``, ``'lvis'``, a
            ``.txt`` file with one class per line, ...): the names of a bare
            tensor's rows, in order (required there); for this project's files
            checked against the stored names, position by position.
        logit_scale: log of the temperature (4.6052 -> x100, CLIP's).
        embed_dim: embedding width, used before a vocabulary is set.
        layout: how the vocabulary is held: ``'padded'`` (the released
            layout), ``'flat'`` (one row per synonym) or ``'auto'`` (flat only
            when padding would waste much: :func:`use_flat_layout`).

    The vocabulary is ONE non-persistent buffer ``cls_embed`` (vocabularies
    are data, not weights, and are swapped whole, e.g. by the predictor):

    - padded: (D, K + 1, P), background last;
    - flat: (R + 1, D + 1): row r is a unit-norm synonym embedding followed by
      its class index (exact in float32 below 2**24 classes). Rows 0..K-1 are
      the classes' first synonyms in class order, then the other synonyms,
      and the last row is the background (zero, class K). Logits take the
      first-synonym rows and raise them by the other synonyms (a scatter
      max): no padding is stored or multiplied, and the row-major table is
      read once per batch of prompts (the cost of one prompt is reading it).
    """

    def __init__(self,
                 vocabulary: Optional[str] = None,
                 num_classes: Optional[int] = None,
                 class_names: Optional[Union[str, Sequence[str]]] = None,
                 logit_scale: float = 4.6052,
                 embed_dim: Optional[int] = None,
                 layout: str = 'auto') -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
        self.layout = layout
        self.register_buffer('logit_scale', torch.tensor(float(logit_scale)), persistent=False)
        self.register_buffer('cls_embed', torch.zeros(embed_dim or 1, 1, 1), persistent=False)
        self.class_names: Optional[list] = None
        self.vocabulary_path = vocabulary
        if vocabulary is not None:
            from ..vocabulary import load_text_embeddings
            emb, names = load_text_embeddings(vocabulary, class_names=class_names,
                                              num_classes=num_classes, layout='auto')
            self.set_vocabulary(emb, names)

    # ------------------------------------------------------------ layout
    @staticmethod
    def is_flat(cls_embed: Tensor) -> bool:
        """Whether a ``cls_embed`` buffer is the flat (R + 1, D + 1) layout."""
        return cls_embed.dim() == 2

    @staticmethod
    def buffer_num_classes(cls_embed: Tensor) -> int:
        """K of a ``cls_embed`` buffer (background excluded)."""
        if cls_embed.dim() == 2:
            return int(cls_embed[-1, -1].item())
        return cls_embed.shape[1] - 1

    @staticmethod
    def buffer_dim(cls_embed: Tensor) -> int:
        """D, the text-embedding width of a ``cls_embed`` buffer."""
        return cls_embed.shape[1] - 1 if cls_embed.dim() == 2 else cls_embed.shape[0]

    @staticmethod
    def buffer_table(cls_embed: Tensor) -> SynonymTable:
        """The vocabulary of a ``cls_embed`` buffer as a :class:`SynonymTable`
        (unit-norm rows, background dropped; a CPU copy)."""
        if cls_embed.dim() == 2:
            rows = cls_embed[:-1].detach().cpu()
            return SynonymTable(rows[:, :-1].contiguous(), rows[:, -1].long(),
                                TextClassifier.buffer_num_classes(cls_embed))
        return SynonymTable.from_padded(cls_embed.permute(1, 2, 0)[:-1].detach().cpu())

    @staticmethod
    def buffer_embeddings(cls_embed: Tensor) -> Tensor:
        """(K, P, D) padded unit-norm text embeddings of a ``cls_embed`` buffer (a CPU copy)."""
        if cls_embed.dim() == 2:
            return TextClassifier.buffer_table(cls_embed).to_padded()
        return cls_embed.permute(1, 2, 0)[:-1].detach().cpu().clone()

    @staticmethod
    def check_buffer(cls_embed, dim: int, num_classes: int) -> Optional[str]:
        """Why ``cls_embed`` is not a vocabulary buffer of ``num_classes``
        classes at width ``dim`` (in either layout), or None when it is one."""
        if not isinstance(cls_embed, Tensor) or not cls_embed.is_floating_point() or cls_embed.dim() not in (2, 3):
            shape = tuple(cls_embed.shape) if isinstance(cls_embed, Tensor) else type(cls_embed).__name__
            return (f'a vocabulary buffer is a float tensor, (D, K + 1, synonyms) padded or (rows + 1, D + 1) '
                    f'flat; got {shape}')
        if 0 in cls_embed.shape:
            return f'the vocabulary buffer of shape {tuple(cls_embed.shape)} is empty'
        got_dim, got_k = TextClassifier.buffer_dim(cls_embed), TextClassifier.buffer_num_classes(cls_embed)
        if got_dim != dim or got_k != num_classes:
            return (f'the vocabulary buffer holds {got_k} classes at width {got_dim}, expected {num_classes} '
                    f'classes at width {dim}')
        if not bool(torch.isfinite(cls_embed).all()):
            return 'the vocabulary buffer holds NaN or Inf'
        return None

    @property
    def num_classes(self) -> int:
        """Number of real classes (background excluded)."""
        return self.buffer_num_classes(self.cls_embed)

    @property
    def flat(self) -> bool:
        return self.is_flat(self.cls_embed)

    def set_vocabulary(self, embeddings: Union[Tensor, SynonymTable],
                       class_names: Optional[Sequence[str]] = None) -> None:
        """Install text embeddings: (K, P, D) or (K, D) tensors, or a
        :class:`SynonymTable`; they are L2-normalised here and held in the
        classifier's ``layout``."""
        if isinstance(embeddings, SynonymTable):
            table, padded = embeddings, None
        else:
            if embeddings.dim() == 2:
                embeddings = embeddings[:, None]
            if embeddings.dim() != 3 or embeddings.shape[0] == 0:
                raise ValueError(f'text embeddings must have shape (classes>0, synonyms, dim), '
                                 f'got {tuple(embeddings.shape)}')
            table, padded = None, embeddings
        if padded is not None and not torch.isfinite(padded).all():
            raise ValueError('text embeddings contain NaN or Inf')
        k = table.num_classes if table is not None else padded.shape[0]
        if class_names is not None and len(class_names) != k:
            raise ValueError(f'{len(class_names)} class names for {k} embeddings')
        if self.layout == 'auto':
            if table is None and padded.shape[1] > 1:
                table = SynonymTable.from_padded(padded)
            flat = table is not None and use_flat_layout(k, table.max_synonyms, table.num_rows)
        else:
            flat = self.layout == 'flat'
        if flat:
            table = table if table is not None else SynonymTable.from_padded(padded)
            self.cls_embed = self._flat_buffer(table).to(self.logit_scale.device)
        else:
            emb = padded if padded is not None else table.to_padded()
            emb = F.normalize(emb.float(), dim=-1)
            k, p, d = emb.shape
            emb = torch.cat([emb, emb.new_zeros(1, p, d)], dim=0)  # background
            self.cls_embed = emb.permute(2, 0, 1).contiguous().to(self.logit_scale.device)
        self.class_names = list(class_names) if class_names is not None else None

    @staticmethod
    def _flat_buffer(table: SynonymTable) -> Tensor:
        """The flat (R + 1, D + 1) buffer of a table: two passes over its rows
        (norms, then the normalised copy), NaN / Inf found from the norms."""
        k, (r, d) = table.num_classes, table.embeddings.shape
        if k >= 2**24:
            raise ValueError(f'{k} classes: the flat layout stores class indices exactly below 2**24')
        emb = table.embeddings.float()
        norms = torch.linalg.vector_norm(emb, dim=1)
        if not bool(torch.isfinite(norms).all()):
            raise ValueError('text embeddings contain NaN or Inf')
        buf = torch.empty(r + 1, d + 1, device=emb.device)
        torch.div(emb, norms.clamp_min(1e-12)[:, None], out=buf[:r, :d])
        buf[:r, d] = table.class_index.to(emb.device).float()
        buf[r, :d] = 0  # background: zero embedding, class K
        buf[r, d] = k
        return buf

    def forward(self, embed: Tensor) -> Tensor:
        """(N, D) embeddings -> (N, K + 1) logits."""
        k = self.num_classes
        if k <= 0:
            raise RuntimeError('No vocabulary set: give the classifier a text-embedding file '
                               '(classifier=dict(vocabulary=PATH), made by tools/gen_text_embeddings.py) '
                               'or call set_vocabulary().')
        if embed.shape[-1] != self.buffer_dim(self.cls_embed):
            raise ValueError(f'region embeddings have width {embed.shape[-1]} but the vocabulary '
                             f'has width {self.buffer_dim(self.cls_embed)}: the text embeddings were made '
                             'with another CLIP model')
        if self.flat:
            return self.logit_scale.exp() * self._flat_cosine(F.normalize(embed, dim=-1), self.cls_embed, k)
        sim = torch.einsum('nd,dkp->nkp', F.normalize(embed, dim=-1), self.cls_embed)
        return self.logit_scale.exp() * sim.max(dim=-1).values

    def _flat_cosine(self, x: Tensor, buf: Tensor, k: int) -> Tensor:
        """(N, D) unit vectors -> (N, K + 1) max cosine per class over a flat buffer."""
        d = buf.shape[1] - 1
        sims = F.linear(x, buf[:, :d].to(x.dtype))  # (N, R + 1): one read of the table
        return self.class_max(sims, self.extra_rows_class(buf, k), k)

    @staticmethod
    def extra_rows_class(buf: Tensor, k: int) -> Tensor:
        """(R - K,) class index of a flat buffer's rows after the first synonyms."""
        return buf[k:-1, -1].long()

    @staticmethod
    def class_max(sims: Tensor, extra_class: Tensor, k: int) -> Tensor:
        """(N, R + 1) cosines to the rows of a flat buffer -> (N, K + 1) the
        maximum over each class's rows (background last); ``extra_class``:
        :meth:`extra_rows_class`."""
        out = torch.cat([sims[:, :k], sims[:, -1:]], dim=1)  # first synonyms + background
        extra = sims[:, k:-1]
        if extra.shape[1]:
            out = out.scatter_reduce(1, extra_class.expand(sims.shape[0], -1), extra, reduce='amax',
                                     include_self=True)
        return out
