"""CPU inference fast paths: subclasses of the plain modules, swapped in by one table.

The plain modules (``clip_backbone``, ``sam2clip``, ``clip2sam``, segment_anything's
ViT ``Block``) compute as released and know nothing of this file. Each fast
variant here is a subclass with the same parameters, buffers and state-dict
keys whose forward differs in *how* it computes, not *what* (outputs equal up to
float rounding; ``tests/test_performance_equivalence.py`` checks every one).
:func:`optimize_for_inference` swaps the classes in place following
:data:`FAST_PATHS` (and back with ``enabled=False``); ``OVSAMPredictor`` does so
by default.

==================  =====================================================================
path                what changes
==================  =====================================================================
``attention``       ViT ``Block`` -> :class:`FastBlock`: SDPA with the decomposed
                    rel-pos bias as ``attn_mask`` (global attention in query chunks),
                    windowed blocks project only the real tokens and partition /
                    unpartition in one copy, temporaries in reused scratch buffers.
``clip_backbone``   :class:`FastOpenCLIPBackbone`: channels-last trunk (oneDNN's
                    fastest convolution layout) and CLIP's attention pool evaluated
                    for the one token CLIP keeps (:func:`attention_pool_first_token`).
``folded_batchnorm`` the trunk's eval-mode batch norms applied through the weights of
                    the convolutions before them (:class:`FoldedBNConv2d`).
``channels_last``   every convolution weight channels-last.
``adapter``         :class:`FastSAM2CLIPAdapter` (levels summed in place, one scratch
                    scope for its blocks) and :class:`FastLevelProjection` (the
                    kernel=stride transposed convolution as one GEMM).
``decoder``         :class:`FastCLIP2SAMHead`: one image embedding shared by the
                    prompts of an image, prompts decoded in tiles, the two-way
                    transformer with the image-side projections folded away
                    (:func:`folded_two_way_transformer`), mask upscaling in token
                    layout (:func:`upscale_and_predict_masks`), RoIs pooled from
                    the FPN levels they map to only.
``prompt_encoder``  :class:`FastSAMPromptEncoder`: the dense positional encoding
                    computed once, not per call.
==================  =====================================================================

Under autograd or autocast the in-place updates are skipped (the folded and
fused forms stay differentiable and are tested against the plain gradients).
"""
import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

from .clip2sam import CLIP2SAMHead
from .clip_backbone import OpenCLIPBackbone
from .fast_region_pool import positions_match, prepare_region_pool, prepared_box_embed, roi_align_windows
from .prompt_encoder import SAMPromptEncoder
from .sam2clip import LevelProjection, SAM2CLIPAdapter
from .scratch import reuse_scratch, scratch

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
    """SAM attention core with SDPA. q/k/v: (N, heads, L, d) -> (N, heads, L, d).

    The bias of each query chunk is built in one buffer (a :func:`scratch`
    buffer at inference) that every chunk, and inside :func:`reuse_scratch`
    every block, reuses.
    """
    if not attn.use_rel_pos:
        return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    rel_h, rel_w = _rel_pos_terms(q, attn, size)
    n, nh, L, d = q.shape
    h, w = size
    chunk = L if query_chunk <= 0 else min(L, query_chunk)
    buf = scratch('attn_bias', (n, nh, chunk, h, w), q) if _inplace_ok() else None

    def bias(s: int, e: int) -> Tensor:
        rh, rw = rel_h[:, :, s:e, :, None], rel_w[:, :, s:e, None, :]
        mask = rh + rw if buf is None else torch.add(rh, rw, out=buf[:, :, :e - s])  # autograd: fresh
        return mask.view(n, nh, e - s, L)

    if chunk == L:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias(0, L), scale=attn.scale)
    out = q.new_empty(n, L, nh, d)  # token-major, so the caller's merge of the heads is a view
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        out[:, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=bias(s, e),
                                                     scale=attn.scale).transpose(1, 2)
    return out.transpose(1, 2)


def _window_pieces(n: int, ws: int):
    """Cover tokens 0..n of one axis by (token slice, window slice, offset slice,
    windows, tokens per window): the full windows, then the partial last one."""
    full = n // ws
    pieces = []
    if full:
        pieces.append((slice(0, full * ws), slice(0, full), slice(None), full, ws))
    if n % ws:
        pieces.append((slice(full * ws, n), slice(full, full + 1), slice(0, n % ws), 1, n % ws))
    return pieces


def _window_grid(win: Tensor, b: int, h: int, w: int, ws: int) -> Tensor:
    """(B*nH*nW, ws*ws, C) windows viewed as the padded map split by window:
    (B, nH, ws, nW, ws, C)."""
    nwh, nww = -(-h // ws), -(-w // ws)
    return win.view(b, nwh, nww, ws, ws, win.shape[-1]).permute(0, 1, 3, 2, 4, 5)


def windows_from_map(x: Tensor, ws: int, fill: Optional[Tensor], out: Tensor) -> Tensor:
    """SAM's ``window_partition`` in one pass, padding with ``fill`` (a (C,)
    vector; zeros if None) instead of zeros.

    ``x``: (B, H, W, C); ``out``: (B*nH*nW, ws*ws, C), filled and returned.
    """
    b, h, w, c = x.shape
    grid = _window_grid(out, b, h, w, ws)
    pad = 0. if fill is None else fill.to(out.dtype)
    if h % ws:
        grid[:, -1, h % ws:] = pad
    if w % ws:
        grid[:, :, :, -1, w % ws:] = pad
    for rt, rwin, roff, nr, sr in _window_pieces(h, ws):
        for ct, cwin, coff, nc, sc in _window_pieces(w, ws):
            grid[:, rwin, roff, cwin, coff] = x[:, rt, ct].reshape(b, nr, sr, nc, sc, c)
    return out


def map_from_windows(win: Tensor, b: int, h: int, w: int, ws: int) -> Tensor:
    """SAM's ``window_unpartition`` and crop in one pass: (B*nH*nW, ws*ws, C) -> (B, H, W, C)."""
    c = win.shape[-1]
    grid = _window_grid(win, b, h, w, ws)
    out = win.new_empty(b, h, w, c)
    for rt, rwin, roff, nr, sr in _window_pieces(h, ws):
        for ct, cwin, coff, nc, sc in _window_pieces(w, ws):
            out[:, rt, ct].view(b, nr, sr, nc, sc, c).copy_(grid[:, rwin, roff, cwin, coff])
    return out


def _linear(lin: nn.Linear, x: Tensor, name: str) -> Tensor:
    """``lin(x)`` for x (..., C_in); at inference into the :func:`scratch` buffer ``name``."""
    if not _inplace_ok():
        return lin(x)
    x2d = x.reshape(-1, x.shape[-1])
    out = scratch(name, (x2d.shape[0], lin.out_features), x2d)
    if lin.bias is None:
        torch.mm(x2d, lin.weight.t(), out=out)
    else:
        torch.addmm(lin.bias, x2d, lin.weight.t(), out=out)
    return out.view(*x.shape[:-1], lin.out_features)


class FastBlock(Block):
    """``segment_anything`` ViT ``Block`` with the fused inference forward (same weights)."""

    query_chunk = DEFAULT_QUERY_CHUNK

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401
        shortcut = x
        x = self.norm1(x)
        a = self.attn
        b, h, w, c = x.shape
        nh = a.num_heads
        qkv = _linear(a.qkv, x, 'block_a')  # (B, H, W, 3C), real tokens only
        ws = self.window_size
        if ws > 0:
            # Zero tokens after norm1 project to the qkv bias: pad with it.
            n_win = b * -(-h // ws) * -(-w // ws)
            win = scratch('block_b', (n_win, ws * ws, 3 * c), qkv) if _inplace_ok() else qkv.new_empty(
                n_win, ws * ws, 3 * c)
            qkv = windows_from_map(qkv, ws, a.qkv.bias, win).view(n_win, ws * ws, 3, nh, c // nh)
            size = (ws, ws)
        else:
            qkv = qkv.reshape(b, h * w, 3, nh, c // nh)
            size = (h, w)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, d)
        o = fused_attention(a, q, k, v, size, self.query_chunk).transpose(1, 2)  # (N, L, heads, d)
        if ws > 0:
            o = map_from_windows(o.reshape(o.shape[0], -1, c), b, h, w, ws)
        else:
            o = o.reshape(b, h, w, c)
        mlp = self.mlp
        if not _inplace_ok() or not _is_exact_gelu(mlp.act):
            x = shortcut + a.proj(o)
            return x + mlp(self.norm2(x))
        # Inference: the residual adds and GELU reuse their operands' memory
        # (each fresh activation-sized tensor costs page faults, not just a pass).
        x = a.proj(o)
        x += shortcut
        hidden = _linear(mlp.lin1, self.norm2(x), 'block_a')  # qkv is dead by now
        torch.ops.aten.gelu_(hidden)
        if mlp.lin2.bias is not None:
            x += mlp.lin2.bias
        x2d = x.view(-1, c)
        x2d.addmm_(hidden.view(-1, hidden.shape[-1]), mlp.lin2.weight.t())
        return x


def _is_exact_gelu(act: nn.Module) -> bool:
    return type(act) is nn.GELU and act.approximate == 'none'


def _inplace_ok() -> bool:
    """In-place updates need no autograd graph, and no autocast (whose op
    outputs are in a lower precision than the tensors they would update)."""
    return not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')


#: Prompts decoded together by the fast decoder (their token maps fit in cache).
DEFAULT_PROMPT_CHUNK = 2


class FoldedBNConv2d(nn.Conv2d):
    """``nn.Conv2d`` that also applies the eval-mode ``BatchNorm2d`` which
    follows it, through its weights: ``bn(conv(x)) = conv_{W*s, b*s + t}(x)``
    with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``.

    Parameters and buffers stay where they were (the BN keeps its own and
    becomes :class:`FoldedBatchNorm2d`, an identity in eval mode), so state
    dicts and checkpoints are unchanged; the folded weight is computed per call
    into a :func:`scratch` buffer (caching it would double the trunk's weight
    memory: RN50x16's convolutions hold 136 M parameters). In train mode both
    modules compute as plain ones.
    """

    def forward(self, x: Tensor) -> Tensor:
        bn = self._folded_bn[0]
        if bn.training:
            return super().forward(x)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        if self.bias is not None:
            shift = shift + self.bias * scale
        w = self.weight
        scale = scale.to(w.dtype).view(-1, 1, 1, 1)
        if _inplace_ok() and (w.is_contiguous() or w.is_contiguous(memory_format=torch.channels_last)):
            folded = scratch('folded_conv_weight', (w.numel(), ), w).as_strided(w.shape, w.stride())
            torch.mul(w, scale, out=folded)  # keeps the weight's memory format for oneDNN
        else:
            folded = w * scale
        return self._conv_forward(x, folded, shift.to(w.dtype))


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """The ``BatchNorm2d`` a :class:`FoldedBNConv2d` applies: identity in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) if self.training else x


def _conv_bn_pairs(module: nn.Module):
    """(conv, bn) pairs where the BN is applied right after the conv: consecutive
    children of an ``nn.Sequential`` and ``conv{i}``/``bn{i}`` siblings (open_clip's
    ``ModifiedResNet`` stem and ``Bottleneck``)."""
    for m in module.modules():
        children = dict(m.named_children())
        if isinstance(m, nn.Sequential):
            mods = list(children.values())
            pairs = zip(mods[:-1], mods[1:])
        else:
            pairs = ((c, children.get('bn' + n[len('conv'):])) for n, c in children.items() if n.startswith('conv'))
        for conv, bn in pairs:
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                yield conv, bn


def _fold_batchnorms(module: nn.Module, enabled: bool) -> int:
    """Fold (or unfold) the eval-mode batch norms of every ResNet CLIP trunk
    into the convolutions before them. Returns the number of pairs switched."""
    seen = set()
    for m in module.modules():
        if not (isinstance(m, OpenCLIPBackbone) and m.tower_type == 'resnet'):
            continue
        for conv, bn in _conv_bn_pairs(m):
            if id(conv) in seen:
                continue
            seen.add(id(conv))
            if enabled:
                conv.__class__, bn.__class__ = FoldedBNConv2d, FoldedBatchNorm2d
                conv._folded_bn = (bn, )  # a tuple: not registered as a submodule
            else:
                conv.__class__, bn.__class__ = nn.Conv2d, nn.BatchNorm2d
                conv.__dict__.pop('_folded_bn', None)
    return len(seen)


def attention_pool_first_token(pool: nn.Module, x: Tensor) -> Tensor:
    """open_clip ``AttentionPool2d(x)`` for its first (mean) token, with the key
    and value projections folded into that one query.

    CLIP keeps only token 0's output. For one query per head ``q_h`` the
    attention logits are ``q_h . (W_k,h x_i + b_k,h) / sqrt(d)``: the bias term
    is the same for every key and cancels in the softmax, and
    ``q_h . W_k,h x_i = (W_k,h^T q_h) . x_i``; the output
    ``sum_i a_i (W_v,h x_i + b_v,h) = W_v,h (sum_i a_i x_i) + b_v,h`` since the
    weights sum to one. So no key or value of the ``h*w + 1`` tokens is ever
    projected: per region this costs O(heads x C x tokens) instead of
    O(tokens x C^2) (RN50x16 with a 12x12 RoI: ~0.2 instead of ~5.5 GFLOP).
    Same weights, same result up to float rounding.

    Args:
        pool: an open_clip ``AttentionPool2d``.
        x: (N, C, h, w) with ``h * w + 1`` rows in its positional embedding.
    Returns:
        (N, output_dim).
    """
    n, c, h, w = x.shape
    nh = pool.num_heads
    d = c // nh
    tokens = x.reshape(n, c, h * w).transpose(1, 2)                         # (N, hw, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)    # (N, L, C)
    tokens = tokens + pool.positional_embedding.to(tokens.dtype)
    q = F.linear(tokens[:, 0], pool.q_proj.weight, pool.q_proj.bias).view(n, nh, d) * d ** -0.5
    u = torch.einsum('nhd,hdc->nhc', q, pool.k_proj.weight.view(nh, d, c).to(q.dtype))  # (N, heads, C)
    attn = torch.bmm(u, tokens.transpose(1, 2)).softmax(dim=-1)             # (N, heads, L)
    z = torch.bmm(attn, tokens)                                             # (N, heads, C)
    o = torch.einsum('nhc,hdc->nhd', z, pool.v_proj.weight.view(nh, d, c).to(z.dtype))
    o = o.reshape(n, c) + pool.v_proj.bias.to(o.dtype)
    return F.linear(o, pool.c_proj.weight, pool.c_proj.bias)


def deconv_as_gemm(deconv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """A kernel=stride transposed convolution as one GEMM, channels-last out.

    Each input pixel maps linearly to a k x k block of output pixels, so
    ``(B*h*w, C_in) @ W.view(C_in, C_out*k*k)`` followed by a pixel shuffle is
    the whole layer (oneDNN's deconvolution runs the RN50x16 C5 level of the
    SAM2CLIP adapter at ~60 % of the GEMM's rate).

    Args:
        deconv: ``nn.ConvTranspose2d`` with kernel == stride, no padding/groups/dilation.
        x: (B, C_in, h, w).
    Returns:
        (B, k*h, k*w, C_out), i.e. ``deconv(x).permute(0, 2, 3, 1)``.
    """
    k = deconv.kernel_size[0]
    if (deconv.kernel_size != (k, k) or deconv.stride != (k, k) or deconv.padding != (0, 0)
            or deconv.output_padding != (0, 0) or deconv.groups != 1 or deconv.dilation != (1, 1)):
        raise ValueError(f'deconv_as_gemm needs kernel == stride and no padding/groups/dilation, got {deconv}')
    b, c, h, w = x.shape
    co = deconv.out_channels
    y = x.permute(0, 2, 3, 1).reshape(b * h * w, c) @ deconv.weight.to(x.dtype).reshape(c, co * k * k)
    y = y.view(b, h, w, co, k, k).permute(0, 1, 4, 2, 5, 3).reshape(b, h * k, w * k, co)
    if deconv.bias is not None:
        y = y + deconv.bias.to(y.dtype)
    return y


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
    inplace = _inplace_ok() and _is_exact_gelu(act1) and _is_exact_gelu(act2)
    x = torch.matmul(tokens, w1.to(tokens.dtype))
    if b1 is not None:
        x = x.add_(b1.to(x.dtype)) if inplace else x + b1.to(x.dtype)
    x = x.view(n, h * w * 4, c1)                       # (.., ki, kj, c1)
    x = F.layer_norm(x, (c1, ), ln.weight.to(x.dtype), ln.bias.to(x.dtype), ln.eps)
    x = torch.ops.aten.gelu_(x) if inplace else act1(x)
    w2 = ct2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = torch.matmul(x, w2.to(x.dtype))
    if ct2.bias is not None:
        b2 = ct2.bias.repeat(4).to(x.dtype)
        x = x.add_(b2) if inplace else x + b2
    x = (torch.ops.aten.gelu_(x) if inplace else act2(x)).view(n, h * w * 16, c2)  # (.., ki, kj, ki2, kj2, c2)
    m = torch.bmm(x, hyper.to(x.dtype)[:, :, None])    # (N, h*w*16, 1)
    m = m.view(n, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)  # (N, i, ki, ki2, j, kj, kj2)
    return m.reshape(n, 1, 4 * h, 4 * w)


# ----------------------------------------------------------------------------
# CLIP2SAM's two-way transformer with the image-side projections folded away
# ----------------------------------------------------------------------------
def _heads(x: Tensor, nh: int) -> Tensor:
    """(N, T, D) -> (N, heads, T, D / heads)."""
    n, t, d = x.shape
    return x.view(n, t, nh, d // nh).transpose(1, 2)


def _tokens_to_image(attn, q_tokens: Tensor, keys_pe: Tensor, keys: Tensor) -> Tensor:
    """SAM ``Attention(q=q_tokens, k=keys_pe, v=keys)`` without projecting the
    image tokens.

    With T query tokens and H heads, the logits ``q_h . (W_k,h k_i + b_k,h)``
    equal ``(W_k,h^T q_h) . k_i`` plus a per-query constant that cancels in the
    softmax, and ``sum_i a_i (W_v,h v_i + b_v,h) = W_v,h (sum_i a_i v_i) + b_v,h``.
    So the image tokens are read twice by (H*T)-column GEMMs instead of being
    projected to two (L, D) maps. ``keys_pe``/``keys``: (B, L, C) with B = N or 1
    (one image shared by all N prompts). Returns (N, T, C).
    """
    n, t, _ = q_tokens.shape
    nh, di = attn.num_heads, attn.internal_dim
    dh = di // nh
    c = keys.shape[-1]
    q = _heads(attn.q_proj(q_tokens), nh) * dh ** -0.5                          # (N, H, T, dh)
    u = torch.einsum('nhtd,hdc->nhtc', q, attn.k_proj.weight.view(nh, dh, c))   # (N, H, T, C)
    u = u.reshape(n, nh * t, c)
    if keys.shape[0] == 1:  # one image: all prompts in one GEMM
        logits = (u.reshape(1, n * nh * t, c) @ keys_pe.transpose(1, 2)).view(n, nh * t, -1)
        probs = logits.softmax(dim=-1)
        z = (probs.view(1, n * nh * t, -1) @ keys).view(n, nh, t, c)
    else:
        probs = torch.bmm(u, keys_pe.transpose(1, 2)).softmax(dim=-1)           # (N, H*T, L)
        z = torch.bmm(probs, keys).view(n, nh, t, c)
    o = torch.einsum('nhtc,hdc->nthd', z, attn.v_proj.weight.view(nh, dh, c)).reshape(n, t, di)
    o = o + attn.v_proj.bias
    return attn.out_proj(o)


def _softmax_few(logits: Tensor, n: int, nh: int, t: int) -> Tensor:
    """Softmax over the T (a handful of) prompt tokens of (N, L, H*T) logits,
    per head. ``Tensor.softmax`` over a last dimension of 4-8 runs ~5x slower
    than these four elementwise passes (L = 4,096 rows x heads)."""
    x = logits.view(n, -1, nh, t)
    x = x - x.amax(dim=-1, keepdim=True)
    x = x.exp_() if _inplace_ok() else x.exp()
    s = x.sum(dim=-1, keepdim=True)
    x = x.div_(s) if _inplace_ok() else x / s
    return x.view(n, -1, nh * t)


def _image_to_tokens_residual(attn, keys_pe: Tensor, q_tokens: Tensor, v_tokens: Tensor, keys: Tensor) -> Tensor:
    """``keys + Attention(q=keys_pe, k=q_tokens, v=v_tokens)`` without projecting
    the image tokens.

    The logits of image token i for token t in head h are
    ``k_i . (W_q,h^T k_t,h) + b_q,h . k_t,h`` (scaled); the softmax runs over the
    T tokens, and the output projection is folded into the values
    (``W_o,h v_t,h``), so the update is one (L, H*T) x (H*T, C) product per prompt.
    ``keys_pe``/``keys``: (B, L, C), B = N or 1. Returns the new (N, L, C) keys
    before the layer norm.
    """
    n, t, _ = q_tokens.shape
    nh, di = attn.num_heads, attn.internal_dim
    dh = di // nh
    c = keys.shape[-1]
    k = _heads(attn.k_proj(q_tokens), nh) * dh ** -0.5                           # (N, H, T, dh)
    v = _heads(attn.v_proj(v_tokens), nh)                                        # (N, H, T, dh)
    m = torch.einsum('nhtd,hdc->ncht', k, attn.q_proj.weight.view(nh, dh, c)).reshape(n, c, nh * t)
    bias = torch.einsum('nhtd,hd->nht', k, attn.q_proj.bias.view(nh, dh)).reshape(n, 1, nh * t)
    w_o = attn.out_proj.weight.view(c, nh, dh)
    vo = torch.einsum('nhtd,chd->nhtc', v, w_o).reshape(n, nh * t, c)           # (N, H*T, C)
    # each head's weights sum to one over its T tokens: the H heads' rows of vo
    # each carrying b_o / H add up to the output bias, with no pass over (L, C)
    vo = vo + attn.out_proj.bias / nh
    if keys_pe.shape[0] == 1:
        logits = keys_pe[0] @ m.permute(1, 0, 2).reshape(c, n * nh * t)          # (L, N*H*T)
        logits = logits.view(-1, n, nh * t).transpose(0, 1)                      # (N, L, H*T)
    else:
        logits = torch.bmm(keys_pe, m)
    probs = _softmax_few(logits + bias, n, nh, t)
    base = keys if keys.shape[0] == n else keys.expand(n, -1, -1)
    return torch.baddbmm(base, probs, vo)


def folded_two_way_transformer(transformer: nn.Module, image_embedding: Tensor, image_pe: Tensor,
                               point_embedding: Tensor, keys_pe0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``segment_anything``'s ``TwoWayTransformer.forward`` with every attention
    between the few prompt tokens and the L image tokens computed without
    projecting the image tokens (see :func:`_tokens_to_image` and
    :func:`_image_to_tokens_residual`): per prompt and attention, two GEMMs with
    H*T columns instead of two or three (L, C) x (C, C/2) projections.
    Same weights and outputs (up to float rounding) as the plain forward.

    ``image_embedding`` may have batch 1 for N prompts (one image): the first
    layer's image-side work is then done once for all prompts.

    Args:
        image_embedding: (B, C, h, w), B = N or 1; image_pe: (1, C, h, w);
        point_embedding: (N, T, C).
        keys_pe0: the first layer's ``keys + pe`` if already at hand (B, L, C).
    Returns:
        queries (N, T, C) and keys (N, h*w, C), as the plain forward.
    """
    pe = image_pe.flatten(2).transpose(1, 2)                  # (1, L, C)
    keys = image_embedding.flatten(2).transpose(1, 2)         # (B, L, C)
    queries = point_embedding
    for i, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_pe = keys_pe0 if i == 0 and keys_pe0 is not None else keys + pe
        queries = layer.norm2(queries + _tokens_to_image(
            layer.cross_attn_token_to_image, queries + point_embedding, keys_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        new_keys = _image_to_tokens_residual(layer.cross_attn_image_to_token, keys_pe,
                                             queries + point_embedding, queries, keys)
        del keys_pe
        keys = layer.norm4(new_keys)
    if keys.shape[0] != queries.shape[0]:  # depth 0: nothing made the keys per prompt
        keys = keys.expand(queries.shape[0], -1, -1)
    attn_out = _tokens_to_image(transformer.final_attn_token_to_image, queries + point_embedding,
                                keys + pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys


# ----------------------------------------------------------------------------
# Fast subclasses of this project's plain modules
# ----------------------------------------------------------------------------
class FastOpenCLIPBackbone(OpenCLIPBackbone):
    """:class:`OpenCLIPBackbone` with a channels-last trunk (inside one scratch
    scope, which the folded convolution weights use) and CLIP's attention pool
    computed for its kept token only (:func:`attention_pool_first_token`)."""

    def _trunk(self, x: Tensor) -> Tuple[Tensor, ...]:
        with reuse_scratch():
            return super()._trunk(x.contiguous(memory_format=torch.channels_last))

    def pool(self, feats: Tensor) -> Tensor:
        if self.tower_type == 'resnet':
            return attention_pool_first_token(self.head, feats)
        return super().pool(feats)

    prepared_cache_size = 2

    def prepare_box_embed(self, c5: Tensor) -> bool:
        """Prepare one image's C5 (1, C5, h, w) for fast box embeddings
        (:mod:`~ovsam.models.fast_region_pool`: its positions projected by the
        attention pool once, ~0.3 s at real size, 38 MB kept for the last
        :attr:`prepared_cache_size` images). For interactive use, where one
        image gets many small calls. Returns whether it applies (a ResNet
        tower, one image)."""
        if self.tower_type != 'resnet' or c5.dim() != 4 or c5.shape[0] != 1 or c5.is_inference() or \
                not positions_match(self.head, self.roi_size):
            return False  # (inference tensors keep no version: a change could not be noticed)
        if self._prepared(c5) is None:
            with torch.no_grad():
                prepared = prepare_region_pool(self.head, self.clip_feature(c5))
            cache = self.__dict__.setdefault('_prepared_c5', [])
            cache.append((weakref.ref(c5), c5._version, prepared))
            del cache[:-self.prepared_cache_size]
        return True

    def _prepared(self, c5: Tensor):
        """The prepared maps of ``c5``: the same memory (a view of the prepared
        tensor, e.g. ``clip_feats[-1][0:1]``; the prepared tensor is alive, so
        its memory holds it) at the same in-place version."""
        if c5.is_inference():
            return None
        for ref, version, prepared in self.__dict__.get('_prepared_c5', ()):
            t = ref()
            if t is not None and t.data_ptr() == c5.data_ptr() and t.shape == c5.shape and \
                    t.stride() == c5.stride() and t.dtype == c5.dtype and version == c5._version:
                return prepared
        return None

    def box_embed(self, c5: Tensor, rois: Tensor) -> Tensor:
        """As the plain method; from the prepared projections when ``c5`` was
        prepared (:meth:`prepare_box_embed`) and no gradient is needed."""
        prepared = None if torch.is_grad_enabled() else self._prepared(c5)
        if prepared is None or not bool((rois[:, 0] == 0).all()):
            return super().box_embed(c5, rois)
        return prepared_box_embed(self.head, prepared, rois[:, 1:].float(), self.roi_size)


class FastLevelProjection(LevelProjection):
    """:class:`LevelProjection` whose upsampling (transposed) convolution runs
    as one GEMM + pixel shuffle (:func:`deconv_as_gemm`)."""

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.projection, nn.ConvTranspose2d):
            return deconv_as_gemm(self.projection, x)
        return super().forward(x)


class FastSAM2CLIPAdapter(SAM2CLIPAdapter):
    """:class:`SAM2CLIPAdapter` that sums its levels in place at inference and
    runs its blocks in one :func:`reuse_scratch` scope (their temporaries are
    shared by all blocks)."""

    def forward(self, feats):
        with reuse_scratch():
            return super().forward(feats)

    def embed_levels(self, feats) -> Tensor:
        if not _inplace_ok():
            return super().embed_levels(feats)
        # The same sum, with the constant level and position embeddings added
        # together: two passes over the 64x64x1280 map instead of eight.
        x = None
        for embed, f in zip(self.patch_embeds, feats):
            y = embed(f)
            x = y.contiguous() if x is None else x.add_(y)
        return x.add_(self.pos_embed + self.level_encoding.weight.sum(0))


class FastCLIP2SAMHead(CLIP2SAMHead):
    """:class:`CLIP2SAMHead` decoding the prompts of one image against one copy
    of its embedding, in tiles of :attr:`prompt_chunk` prompts (each tile's
    token maps stay in cache), with :func:`folded_two_way_transformer` and
    :func:`upscale_and_predict_masks`."""

    prompt_chunk = DEFAULT_PROMPT_CHUNK

    def decode_prompts(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                       batch_idx: Tensor) -> Tuple[Tensor, Tensor]:
        n = sparse.shape[0]
        shared = n >= 1 and bool((batch_idx == batch_idx[0]).all()) and (dense.shape[0] == 1
                                                                          or dense.stride(0) == 0)
        if not shared:
            return self.decode_masks(image_embed[batch_idx], image_pe, sparse, dense)
        i = int(batch_idx[0])
        embed, dense = image_embed[i:i + 1], dense[:1]  # views: no copy of the embedding
        chunk = self.prompt_chunk
        if 0 < chunk < n:
            outs = [self.decode_masks(embed, image_pe, sparse[s:s + chunk], dense) for s in range(0, n, chunk)]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return self.decode_masks(embed, image_pe, sparse, dense)

    def decode_masks(self, image_embed: Tensor, image_pe: Tensor, sparse: Tensor,
                     dense: Tensor) -> Tuple[Tensor, Tensor]:
        """As the plain method; ``image_embed`` and ``dense`` may also have batch 1
        for N prompts (one image, one dense prompt)."""
        dec = self.mask_decoder
        n = sparse.shape[0]
        tokens = torch.cat([self.label_token.weight, dec.mask_tokens.weight], dim=0)
        queries = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src, keys_pe0 = self._image_side(image_embed, dense, image_pe)
        pos = image_pe if src.shape[0] == 1 else image_pe.expand(n, -1, -1, -1)
        _, c, h, w = src.shape
        if queries.shape[1] * dec.transformer.num_heads <= dec.transformer.final_attn_token_to_image.internal_dim:
            hs, src = folded_two_way_transformer(dec.transformer, src, pos, queries, keys_pe0)
        else:  # many prompt tokens: folding would cost more than it saves
            hs, src = dec.transformer(src, pos, queries)
        if src.shape[0] != n:
            src = src.expand(n, -1, -1)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])
        return upscale_and_predict_masks(dec.output_upscaling, src, hyper, h, w), hs[:, 0]

    def _image_side(self, image_embed: Tensor, dense: Tensor, image_pe: Tensor):
        """``image_embed + dense`` and, for one shared image, its first-layer
        keys plus positions (1, h*w, C), kept from the last call when the same
        memory at the same version comes again (clicks without a mask prompt
        on one image: the same embedding, the no-mask embedding, the same
        positions). The cache holds its inputs' tensors, so their memory
        cannot be reused by others while it compares their addresses."""
        inputs = (image_embed, dense, image_pe)
        if torch.is_grad_enabled() or image_embed.shape[0] != 1 or dense.shape[0] != 1 or \
                any(t.is_inference() for t in inputs):  # inference tensors keep no version to compare
            return image_embed + dense, None
        key = tuple((t.data_ptr(), tuple(t.shape), t.stride(), t._version, t.dtype, t.device) for t in inputs)
        cached = self.__dict__.get('_image_side_cache')
        if cached is not None and cached[0] == key:
            return cached[2], cached[3]
        src = image_embed + dense
        keys_pe0 = src.flatten(2).transpose(1, 2) + image_pe.flatten(2).transpose(1, 2)
        self.__dict__['_image_side_cache'] = (key, tuple(t._base if t._base is not None else t for t in inputs),
                                              src, keys_pe0)
        return src, keys_pe0

    def region_embed(self, fpn_feats: Sequence[Tensor], rois: Tensor, label_out: Tensor) -> Tensor:
        """As the plain method, pooling only the FPN levels the RoIs map to.

        mmdet's ``SingleRoIExtractor`` adds ``feats[i].sum() * 0`` for every
        level no RoI maps to, so that DDP sees each level in the graph; at
        inference that is a pass over the unused levels per call (one click:
        the 256 x 256 and 128 x 128 levels, ~4x the work of the RoIAlign
        itself). Same values for finite features.
        """
        if torch.is_grad_enabled() or not isinstance(self.roi, SingleRoIExtractor) or len(fpn_feats) == 1:
            return super().region_embed(fpn_feats, rois, label_out)
        rois = rois.float()
        levels = self.roi.map_roi_levels(rois, len(fpn_feats))
        out_size = self.roi.roi_layers[0].output_size
        roi_feats = rois.new_zeros(rois.shape[0], self.roi.out_channels, *out_size)
        for lvl in levels.unique().tolist():
            inds = (levels == lvl).nonzero(as_tuple=False)[:, 0]
            layer, feat = self.roi.roi_layers[lvl], fpn_feats[lvl]
            if self._windowed(layer, feat, rois[inds]):
                roi_feats[inds] = roi_align_windows(feat.float(), rois[inds, 1:], layer.output_size[0],
                                                    layer.spatial_scale, layer.sampling_ratio)
            else:
                roi_feats[inds] = layer(feat.float().contiguous(), rois[inds])
        return self.embed_roi_feats(roi_feats, label_out)

    #: RoIs per FPN level up to which each is pooled from its own window
    #: (:func:`~ovsam.models.fast_region_pool.roi_align_windows`).
    windowed_max_rois = 8

    def _windowed(self, layer: nn.Module, feat: Tensor, rois: Tensor) -> bool:
        from mmcv.ops import RoIAlign
        return (isinstance(layer, RoIAlign) and layer.pool_mode == 'avg' and layer.aligned
                and not layer.use_torchvision and layer.output_size[0] == layer.output_size[1]
                and feat.shape[0] == 1 and rois.shape[0] <= self.windowed_max_rois and bool((rois[:, 0] == 0).all()))


class FastSAMPromptEncoder(SAMPromptEncoder):
    """:class:`SAMPromptEncoder` whose dense positional encoding (the same
    (1, C, E, E) map for every prompt: a random-Fourier ``sin`` / ``cos`` of
    the 64 x 64 grid) is computed once and kept while the encoder's Gaussian
    matrix is unchanged (same tensor, same in-place version)."""

    def get_dense_pe(self) -> Tensor:
        gauss = self.pe_layer.positional_encoding_gaussian_matrix
        if torch.is_grad_enabled() or gauss.is_inference():
            return super().get_dense_pe()
        key = (gauss.data_ptr(), gauss._version, gauss.device, gauss.dtype, tuple(self.image_embedding_size),
               torch.is_autocast_enabled(gauss.device.type))
        cached = self.__dict__.get('_dense_pe')
        if cached is None or cached[0] != key or cached[1]() is not gauss:
            cached = (key, weakref.ref(gauss), super().get_dense_pe())
            self.__dict__['_dense_pe'] = cached
        return cached[2]


# ----------------------------------------------------------------------------
# The one swap table
# ----------------------------------------------------------------------------
def _swap_classes(pairs):
    def apply(model: nn.Module, enabled: bool) -> int:
        table = {plain: fast for plain, fast in pairs} if enabled else {fast: plain for plain, fast in pairs}
        n = 0
        for m in model.modules():
            new = table.get(type(m))
            if new is not None:
                m.__class__ = new
                n += 1
        return n
    return apply


def _channels_last_weights(model: nn.Module, enabled: bool) -> int:
    # the GEMM of a fast level projection reads its weight as (C_in, C_out*k*k)
    gemm = {id(m.projection) for m in model.modules() if type(m) is FastLevelProjection}
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            last = enabled and id(m) not in gemm
            m.to(memory_format=torch.channels_last if last else torch.contiguous_format)
            n += 1
    return n


#: Every fast path, in the order they are applied: name -> ``apply(model, enabled) -> count``.
FAST_PATHS = {
    'attention': _swap_classes([(Block, FastBlock)]),
    'clip_backbone': _swap_classes([(OpenCLIPBackbone, FastOpenCLIPBackbone)]),
    'folded_batchnorm': _fold_batchnorms,
    'adapter': _swap_classes([(SAM2CLIPAdapter, FastSAM2CLIPAdapter), (LevelProjection, FastLevelProjection)]),
    'channels_last': _channels_last_weights,
    'decoder': _swap_classes([(CLIP2SAMHead, FastCLIP2SAMHead)]),
    'prompt_encoder': _swap_classes([(SAMPromptEncoder, FastSAMPromptEncoder)]),
}

#: The fast classes (what :func:`fast_modules` looks for).
FAST_CLASSES = (FastBlock, FastOpenCLIPBackbone, FoldedBNConv2d, FoldedBatchNorm2d, FastSAM2CLIPAdapter,
                FastLevelProjection, FastCLIP2SAMHead, FastSAMPromptEncoder)


def optimize_for_inference(model: nn.Module, enabled: bool = True, paths: Optional[Sequence[str]] = None,
                           query_chunk: Optional[int] = None, prompt_chunk: Optional[int] = None) -> Dict[str, int]:
    """Swap the fast paths of :data:`FAST_PATHS` in (or back out with
    ``enabled=False``), in place, for every matching module of ``model``.

    Args:
        paths: a subset of :data:`FAST_PATHS` names (default: all).
        query_chunk: query rows per chunk of the fast global attention.
        prompt_chunk: prompts per tile of the fast decoder (0: all at once).
    Returns:
        how many modules each path switched.
    """
    names = list(FAST_PATHS) if paths is None else list(paths)
    unknown = set(names) - set(FAST_PATHS)
    if unknown:
        raise ValueError(f'unknown fast paths {sorted(unknown)}; choose from {list(FAST_PATHS)}')
    counts = {name: FAST_PATHS[name](model, enabled) for name in FAST_PATHS if name in names}
    if enabled:
        for m in model.modules():
            if query_chunk is not None and isinstance(m, FastBlock):
                m.query_chunk = query_chunk
            if prompt_chunk is not None and isinstance(m, FastCLIP2SAMHead):
                m.prompt_chunk = prompt_chunk
    return counts


def fast_modules(model: nn.Module) -> list:
    """The modules of ``model`` currently running a fast path (empty: all plain)."""
    return [m for m in model.modules() if isinstance(m, FAST_CLASSES)]
