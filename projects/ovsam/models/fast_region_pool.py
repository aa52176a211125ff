"""Frozen-CLIP region embeddings of one image's boxes, with the image side prepared once.

The frozen-CLIP branch embeds a box as CLIP's attention pool applied to
``roi_align(C5, box)`` (an R x R grid, R = 12 for RN50x16). For one click
that reads the pool's three 3072 x 3072 projections (~110 MB of weights) and
RoIAligns 3,072 channels: ~10 ms of memory traffic per click on a CPU. But
everything before the softmax is linear in C5:

- RoIAlign is a weighted sum of C5 positions, and mmcv's bilinear sampling
  weights factor into a row part and a column part:
  ``pooled[:, i, j] = sum_yx Ay[i, y] Ax[j, x] C5[:, y, x]``
  (:func:`roi_align_axis_weights`, the same sampling grid, boundary rules and
  averaging as mmcv's ``roi_align(..., aligned=True)``);
- so the projections of the pooled tokens are the same weighted sums of the
  *projected* C5 maps ``W_q C5``, ``W_k C5``, ``W_v C5``, which
  :func:`prepare_region_pool` computes once per image (one GEMM, 1024 x 3072
  x 9216 for a 1024-px image; 38 MB kept);
- per click only those three maps are read (:func:`prepared_box_embed`), each
  once, with the token weights of the box.

Same weights, same result up to float rounding (``tests/test_performance_equivalence.py``).
Used by :class:`~ovsam.models.fast_inference.FastOpenCLIPBackbone` when an image
was prepared (the predictor prepares the image it holds); otherwise the box
path is the plain one.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def roi_align_axis_weights(start: Tensor, end: Tensor, size: int, out_size: int, sampling_ratio: int = 0) -> Tensor:
    """The weights of mmcv's aligned RoIAlign along one axis.

    Args:
        start, end: (N,) box edges in feature-map cells (input pixels x
            spatial scale, before the -0.5 of ``aligned=True``).
        size: the feature map's length along the axis.
        out_size: output bins along the axis.
        sampling_ratio: samples per bin (0: ``ceil(box length / out_size)``
            per box, mmcv's adaptive rule).
    Returns:
        (N, out_size, size): bin i of box n averages ``sum_y w[n, i, y] f[y]``;
        the 2-D RoIAlign is the outer product of the two axes' weights.

    As mmcv's kernel: a sample outside ``[-1, size]`` contributes nothing, one
    below 0 is read at 0, one at or beyond ``size - 1`` at ``size - 1``, and
    the samples are averaged over the whole grid (so the row and column
    averages multiply).
    """
    start = start.double() - 0.5
    length = end.double() - 0.5 - start
    bin_len = length / out_size
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / out_size).clamp(min=0)
    g_max = max(int(grid.max().item()) if grid.numel() else 0, 1)
    n = start.shape[0]
    i = torch.arange(out_size, dtype=torch.float64)
    s = torch.arange(g_max, dtype=torch.float64)
    # (N, out, g): sample positions; samples beyond a box's own grid are masked out
    pos = (start[:, None, None] + i[None, :, None] * bin_len[:, None, None]
           + (s[None, None, :] + 0.5) * (bin_len / grid.clamp(min=1))[:, None, None])
    used = (s[None, None, :] < grid[:, None, None]).expand_as(pos)
    inside = used & (pos >= -1.0) & (pos <= size)
    y = pos.clamp(min=0)
    low = y.floor()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    y = torch.where(at_end, low, y)
    high = torch.where(at_end, low, low + 1)
    frac = y - low
    scale = inside.double() / grid.clamp(min=1)[:, None, None]
    w = torch.zeros(n, out_size, size, dtype=torch.float64)
    w.scatter_add_(2, low.long().clamp(0, size - 1).view(n, out_size, -1), ((1 - frac) * scale).view(n, out_size, -1))
    w.scatter_add_(2, high.long().clamp(0, size - 1).view(n, out_size, -1), (frac * scale).view(n, out_size, -1))
    return w


def roi_align_windows(feat: Tensor, boxes: Tensor, out_size: int, spatial_scale: float,
                      sampling_ratio: int = 0) -> Tensor:
    """mmcv's ``roi_align(feat, boxes, out_size, spatial_scale, sampling_ratio,
    'avg', aligned=True)`` for a few boxes on one image, as two small
    contractions over each box's window of ``feat`` (1, C, H, W), with the
    weights of :func:`roi_align_axis_weights`. For one click this reads the
    box's window, not the kernel's per-channel pass. Returns (N, C, R, R)."""
    _, c, h, w = feat.shape
    b = boxes.double() * spatial_scale
    ay = roi_align_axis_weights(b[:, 1], b[:, 3], h, out_size, sampling_ratio).to(feat.dtype)
    ax = roi_align_axis_weights(b[:, 0], b[:, 2], w, out_size, sampling_ratio).to(feat.dtype)
    out = feat.new_zeros(boxes.shape[0], c, out_size, out_size)
    for n in range(boxes.shape[0]):
        rows = ay[n].any(dim=0).nonzero()[:, 0]
        cols = ax[n].any(dim=0).nonzero()[:, 0]
        if rows.numel() == 0 or cols.numel() == 0:
            continue  # the box samples nothing inside the map: zeros, as mmcv
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        win = feat[0, :, y0:y1, x0:x1]                                             # (C, h', w')
        t = torch.matmul(win, ax[n, :, x0:x1].t())                                 # (C, h', R)
        out[n] = torch.matmul(ay[n, :, y0:y1], t)                                  # (C, R, R)
    return out


class PreparedRegionPool(NamedTuple):
    """The image side of :func:`prepared_box_embed` for one image."""
    q_map: Tensor     # (H*W, C): C5 positions projected by W_q (no bias)
    k_heads: Tensor   # (heads, C / heads, H*W): ... by W_k, per head, transposed
    v_heads: Tensor   # (heads, H*W, C / heads): ... by W_v, per head
    pos_q: Tensor     # (C,): W_q pos_0 + b_q, the query's positional part
    pos_kv: Tensor    # (L, 2C): positional embeddings projected by W_k, W_v (no bias)
    height: int
    width: int
    spatial_scale: float


def prepare_region_pool(pool, c5: Tensor, spatial_scale: float = 1 / 32.) -> PreparedRegionPool:
    """Project one image's C5 (1, C, H, W) (already in the head's space) by the
    attention pool's q/k/v weights: three (H*W, C) x (C, C) GEMMs."""
    if c5.dim() != 4 or c5.shape[0] != 1:
        raise ValueError(f'prepare_region_pool takes the C5 map of one image, (1, C, H, W); got {tuple(c5.shape)}')
    _, c, h, w = c5.shape
    tokens = c5[0].reshape(c, h * w).t().float()                                   # (HW, C)
    pos = pool.positional_embedding.float()                                        # (L, C)
    proj = lambda lin, x: x @ lin.weight.float().t()  # noqa: E731  (no bias; one weight at a time)
    pos_q = proj(pool.q_proj, pos[0]) + pool.q_proj.bias.float()
    pos_kv = torch.cat([proj(pool.k_proj, pos), proj(pool.v_proj, pos)], dim=1)
    nh = pool.num_heads
    heads = lambda m: m.reshape(h * w, nh, c // nh).transpose(0, 1)  # noqa: E731  (heads, HW, d)
    # row vectors times these matrices: the layouts one GEMV per head reads best
    return PreparedRegionPool(proj(pool.q_proj, tokens), heads(proj(pool.k_proj, tokens)).transpose(1, 2).contiguous(),
                              heads(proj(pool.v_proj, tokens)).contiguous(), pos_q, pos_kv, h, w, spatial_scale)


def prepared_box_embed(pool, prepared: PreparedRegionPool, boxes: Tensor, roi_size: int,
                       chunk: int = 64) -> Tensor:
    """open_clip ``AttentionPool2d(roi_align(C5, boxes))`` for its first token,
    from the prepared image: boxes (N, 4) in input pixels -> (N, output_dim),
    ``chunk`` boxes at a time."""
    if boxes.shape[0] > chunk:
        return torch.cat([prepared_box_embed(pool, prepared, b, roi_size, chunk) for b in boxes.split(chunk)])
    n = boxes.shape[0]
    h, w, r = prepared.height, prepared.width, roi_size
    c = prepared.q_map.shape[1]
    nh = pool.num_heads
    d = c // nh
    dtype = prepared.q_map.dtype
    b = boxes.double() * prepared.spatial_scale
    ay = roi_align_axis_weights(b[:, 1], b[:, 3], h, r).to(dtype)                   # (N, R, H)
    ax = roi_align_axis_weights(b[:, 0], b[:, 2], w, r).to(dtype)                   # (N, R, W)
    # token 0 (the mean of the R*R bins) samples C5 with the outer product of the mean weights
    w0 = torch.einsum('ny,nx->nyx', ay.mean(dim=1), ax.mean(dim=1)).reshape(n, h * w)  # (N, HW)
    pos_k, pos_v = prepared.pos_kv.split(c, dim=1)
    q = ((w0 @ prepared.q_map + prepared.pos_q) * d ** -0.5).view(n, nh, d)
    # logits of token i: q . (W_k token_i + b_k); b_k is the same for every token and cancels
    r_map = torch.bmm(q.transpose(0, 1), prepared.k_heads).view(nh, n, h, w)       # (heads, N, H, W)
    bins = torch.einsum('niy,hnyx->nhix', ay, r_map)                               # rows, then columns:
    bins = torch.einsum('nhix,njx->nhij', bins, ax).reshape(n, nh, r * r)          # the separable RoIAlign
    logits = torch.cat([torch.einsum('np,hnp->nh', w0, r_map.reshape(nh, n, h * w))[..., None], bins], dim=2)
    logits = logits + torch.einsum('nhd,lhd->nhl', q, pos_k.reshape(-1, nh, d))
    attn = logits.softmax(dim=-1)                                                  # (N, heads, L)
    # output: sum_i a_i (W_v token_i + b_v) = (W_v C5) (sum_i a_i w_i) + W_v (sum_i a_i pos_i) + b_v
    a_bins = attn[..., 1:].reshape(n, nh, r, r)
    w_pos = torch.einsum('nhij,njx->nhix', a_bins, ax)
    w_pos = torch.einsum('nhix,niy->nhyx', w_pos, ay).reshape(n, nh, h * w)
    w_pos = w_pos + attn[..., :1] * w0[:, None]                                    # (N, heads, HW)
    o = torch.bmm(w_pos.transpose(0, 1), prepared.v_heads).transpose(0, 1)         # (N, heads, d)
    o = o + torch.einsum('nhl,lhd->nhd', attn, pos_v.reshape(-1, nh, d))
    o = o.reshape(n, c) + pool.v_proj.bias.to(dtype)
    return F.linear(o, pool.c_proj.weight.to(dtype), pool.c_proj.bias.to(dtype))


def positions_match(pool, roi_size: int) -> bool:
    """Whether the pool's positional embedding has the 1 + R*R rows the box path uses."""
    return pool.positional_embedding.shape[0] == roi_size * roi_size + 1
