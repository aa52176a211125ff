"""The open-vocabulary ensemble of the CLIP2SAM head and frozen CLIP.

At test time the head's class probabilities ``q`` are fused with the frozen CLIP
region probabilities ``c`` by a geometric mean per class:
``p = q^(1 - w) * c^w`` with ``w = alpha`` for classes seen in training (and
background) and ``w = beta`` for unseen ones. CLIP knows unseen classes, the
head does not, so unseen classes lean on CLIP (beta = 0.9).
"""
from typing import Optional

import torch
from torch import Tensor


def open_vocab_ensemble(head_logits: Tensor,
                        clip_logits: Tensor,
                        seen: Tensor,
                        alpha: float = 0.1,
                        beta: float = 0.9,
                        valid: Optional[Tensor] = None,
                        allowed: Optional[Tensor] = None) -> Tensor:
    """Fuse head and CLIP logits into ensemble log-probabilities.

    Args:
        head_logits, clip_logits: (N, K + 1) logits, background last.
        seen: (K + 1,) bool, True for classes the head was trained on and
            for background.
        alpha, beta: CLIP weights for seen and unseen classes.
        valid: (N,) bool; False where the mask is empty at CLIP's resolution,
            then the head alone decides (weights 0).
        allowed: (K,) bool; classes outside it get -1000 (base/novel
            evaluation restricted to the split).
    Returns:
        (N, K + 1) ``log p`` scores.

    Computed in log space, ``(1 - w) log q + w log c``, which equals the log of
    the geometric mean wherever that is finite and avoids 0 * log(0) = NaN.
    """
    if head_logits.shape != clip_logits.shape:
        raise ValueError(f'head logits {tuple(head_logits.shape)} and CLIP logits '
                         f'{tuple(clip_logits.shape)} differ')
    log_q = head_logits.log_softmax(-1)
    log_c = clip_logits.log_softmax(-1)
    w = torch.where(seen.to(log_q.device), log_q.new_tensor(alpha), log_q.new_tensor(beta))
    w = w.expand_as(log_q)
    if valid is not None:
        w = w * valid.to(w.dtype)[:, None]
    scores = (1 - w) * log_q + w * log_c
    if allowed is not None:
        fg = scores[:, :-1].masked_fill(~allowed.to(scores.device), -1000.)
        scores = torch.cat([fg, scores[:, -1:]], dim=1)
    return scores
