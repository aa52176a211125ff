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
    projection runs on the 4096 real tokens only and one copy writes them into
    window order with the bias as padding (:func:`windows_from_map`); one copy
    brings the attention output back and crops it (:func:`map_from_windows`),
    and the output projection runs on real tokens only (it is per-token, so
    this commutes). Padded keys still take part in the edge windows' softmax,
    as in the plain block;
  - without autograd, the residual adds, the MLP's GELU and its second GEMM
    (``addmm_``) update tensors the block itself allocated, and the large
    temporaries (qkv map, windows, attention bias, MLP hidden map) are
    :func:`~ovsam.models.scratch.scratch` buffers, reused across blocks inside
    :func:`~ovsam.models.scratch.reuse_scratch` (``SAM2CLIPAdapter`` opens
    one): every fresh activation-sized tensor costs page faults on first
    touch, a large part of the adapter's non-GEMM time at 64x64x1280.

  Swap in/out with :func:`enable_fast_attention`; the module's class changes,
  nothing else (pickling and ``deepcopy`` keep working).

* :func:`enable_channels_last` — the CLIP CNN trunk (and every other convolution)
  in channels-last layout, the layout oneDNN's CPU convolutions run fastest in;
  the maths is unchanged.

* :func:`attention_pool_first_token` — CLIP's attention pool evaluated for the
  one query whose output CLIP keeps (the mean token), with the key and value
  projections folded into that query, so no grid cell is ever projected
  (RN50x16 with a 12x12 RoI: ~0.2 instead of ~8 GFLOP per region). Switched
  on per backbone by :func:`enable_fast_attention_pool`.

* :func:`enable_folded_batchnorm` — the CLIP trunk's eval-mode batch norms
  applied through the weights of the convolutions before them
  (:class:`FoldedBNConv2d`): one pass over each activation map fewer (the
  127 batch norms of RN50x16 took ~0.65 s of its ~6 s at 1024x1024).

* :func:`enable_gemm_deconv` — SAM2CLIP's upsampling level projection (a
  kernel=stride transposed convolution) as one GEMM + pixel shuffle.

* :func:`enable_fast_decoder` — CLIP2SAM's decoder without copying the image
  embedding once per prompt (``CLIP2SAMHead.shared_image_embed``), with the
  prompts decoded in tiles of :data:`DEFAULT_PROMPT_CHUNK` so each tile's
  64x64x256 token maps stay in cache (``CLIP2SAMHead.prompt_chunk``), with the
  two-way transformer's attention to and from the image tokens folded into the
  few prompt tokens (``CLIP2SAMHead.fast_transformer``,
  :func:`folded_two_way_transformer`), and with the mask upscaling head in
  token layout (``CLIP2SAMHead.fast_upscaling``, :func:`upscale_and_predict_masks`).

Every switch applies to inference only where it matters: under autograd or
autocast the in-place updates are skipped (the folded and fused forms stay
differentiable and are tested against the plain gradients).
:func:`optimize_for_inference` turns them all on; ``OVSAMPredictor`` does so
by default.

Equivalence against the plain modules: ``tests/test_performance_equivalence.py``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .scratch import scratch

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


#: Prompts decoded together by the fast decoder (their token maps fit in cache).
DEFAULT_PROMPT_CHUNK = 2


def enable_fast_decoder(module: nn.Module, enabled: bool = True,
                        prompt_chunk: int = DEFAULT_PROMPT_CHUNK) -> int:
    """Let every ``CLIP2SAMHead`` in ``module`` share one image embedding across
    the prompts of an image instead of copying it per prompt, decode the prompts
    in tiles of ``prompt_chunk``, run the two-way transformer with
    :func:`folded_two_way_transformer` and upscale masks with
    :func:`upscale_and_predict_masks`."""
    from .clip2sam import CLIP2SAMHead
    n = 0
    for m in module.modules():
        if isinstance(m, CLIP2SAMHead):
            m.shared_image_embed = enabled
            m.fast_upscaling = enabled
            m.prompt_chunk = prompt_chunk if enabled else 0
            m.fast_transformer = enabled
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


def enable_folded_batchnorm(module: nn.Module, enabled: bool = True) -> int:
    """Fold the eval-mode batch norms of every ResNet ``OpenCLIPBackbone``'s trunk
    into the convolutions before them (:class:`FoldedBNConv2d`), or undo it.
    Returns the number of (conv, BN) pairs switched."""
    from .clip_backbone import OpenCLIPBackbone
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


def enable_gemm_deconv(module: nn.Module, enabled: bool = True) -> int:
    """Let every SAM2CLIP level projection that upsamples (a transposed
    convolution) run as :func:`deconv_as_gemm`. Returns the number switched."""
    from .sam2clip import LevelProjection
    n = 0
    for m in module.modules():
        if isinstance(m, LevelProjection) and isinstance(m.projection, nn.ConvTranspose2d):
            m.gemm_deconv = enabled
            if enabled:  # the GEMM reads the weight as (C_in, C_out*k*k): keep it contiguous
                m.projection.to(memory_format=torch.contiguous_format)
            n += 1
    return n


def optimize_for_inference(model: nn.Module, fast_attention: bool = True, fast_decoder: bool = True,
                           query_chunk: Optional[int] = None, channels_last: bool = True,
                           fast_attention_pool: bool = True, gemm_deconv: bool = True,
                           folded_batchnorm: bool = True) -> nn.Module:
    """Turn on the equivalent fast paths in place; returns ``model``."""
    enable_fast_attention(model, fast_attention, query_chunk)
    enable_fast_decoder(model, fast_decoder)
    enable_channels_last(model, channels_last)
    enable_fast_attention_pool(model, fast_attention_pool)
    enable_gemm_deconv(model, gemm_deconv)
    enable_folded_batchnorm(model, folded_batchnorm)
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
    if keys_pe.shape[0] == 1:
        logits = keys_pe[0] @ m.permute(1, 0, 2).reshape(c, n * nh * t)          # (L, N*H*T)
        logits = logits.view(-1, n, nh * t).transpose(0, 1)                      # (N, L, H*T)
    else:
        logits = torch.bmm(keys_pe, m)
    probs = (logits + bias).view(n, -1, nh, t).softmax(dim=-1).view(n, -1, nh * t)
    base = keys + attn.out_proj.bias
    if base.shape[0] != n:
        base = base.expand(n, -1, -1)
    if not _inplace_ok() or base.stride(0) == 0:  # base is fresh otherwise
        return torch.baddbmm(base, probs, vo)
    return base.baddbmm_(probs, vo)


def folded_two_way_transformer(transformer: nn.Module, image_embedding: Tensor, image_pe: Tensor,
                               point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
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
    Returns:
        queries (N, T, C) and keys (N, h*w, C), as the plain forward.
    """
    pe = image_pe.flatten(2).transpose(1, 2)                  # (1, L, C)
    keys = image_embedding.flatten(2).transpose(1, 2)         # (B, L, C)
    queries = point_embedding
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_pe = keys + pe
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
