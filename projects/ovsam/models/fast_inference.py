"""Opt-in inference fast paths that keep parameters, state-dict keys and (up to
float rounding) outputs of the plain modules.

* :class:`FastBlock` — a drop-in for ``segment_anything``'s ViT ``Block`` (used by
  the SAM2CLIP adapter and SAM's image encoder). Same submodules and weights;
  the forward differs in *how* it computes, not *what*:

  - attention runs through ``torch.nn.functional.scaled_dot_product_attention``
    (the fused CPU flash kernel) with the decomposed relative-position bias
    passed as a float ``attn_mask``; for global attention the queries are
    processed in chunks so the bias never exists for all 4096x4096 pairs at once
    (the plain path materialises the logits, the biased logits and the
    probabilities, ~1 GiB each at 64x64 with 16 heads);
  - windowed blocks pad 64x64 to 70x70 for 14x14 windows. The padded tokens are
    zeros after ``norm1``, so their q/k/v are exactly the qkv bias: the qkv
    projection runs on the 4096 real tokens only and the padding is filled with
    the bias; the output projection runs after un-partitioning, on real tokens
    only (it is per-token, so this commutes). Padded keys still take part in
    the edge windows' softmax, as in the plain block.

  Swap in/out with :func:`enable_fast_attention`; the module's class changes,
  nothing else (pickling and ``deepcopy`` keep working).

* :func:`enable_channels_last` — the CLIP CNN trunk (and every other convolution)
  in channels-last layout, the layout oneDNN's CPU convolutions run fastest in;
  the maths is unchanged.

* :func:`attention_pool_first_token` — CLIP's attention pool evaluated for the
  one query whose output CLIP keeps (the mean token): keys and values of every
  grid cell, a query for one token instead of all ``h*w + 1`` (RN50x16 with a
  12x12 RoI: about a third fewer FLOPs per region). Switched on per backbone
  by :func:`enable_fast_attention_pool`.

* :func:`enable_fast_decoder` — CLIP2SAM's decoder without copying the image
  embedding once per prompt (``CLIP2SAMHead.shared_image_embed``) and with the
  mask upscaling head in token layout (``CLIP2SAMHead.fast_upscaling``,
  :func:`upscale_and_predict_masks`).

Equivalence against the plain modules: ``tests/test_performance_equivalence.py``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

try:  # segment_anything is a hard dependency of the models, but keep import errors readable
    from segment_anything.modeling.image_encoder import Block, get_rel_pos
except ImportError as e:  # pragma: no cover
    raise ImportError('ovsam.models.fast_inference needs segment_anything') from e

#: Query rows per chunk of global attention (bias chunk: heads x rows x L floats).
DEFAULT_QUERY_CHUNK = 1024


def _rel_pos_terms(q: Tensor, attn, size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Decomposed rel-pos terms of SAM's ``add_decomposed_rel_pos``.

    ``q``: (N, heads, h*w, d) unscaled queries. Returns ``rel_h`` (N, heads, h*w, h)
    and ``rel_w`` (N, heads, h*w, w): bias[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)].
    """
    h, w = size
    n, nh, L, d = q.shape
    rh = get_rel_pos(h, h, attn.rel_pos_h)
    rw = get_rel_pos(w, w, attn.rel_pos_w)
    r_q = q.reshape(n * nh, h, w, d)
    rel_h = torch.einsum('bhwc,hkc->bhwk', r_q, rh).reshape(n, nh, L, h)
    rel_w = torch.einsum('bhwc,wkc->bhwk', r_q, rw).reshape(n, nh, L, w)
    return rel_h, rel_w


def fused_attention(attn, q: Tensor, k: Tensor, v: Tensor, size: Tuple[int, int],
                    query_chunk: int = DEFAULT_QUERY_CHUNK) -> Tensor:
    """SAM attention core with SDPA. q/k/v: (N, heads, L, d) -> (N, heads, L, d)."""
    if not attn.use_rel_pos:
        return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    rel_h, rel_w = _rel_pos_terms(q, attn, size)
    n, nh, L, _ = q.shape
    if query_chunk <= 0 or L <= query_chunk:
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(n, nh, L, L)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    out = q.new_empty(q.shape)
    for s in range(0, L, query_chunk):
        e = min(L, s + query_chunk)
        mask = (rel_h[:, :, s:e, :, None] + rel_w[:, :, s:e, None, :]).reshape(n, nh, e - s, L)
        out[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=mask, scale=attn.scale)
    return out


class FastBlock(Block):
    """``segment_anything`` ViT ``Block`` with the fused inference forward (same weights)."""

    query_chunk = DEFAULT_QUERY_CHUNK

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401
        shortcut = x
        x = self.norm1(x)
        a = self.attn
        b, h, w, c = x.shape
        nh = a.num_heads
        qkv = a.qkv(x)  # (B, H, W, 3C), real tokens only
        ws = self.window_size
        if ws > 0:
            hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
            if (hp, wp) != (h, w):
                # Zero tokens after norm1 project to the qkv bias.
                fill = a.qkv.bias if a.qkv.bias is not None else qkv.new_zeros(3 * c)
                padded = fill.to(qkv.dtype).expand(b, hp, wp, 3 * c).clone()
                padded[:, :h, :w] = qkv
                qkv = padded
            qkv = qkv.view(b, hp // ws, ws, wp // ws, ws, 3 * c).permute(0, 1, 3, 2, 4, 5)
            qkv = qkv.reshape(-1, ws * ws, 3, nh, c // nh)
            size = (ws, ws)
        else:
            qkv = qkv.reshape(b, h * w, 3, nh, c // nh)
            size = (h, w)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, d)
        o = fused_attention(a, q, k, v, size, self.query_chunk)
        o = o.permute(0, 2, 1, 3)  # (N, L, heads, d)
        if ws > 0:
            o = o.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
            o = o[:, :h, :w]
        else:
            o = o.reshape(b, h, w, c)
        x = shortcut + a.proj(o)
        return x + self.mlp(self.norm2(x))


def enable_fast_attention(module: nn.Module, enabled: bool = True,
                          query_chunk: Optional[int] = None) -> int:
    """Swap every ``segment_anything`` ViT ``Block`` in ``module`` to :class:`FastBlock`
    (or back with ``enabled=False``). Parameters and state-dict keys are untouched.

    Returns the number of blocks switched.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, Block):
            m.__class__ = FastBlock if enabled else Block
            if enabled and query_chunk is not None:
                m.query_chunk = query_chunk
            n += 1
    return n


def enable_fast_decoder(module: nn.Module, enabled: bool = True) -> int:
    """Let every ``CLIP2SAMHead`` in ``module`` share one image embedding across
    the prompts of an image instead of copying it per prompt, and upscale masks
    with :func:`upscale_and_predict_masks`."""
    from .clip2sam import CLIP2SAMHead
    n = 0
    for m in module.modules():
        if isinstance(m, CLIP2SAMHead):
            m.shared_image_embed = enabled
            m.fast_upscaling = enabled
            n += 1
    return n


def enable_channels_last(module: nn.Module, enabled: bool = True) -> int:
    """Keep convolution weights and the CLIP trunk's activations channels-last
    (or back to contiguous with ``enabled=False``).

    Every ``OpenCLIPBackbone`` converts its input, so the trunk's convolutions,
    batch norms and the feature levels it returns stay channels-last; other
    convolutions (SAM2CLIP patch embeddings, FPN) follow the layout of their
    input. Returns the number of CLIP trunks switched.
    """
    from .clip_backbone import OpenCLIPBackbone
    fmt = torch.channels_last if enabled else torch.contiguous_format
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.to(memory_format=fmt)
        if isinstance(m, OpenCLIPBackbone):
            m.channels_last = enabled
            n += 1
    return n


def attention_pool_first_token(pool: nn.Module, x: Tensor) -> Tensor:
    """open_clip ``AttentionPool2d(x)`` computed for its first (mean) token only.

    The module attends from every token to every token and returns token 0;
    the other queries' outputs are thrown away, so only token 0's query (and
    one output projection) is computed here. Same weights, same result.

    Args:
        pool: an open_clip ``AttentionPool2d``.
        x: (N, C, h, w) with ``h * w + 1`` rows in its positional embedding.
    Returns:
        (N, output_dim).
    """
    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).transpose(1, 2)                         # (N, hw, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)    # (N, hw+1, C)
    tokens = tokens + pool.positional_embedding.to(tokens.dtype)
    nh = pool.num_heads
    q = F.linear(tokens[:, :1], pool.q_proj.weight, pool.q_proj.bias)
    k = F.linear(tokens, pool.k_proj.weight, pool.k_proj.bias)
    v = F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias)
    q, k, v = (t.view(n, t.shape[1], nh, c // nh).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v)                             # (N, heads, 1, d)
    return F.linear(o.reshape(n, c), pool.c_proj.weight, pool.c_proj.bias)


def enable_fast_attention_pool(module: nn.Module, enabled: bool = True) -> int:
    """Let every ResNet ``OpenCLIPBackbone`` pool regions with
    :func:`attention_pool_first_token`. Returns the number switched."""
    from .clip_backbone import OpenCLIPBackbone
    n = 0
    for m in module.modules():
        if isinstance(m, OpenCLIPBackbone) and m.tower_type == 'resnet':
            m.fast_attention_pool = enabled
            n += 1
    return n


def optimize_for_inference(model: nn.Module, fast_attention: bool = True, fast_decoder: bool = True,
                           query_chunk: Optional[int] = None, channels_last: bool = True,
                           fast_attention_pool: bool = True) -> nn.Module:
    """Turn on the equivalent fast paths in place; returns ``model``."""
    enable_fast_attention(model, fast_attention, query_chunk)
    enable_fast_decoder(model, fast_decoder)
    enable_channels_last(model, channels_last)
    enable_fast_attention_pool(model, fast_attention_pool)
    return model


def upscale_and_predict_masks(upscaling: nn.Sequential, tokens: Tensor, hyper: Tensor, h: int, w: int) -> Tensor:
    """SAM's mask head (``output_upscaling`` + hypernetwork product) in token layout.

    Same maths as ``hyper @ upscaling(tokens as (N, C, h, w))``: each
    kernel=stride=2 transposed convolution is a per-pixel linear map to
    (2, 2, C') sub-pixels, ``LayerNorm2d`` a layer norm over channels, so the
    whole head runs on (N, h, w, ..., C) tensors with GEMMs, one fused layer
    norm, and the hypernetwork product before the (cheap, 1-channel) pixel
    shuffle. The plain path transposes the tokens, runs oneDNN deconvolutions
    and a 7-pass ``LayerNorm2d`` on N x 64 x 128 x 128 maps.

    Args:
        upscaling: ``MaskDecoder.output_upscaling`` (ConvT, LayerNorm2d, act, ConvT, act).
        tokens: (N, h*w, C) image tokens out of the two-way transformer.
        hyper: (N, C'') hypernetwork output of the mask token.
    Returns:
        mask logits (N, 1, 4h, 4w).
    """
    ct1, ln, act1, ct2, act2 = upscaling
    n, _, c = tokens.shape
    c1, c2 = ct1.out_channels, ct2.out_channels
    # ConvTranspose2d weight (in, out, kh, kw) -> (in, kh*kw*out)
    w1 = ct1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    b1 = ct1.bias.repeat(4) if ct1.bias is not None else None
    x = torch.matmul(tokens, w1.to(tokens.dtype))
    if b1 is not None:
        x = x + b1.to(x.dtype)
    x = x.view(n, h * w * 4, c1)                       # (.., ki, kj, c1)
    x = act1(F.layer_norm(x, (c1, ), ln.weight.to(x.dtype), ln.bias.to(x.dtype), ln.eps))
    w2 = ct2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = torch.matmul(x, w2.to(x.dtype))
    if ct2.bias is not None:
        x = x + ct2.bias.repeat(4).to(x.dtype)
    x = act2(x).view(n, h * w * 16, c2)                # (.., ki, kj, ki2, kj2, c2)
    m = torch.bmm(x, hyper.to(x.dtype)[:, :, None])    # (N, h*w*16, 1)
    m = m.view(n, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)  # (N, i, ki, ki2, j, kj, kj2)
    return m.reshape(n, 1, 4 * h, 4 * w)
