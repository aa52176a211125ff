"""Open-vocabulary classifier: cosine similarity to CLIP text embeddings."""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class TextClassifier(nn.Module):
    """Scores embeddings against a vocabulary plus a background class.

    ``logits[k] = exp(logit_scale) * max_p cos(e, T[k, p])`` over the synonyms
    ``p`` of class ``k``; the last class is background, an all-zero text
    embedding, so its logit is always 0.

    Args:
        vocabulary: path of a text-embedding file: this project's (written by
            ``tools/gen_text_embeddings.py``) or an official release's bare
            ``[classes, synonyms, dim]`` tensor (see :mod:`ovsam.vocabulary`).
        num_classes: expected number of classes, checked against the file.
        class_names: a list of names or a spec (``'coco'``, ``'lvis'``, a
            ``.txt`` file with one class per line, ...): the names of a bare
            tensor's rows, in order (required there); for this project's files
            checked against the stored names, position by position.
        logit_scale: log of the temperature (4.6052 -> x100, CLIP's).
        embed_dim: embedding width, used before a vocabulary is set.

    The embeddings are a non-persistent buffer ``cls_embed`` of shape
    (D, K + 1, P): vocabularies are data, not weights, and can be swapped.
    """

    def __init__(self,
                 vocabulary: Optional[str] = None,
                 num_classes: Optional[int] = None,
                 class_names: Optional[Union[str, Sequence[str]]] = None,
                 logit_scale: float = 4.6052,
                 embed_dim: Optional[int] = None) -> None:
        super().__init__()
        self.register_buffer('logit_scale', torch.tensor(float(logit_scale)), persistent=False)
        self.register_buffer('cls_embed', torch.zeros(embed_dim or 1, 1, 1), persistent=False)
        self.class_names: Optional[list] = None
        self.vocabulary_path = vocabulary
        if vocabulary is not None:
            from ..vocabulary import load_text_embeddings
            emb, names = load_text_embeddings(vocabulary, class_names=class_names,
                                              num_classes=num_classes)
            self.set_vocabulary(emb, names)

    @property
    def num_classes(self) -> int:
        """Number of real classes (background excluded)."""
        return self.cls_embed.shape[1] - 1

    def set_vocabulary(self, embeddings: Tensor, class_names: Optional[Sequence[str]] = None) -> None:
        """Install text embeddings (K, P, D) (or (K, D)); they are L2-normalised here."""
        if embeddings.dim() == 2:
            embeddings = embeddings[:, None]
        if embeddings.dim() != 3 or embeddings.shape[0] == 0:
            raise ValueError(f'text embeddings must have shape (classes>0, synonyms, dim), '
                             f'got {tuple(embeddings.shape)}')
        if not torch.isfinite(embeddings).all():
            raise ValueError('text embeddings contain NaN or Inf')
        if class_names is not None and len(class_names) != embeddings.shape[0]:
            raise ValueError(f'{len(class_names)} class names for {embeddings.shape[0]} embeddings')
        emb = F.normalize(embeddings.float(), dim=-1)
        k, p, d = emb.shape
        emb = torch.cat([emb, emb.new_zeros(1, p, d)], dim=0)  # background
        self.cls_embed = emb.permute(2, 0, 1).contiguous().to(self.logit_scale.device)
        self.class_names = list(class_names) if class_names is not None else None

    def forward(self, embed: Tensor) -> Tensor:
        """(N, D) embeddings -> (N, K + 1) logits."""
        if self.num_classes <= 0:
            raise RuntimeError('No vocabulary set: give the classifier a text-embedding file '
                               '(classifier=dict(vocabulary=PATH), made by tools/gen_text_embeddings.py) '
                               'or call set_vocabulary().')
        if embed.shape[-1] != self.cls_embed.shape[0]:
            raise ValueError(f'region embeddings have width {embed.shape[-1]} but the vocabulary '
                             f'has width {self.cls_embed.shape[0]}: the text embeddings were made '
                             'with another CLIP model')
        sim = torch.einsum('nd,dkp->nkp', F.normalize(embed, dim=-1), self.cls_embed)
        return self.logit_scale.exp() * sim.max(dim=-1).values
