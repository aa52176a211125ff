"""The fast inference paths (subclasses swapped in by one table) give the
plain modules' outputs.

Tolerances (fp32, CPU): attention through SDPA with the rel-pos bias as a mask
only re-associates sums, so ViT blocks / adapters / image encoders agree to
``atol=rtol=1e-5`` (observed ~1e-6 at 1280 channels); the shared-embedding
decoder computes the very same operations broadcast, and the folded
attentions (CLIP's attention pool, the two-way transformer) only re-associate
products, ``atol=rtol=1e-5`` on logits. Binary masks and labels must match exactly on these inputs.
No timing assertions here: speed is measured by tools/analysis/benchmark.py.
"""
import copy
from functools import partial

import pytest
import torch
import torch.nn as nn

from conftest import build_tiny, make_batch

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
TOL = dict(atol=1e-5, rtol=1e-5)


def fast_path(module, name, enabled=True, **options):
    """Swap one path of ``FAST_PATHS`` in (or out); returns how many modules it switched."""
    from ovsam.models.fast_inference import optimize_for_inference
    return optimize_for_inference(module, enabled, paths=[name], **options)[name]


def _block(dim=32, heads=4, window=4, size=10, qkv_bias=True, rel_pos=True, seed=0):
    from segment_anything.modeling.image_encoder import Block
    torch.manual_seed(seed)
    blk = Block(dim, heads, 4.0, qkv_bias, partial(nn.LayerNorm, eps=1e-6), nn.GELU, rel_pos, True, window,
                (size, size)).eval()
    if rel_pos:
        with torch.no_grad():  # zero-initialised by default: make the bias matter
            blk.attn.rel_pos_h.normal_(0, 0.5)
            blk.attn.rel_pos_w.normal_(0, 0.5)
    return blk


@pytest.mark.parametrize('window,size,qkv_bias,rel_pos,chunk', [
    (4, 10, True, True, None),    # windowed, 10 -> padded to 12
    (4, 8, True, True, None),     # windowed, no padding
    (4, 10, False, True, None),   # padding without a qkv bias
    (0, 10, True, True, None),    # global
    (0, 10, True, True, 16),      # global, queries in chunks of 16 (last chunk partial)
    (0, 9, True, False, None),    # no relative positions
])
def test_fast_block_matches_plain(window, size, qkv_bias, rel_pos, chunk):
    from ovsam.models.fast_inference import FastBlock
    blk = _block(window=window, size=size, qkv_bias=qkv_bias, rel_pos=rel_pos)
    fast = copy.deepcopy(blk)
    assert fast_path(fast, 'attention', query_chunk=chunk) == 1
    assert isinstance(fast, FastBlock)
    x = torch.randn(2, size, size, 32)
    with torch.no_grad():
        ref, out = blk(x), fast(x)
    torch.testing.assert_close(out, ref, **TOL)


def test_fast_attention_keeps_state_dict_and_reverts():
    from segment_anything.modeling.image_encoder import Block
    blk = _block()
    keys = list(blk.state_dict())
    fast_path(blk, 'attention')
    assert list(blk.state_dict()) == keys
    copy.deepcopy(blk)  # still copyable / picklable
    fast_path(blk, 'attention', enabled=False)
    assert type(blk) is Block


def test_fast_block_gradients_match():
    blk = _block(window=4, size=10).train()
    fast = copy.deepcopy(blk)
    fast_path(fast, 'attention')
    x = torch.randn(1, 10, 10, 32)
    blk(x).square().sum().backward()
    fast(x).square().sum().backward()
    for (n, p), q in zip(blk.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=n)


def _randomise_rel_pos(model):
    from segment_anything.modeling.image_encoder import Block
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Block) and m.attn.use_rel_pos:
                m.attn.rel_pos_h.copy_(torch.randn(m.attn.rel_pos_h.shape, generator=g) * 0.3)
                m.attn.rel_pos_w.copy_(torch.randn(m.attn.rel_pos_w.shape, generator=g) * 0.3)


def test_adapter_fast_paths_match(tiny_cfg):
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    from ovsam.models.fast_inference import FastBlock, FastSAM2CLIPAdapter, optimize_for_inference
    cfg = dict(tiny_cfg.model.neck)
    torch.manual_seed(0)
    plain = MODELS.build(cfg)
    plain.init_weights()
    _randomise_rel_pos(plain)
    fast = MODELS.build(cfg)
    optimize_for_inference(fast)
    assert isinstance(fast, FastSAM2CLIPAdapter)
    assert all(isinstance(b, FastBlock) for b in fast.blocks)
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict())
    feats = [torch.randn(1, c, 256 // s, 256 // s) for c, s in zip(cfg['in_channels'], cfg['strides'])]
    with torch.no_grad():
        torch.testing.assert_close(fast(feats), plain(feats), **TOL)


def test_sam_image_encoder_fast_attention():
    from ovsam.models import build_sam_image_encoder
    torch.manual_seed(0)
    enc = build_sam_image_encoder('custom', image_size=160, out_chans=16, embed_dim=32, depth=2, num_heads=4,
                                  global_attn_indexes=(1, ), window_size=4).eval()  # 10x10 grid, padded
    _randomise_rel_pos(enc)
    fast = copy.deepcopy(enc)
    assert fast_path(fast, 'attention') == 2
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), enc(x), **TOL)


def _head_inputs(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.pe.input_image_size[0]
    xy = torch.rand(n, 2, generator=g) * size * 0.6
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * size * 0.3], 1)
    sparse, dense = model.pe(None, boxes, None)
    return boxes, sparse, dense


def test_shared_image_embed_decoder_matches(tiny_model):
    from ovsam.models.fast_inference import FastCLIP2SAMHead
    model = tiny_model
    x = torch.randn(2, 3, 256, 256)
    boxes, sparse, dense = _head_inputs(model, 6)
    head = model.mask_decoder
    fast = copy.deepcopy(head)
    assert fast_path(fast, 'decoder') == 1 and type(fast) is FastCLIP2SAMHead
    with torch.no_grad():
        _, embed, fpn = model.extract_feat(x)
        pe = model.pe.get_dense_pe()
        for idx in (torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long),
                    torch.tensor([0, 1, 0, 1, 1, 0])):  # the mixed batch falls back to the plain path
            ref = head(embed, pe, sparse, dense, fpn, batch_idx=idx)
            out = fast(embed, pe, sparse, dense, fpn, batch_idx=idx)
            torch.testing.assert_close(out[0], ref[0], **TOL)
            torch.testing.assert_close(out[1], ref[1], **TOL)
            torch.testing.assert_close(out[2], ref[2])


@pytest.mark.parametrize('chunk', [1, 4, 10, 32])
def test_prompt_chunks_match_one_batch(tiny_model, chunk):
    """Tiled decoding (10 prompts in tiles of ``chunk``, incl. an uneven last
    tile) gives the masks and logits of one batch through the plain path."""
    model = copy.deepcopy(tiny_model)
    boxes, sparse, dense = _head_inputs(model, 10)
    head = model.mask_decoder
    with torch.no_grad():
        _, embed, fpn = model.extract_feat(torch.randn(1, 3, 256, 256))
        pe = model.pe.get_dense_pe()
        ref = head(embed, pe, sparse, dense, fpn)
        assert fast_path(model, 'decoder', prompt_chunk=chunk) == 1
        assert head.prompt_chunk == chunk
        out = head(embed, pe, sparse, dense, fpn)
    assert out[0].shape == ref[0].shape == (10, 1, 64, 64)
    torch.testing.assert_close(out[0], ref[0], **TOL)
    torch.testing.assert_close(out[1], ref[1], **TOL)
    torch.testing.assert_close(out[2], ref[2])
    fast_path(model, 'decoder', False)
    from ovsam.models import CLIP2SAMHead
    assert type(head) is CLIP2SAMHead


def test_optimize_for_inference_predict_matches(tiny_cfg):
    from ovsam.models.fast_inference import optimize_for_inference
    plain = build_tiny(tiny_cfg)
    _randomise_rel_pos(plain)
    fast = copy.deepcopy(plain)
    optimize_for_inference(fast)
    boxes = [[10, 10, 100, 120], [50, 60, 200, 190], [0, 0, 239, 199], [120, 20, 230, 90]]
    with torch.no_grad():
        ref = plain.predict(*make_batch(plain, boxes=boxes))[0].pred_instances
        out = fast.predict(*make_batch(fast, boxes=boxes))[0].pred_instances
        pts = [[[30., 40.]], [[150., 100.]]]
        ref_p = plain.predict(*make_batch(plain, points=pts))[0].pred_instances
        out_p = fast.predict(*make_batch(fast, points=pts))[0].pred_instances
    for a, b in ((out, ref), (out_p, ref_p)):
        assert torch.equal(a.masks, b.masks)
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.cls_scores, b.cls_scores, **TOL)
        torch.testing.assert_close(a.bboxes, b.bboxes)


def test_bf16_autocast_runs(tiny_model):
    """The optional bfloat16 path runs end to end (RoIAlign gets fp32 inputs)."""
    inputs, samples = make_batch(tiny_model, boxes=[[10, 10, 100, 120], [50, 60, 200, 190]])
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        res = tiny_model.predict(inputs, samples)[0].pred_instances
    assert res.masks.shape == (2, 200, 240) and res.labels.shape == (2, )


def test_bf16_autocast_fast_paths_run(tiny_cfg):
    """Under bf16 autocast the fast paths skip their in-place updates (the
    operands differ in dtype) and stay close to the plain model under autocast."""
    from ovsam.models.fast_inference import optimize_for_inference
    plain = build_tiny(tiny_cfg)
    fast = copy.deepcopy(plain)
    optimize_for_inference(fast)
    boxes = [[10, 10, 100, 120], [50, 60, 200, 190], [0, 0, 239, 199]]
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        ref = plain.predict(*make_batch(plain, boxes=boxes))[0].pred_instances
        out = fast.predict(*make_batch(fast, boxes=boxes))[0].pred_instances
    inter = (ref.masks & out.masks).flatten(1).sum(1)
    union = (ref.masks | out.masks).flatten(1).sum(1).clamp(min=1)
    assert (inter / union).min() > 0.9


@pytest.mark.parametrize('dim', [64, 256])
def test_fast_upscaling_matches(dim):
    """Token-layout mask upscaling == SAM's output_upscaling + hypernetwork product."""
    from ovsam.models import build_sam_mask_decoder
    from ovsam.models.fast_inference import upscale_and_predict_masks
    torch.manual_seed(0)
    dec = build_sam_mask_decoder(dim, 1, 64, 4, single_mask=True).eval()
    with torch.no_grad():
        ln = dec.output_upscaling[1]
        ln.weight.normal_(1, 0.3)
        ln.bias.normal_(0, 0.3)
        n, h, w = 3, 6, 5
        tokens = torch.randn(n, h * w, dim)
        hyper = torch.randn(n, dim // 8)
        up = dec.output_upscaling(tokens.transpose(1, 2).reshape(n, dim, h, w))
        ref = (hyper.unsqueeze(1) @ up.view(n, dim // 8, -1)).view(n, 1, 4 * h, 4 * w)
        out = upscale_and_predict_masks(dec.output_upscaling, tokens, hyper, h, w)
    torch.testing.assert_close(out, ref, **TOL)


def test_channels_last_trunk_matches(tiny_model):
    """Channels-last CLIP trunk: same features, channels-last layout; switchable back."""
    model = copy.deepcopy(tiny_model)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = model.backbone(x)
        assert fast_path(model, 'clip_backbone') == 1
        assert fast_path(model, 'channels_last') > 0
        out = model.backbone(x)
        fpn = model.fpn_neck(out)
        embed = model.neck(out)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(embed, tiny_model.neck(ref), **TOL)
        torch.testing.assert_close(fpn[0], tiny_model.fpn_neck(ref)[0], **TOL)
    assert fast_path(model, 'clip_backbone', enabled=False) == 1
    fast_path(model, 'channels_last', enabled=False)
    with torch.no_grad():
        back = model.backbone(x)
    assert all(o.is_contiguous() for o in back)


@pytest.mark.parametrize('grid,heads,width', [(2, 4, 64), (3, 8, 64), (12, 12, 192)])
def test_attention_pool_first_token_matches_open_clip(grid, heads, width):
    from open_clip.modified_resnet import AttentionPool2d
    from ovsam.models.fast_inference import attention_pool_first_token
    torch.manual_seed(grid)
    pool = AttentionPool2d(grid, width, heads, 32).eval()
    with torch.no_grad():
        # large key/value biases: the folded form drops the key bias (it
        # cancels in the softmax) and adds the value bias after pooling
        pool.k_proj.bias.normal_(0, 3)
        pool.v_proj.bias.normal_(0, 3)
    x = torch.randn(5, width, grid, grid)
    with torch.no_grad():
        torch.testing.assert_close(attention_pool_first_token(pool, x), pool(x), **TOL)


def test_fast_attention_pool_box_embed_matches(tiny_model):
    model = copy.deepcopy(tiny_model)
    c5 = torch.randn(1, model.backbone.out_channels[-1], 8, 8)
    rois = torch.tensor([[0., 10., 20., 100., 200.], [0., 0., 0., 255., 255.], [0., 50., 60., 70., 80.]])
    masks = (torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with torch.no_grad():
        ref = model.backbone.box_embed(c5, rois)
        ref_m = model.backbone.mask_embed(c5, masks)
        assert fast_path(model, 'clip_backbone') == 1
        out = model.backbone.box_embed(c5, rois)
        out_m = model.backbone.mask_embed(c5, masks)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(out_m, ref_m, **TOL)



def _two_way(depth=2, dim=32, heads=4, mlp=64):
    from segment_anything.modeling.transformer import TwoWayTransformer
    torch.manual_seed(depth)
    tr = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=heads, mlp_dim=mlp).eval()
    with torch.no_grad():  # non-trivial biases: the folded form treats each bias separately
        for name, p in tr.named_parameters():
            if name.endswith('bias'):
                p.normal_(0, 0.5)
    return tr


@pytest.mark.parametrize('depth,tokens,shared', [(2, 4, True), (2, 4, False), (2, 7, True), (1, 3, False),
                                                  (0, 4, True)])
def test_folded_two_way_transformer_matches_plain(depth, tokens, shared):
    """Folded attention to/from the image tokens == SAM's TwoWayTransformer, for
    one image embedding shared by all prompts and for one per prompt."""
    from ovsam.models.fast_inference import folded_two_way_transformer
    tr = _two_way(depth)
    n, dim = 5, 32
    img = torch.randn(1 if shared else n, dim, 6, 7)
    pe = torch.randn(1, dim, 6, 7)
    pts = torch.randn(n, tokens, dim)
    with torch.no_grad():
        ref_q, ref_k = tr(img.expand(n, -1, -1, -1), pe.expand(n, -1, -1, -1), pts)
        img_before = img.clone()
        q, k = folded_two_way_transformer(tr, img, pe, pts)
    assert torch.equal(img, img_before), 'the caller\'s image embedding was modified'
    assert k.shape == ref_k.shape == (n, 42, dim)
    torch.testing.assert_close(q, ref_q, **TOL)
    torch.testing.assert_close(k, ref_k, **TOL)


def test_folded_two_way_transformer_gradients_match():
    from ovsam.models.fast_inference import folded_two_way_transformer
    tr = _two_way()
    img = torch.randn(3, 32, 4, 4, requires_grad=True)
    pts = torch.randn(3, 4, 32)
    pe = torch.randn(1, 32, 4, 4)
    ref = sum(t.square().sum() for t in tr(img, pe.expand(3, -1, -1, -1), pts))
    g_ref = torch.autograd.grad(ref, img)[0]
    out = sum(t.square().sum() for t in folded_two_way_transformer(tr, img, pe, pts))
    g = torch.autograd.grad(out, img)[0]
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_fast_decoder_uses_folded_transformer_only_for_few_tokens(tiny_model, monkeypatch):
    """Many prompt tokens (H*T > internal dim) take the plain transformer."""
    import ovsam.models.fast_inference as fi
    model = copy.deepcopy(tiny_model)
    plain = copy.deepcopy(model.mask_decoder)
    fast_path(model, 'decoder')
    head = model.mask_decoder
    calls = []
    real = fi.folded_two_way_transformer
    monkeypatch.setattr(fi, 'folded_two_way_transformer', lambda *a: calls.append(a[3].shape[1]) or real(*a))
    dim = head.mask_decoder.transformer_dim
    inner = head.mask_decoder.transformer.final_attn_token_to_image.internal_dim
    heads = head.mask_decoder.transformer.num_heads
    embed = torch.randn(1, dim, 16, 16)
    pe = model.pe.get_dense_pe()
    with torch.no_grad():
        for t in (2, inner // heads + 1):
            sparse = torch.randn(3, t, dim)
            dense = torch.zeros(1, dim, 16, 16)
            out = head.decode_masks(embed, pe, sparse, dense)
            ref = plain.decode_masks(embed.expand(3, -1, -1, -1), pe, sparse, dense.expand(3, -1, -1, -1))
            torch.testing.assert_close(out[0], ref[0], **TOL)
            torch.testing.assert_close(out[1], ref[1], **TOL)
    # label + mask token + 2 sparse (once per tile of prompts); the long prompt fell back
    assert calls and set(calls) == {4}


@pytest.mark.parametrize('k,bias', [(2, True), (3, False)])
def test_deconv_as_gemm_matches_conv_transpose(k, bias):
    from ovsam.models.fast_inference import deconv_as_gemm
    torch.manual_seed(k)
    deconv = nn.ConvTranspose2d(12, 8, k, k, bias=bias)
    x = torch.randn(2, 12, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(deconv_as_gemm(deconv, x), deconv(x).permute(0, 2, 3, 1), **TOL)
    with pytest.raises(ValueError, match='kernel == stride'):
        deconv_as_gemm(nn.ConvTranspose2d(12, 8, 3, 2), x)


def test_gemm_deconv_adapter_matches(tiny_cfg):
    from mmdet.registry import MODELS

    from ovsam.models.fast_inference import FastLevelProjection
    cfg = copy.deepcopy(tiny_cfg.model.neck)
    torch.manual_seed(0)
    plain = MODELS.build(cfg).eval()
    fast = copy.deepcopy(plain)
    assert fast_path(fast, 'adapter') == 1 + len(cfg.in_channels)  # the adapter + its level projections
    fast_path(fast, 'channels_last')  # the deconv's weight stays contiguous for its GEMM
    deconvs = [m.projection for m in fast.patch_embeds if isinstance(m.projection, nn.ConvTranspose2d)]
    assert all(type(m) is FastLevelProjection for m in fast.patch_embeds)
    assert len(deconvs) == sum(s > 16 for s in cfg.get('strides', (4, 8, 16, 32)))
    assert all(d.weight.is_contiguous() for d in deconvs)
    feats = [torch.randn(1, c, 256 // s, 256 // s) for c, s in zip(cfg.in_channels, cfg.get('strides', (4, 8, 16, 32)))]
    with torch.no_grad():
        torch.testing.assert_close(fast(feats), plain(feats), **TOL)


def test_adapter_inference_sum_matches_training_sum(tiny_cfg):
    """Without autograd the fast adapter sums its levels in place (and its
    blocks reuse their buffers); with autograd it runs the plain expressions.
    Same result."""
    from mmdet.registry import MODELS
    cfg = copy.deepcopy(tiny_cfg.model.neck)
    cfg.frozen = False
    torch.manual_seed(0)
    adapter = MODELS.build(cfg).eval()
    fast_path(adapter, 'adapter')
    with torch.no_grad():
        adapter.pos_embed.normal_()
        adapter.level_encoding.weight.normal_()
    strides = cfg.get('strides', (4, 8, 16, 32))
    feats = [torch.randn(1, c, 256 // s, 256 // s) for c, s in zip(cfg.in_channels, strides)]
    before = [f.clone() for f in feats]
    ref = adapter(feats)  # autograd on (trainable adapter)
    assert ref.requires_grad
    with torch.no_grad():
        out = adapter(feats)
    torch.testing.assert_close(out, ref.detach(), **TOL)
    assert all(torch.equal(a, b) for a, b in zip(feats, before))


def test_attention_pool_first_token_gradients_match():
    from open_clip.modified_resnet import AttentionPool2d

    from ovsam.models.fast_inference import attention_pool_first_token
    torch.manual_seed(0)
    pool = AttentionPool2d(3, 64, 8, 32)
    x = torch.randn(4, 64, 3, 3, requires_grad=True)
    g_ref = torch.autograd.grad(pool(x).square().sum(), x)[0]
    g = torch.autograd.grad(attention_pool_first_token(pool, x).square().sum(), x)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_region_embeddings_do_not_depend_on_memory_layout(tiny_model):
    """mmcv's RoIAlign reads NCHW memory whatever the strides; channels-last
    features (the fast trunk's) must give the same region embeddings."""
    model = tiny_model
    g = torch.Generator().manual_seed(0)
    fpn = [torch.randn(1, 64, s, s, generator=g) for s in (64, 32, 16, 8)]
    c5 = torch.randn(1, model.backbone.out_channels[-1], 8, 8, generator=g)
    rois = torch.tensor([[0., 10., 20., 200., 220.], [0., 30., 30., 90., 80.], [0., 0., 0., 255., 255.]])
    label = torch.randn(3, model.mask_decoder.mask_decoder.transformer_dim, generator=g)
    cl = [f.contiguous(memory_format=torch.channels_last) for f in fpn]
    with torch.no_grad():
        torch.testing.assert_close(model.mask_decoder.region_embed(cl, rois, label),
                                   model.mask_decoder.region_embed(fpn, rois, label), **TOL)
        torch.testing.assert_close(
            model.backbone.box_embed(c5.contiguous(memory_format=torch.channels_last), rois),
            model.backbone.box_embed(c5, rois), **TOL)


def test_optimize_for_inference_head_logits_match(tiny_cfg):
    """Pre-softmax: the tiny random model's class probabilities saturate, so
    compare the head's and the frozen CLIP's logits of the fast and plain models."""
    from ovsam.models.fast_inference import optimize_for_inference
    plain = build_tiny(tiny_cfg)
    fast = copy.deepcopy(plain)
    optimize_for_inference(fast)
    x = torch.randn(1, 3, 256, 256)
    boxes, sparse, dense = _head_inputs(plain, 5)
    outs = []
    with torch.no_grad():
        for m in (plain, fast):
            feats = m.extract_feat(x)
            masks, logits, used = m.decode(feats, sparse, dense)
            outs.append((masks, logits, m.clip_logits(feats.clip_feats[-1], boxes, masks)))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, **TOL)


def _randomise_batchnorms(model, seed=0):
    """Random BN statistics and affine parameters (fresh BNs are identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.normal_(1, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)


@pytest.mark.parametrize('channels_last', [False, True])
def test_folded_batchnorm_trunk_matches(tiny_model, channels_last):
    """The CLIP trunk with its batch norms folded into the convolutions: same
    features (in eval mode), same state dict, plain BN in train mode, undoable."""
    from ovsam.models.fast_inference import FoldedBatchNorm2d, FoldedBNConv2d
    model = copy.deepcopy(tiny_model)
    _randomise_batchnorms(model.backbone)
    plain = copy.deepcopy(model)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert fast_path(model, 'folded_batchnorm') == n_bn  # every trunk BN follows a conv
    if channels_last:
        fast_path(model, 'clip_backbone')
        fast_path(model, 'channels_last')
    assert sum(type(m) is FoldedBatchNorm2d for m in model.modules()) == n_bn
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ref = plain.backbone(x)
        out = model.backbone(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **TOL)
    assert model.state_dict().keys() == keys.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, keys[k]), k
    # autograd through the folded weights (fresh, not scratch) gives the same input gradient
    xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    model.backbone._trunk(xg)[-1].square().sum().backward()
    plain.backbone._trunk(xr)[-1].square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-4, rtol=1e-4)
    # train mode: batch statistics, as plain modules
    conv = next(m for m in model.modules() if type(m) is FoldedBNConv2d)
    bn = conv._folded_bn[0]
    bn_plain = copy.deepcopy(bn)
    bn_plain.__class__ = nn.BatchNorm2d
    conv.train(), bn.train(), bn_plain.train()
    y = torch.randn(4, conv.in_channels, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(bn(conv(y)), bn_plain(nn.Conv2d.forward(conv, y)), **TOL)
    assert fast_path(model, 'folded_batchnorm', enabled=False) == n_bn
    assert not any(isinstance(m, (FoldedBNConv2d, FoldedBatchNorm2d)) for m in model.modules())
    assert not any(hasattr(m, '_folded_bn') for m in model.modules())


def test_folded_batchnorm_open_clip_resnet_pairs():
    """Against open_clip's own ModifiedResNet: every Bottleneck's conv{i}/bn{i}
    and downsample pair is found, and the folded stage computes the same."""
    from open_clip.modified_resnet import ModifiedResNet
    from ovsam.models.fast_inference import _conv_bn_pairs, FoldedBNConv2d, FoldedBatchNorm2d
    net = ModifiedResNet(layers=(1, 2, 1, 1), output_dim=32, heads=2, image_size=64, width=16).eval()
    _randomise_batchnorms(net)
    pairs = list(_conv_bn_pairs(net))
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded = copy.deepcopy(net)
    for conv, bn in _conv_bn_pairs(folded):
        conv.__class__, bn.__class__ = FoldedBNConv2d, FoldedBatchNorm2d
        conv._folded_bn = (bn, )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.layer2(folded.layer1(folded.stem(x))),
                                   net.layer2(net.layer1(net.stem(x))), **TOL)


@pytest.mark.parametrize('b,h,w,ws', [(1, 8, 8, 4), (2, 10, 7, 4), (1, 3, 5, 4), (1, 13, 14, 14)])
def test_window_copies_match_segment_anything(b, h, w, ws):
    """One-pass window partition (padding with a given vector) and un-partition
    agree with segment_anything's window_partition / window_unpartition."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition
    from ovsam.models.fast_inference import map_from_windows, windows_from_map
    c = 6
    x = torch.randn(b, h, w, c)
    fill = torch.randn(c)
    ref, pad_hw = window_partition(x - fill, ws)  # padding zeros of x - fill == fill in x
    ref = ref + fill
    nw = ref.shape[0]
    out = windows_from_map(x, ws, fill, torch.full((nw, ws * ws, c), float('nan')))
    torch.testing.assert_close(out, ref.reshape(nw, ws * ws, c))
    back = map_from_windows(out, b, h, w, ws)
    torch.testing.assert_close(back, window_unpartition(ref - fill, ws, pad_hw, (h, w)) + fill)
    assert torch.equal(back, x)


@pytest.mark.parametrize('window,size,chunk', [(4, 10, None), (0, 10, 16), (0, 9, None)])
def test_fast_blocks_reusing_scratch_match_plain(window, size, chunk):
    """Blocks in one reuse_scratch scope share their temporaries: run two
    different blocks twice in a row (and a bigger input in between, so the
    buffers grow) and compare with the plain blocks; nothing is kept after."""
    from ovsam.models.scratch import reuse_scratch, scratch_bytes
    blocks = [_block(window=window, size=size, seed=s) for s in (0, 1)]
    fast = copy.deepcopy(blocks)
    for f in fast:
        fast_path(f, 'attention', query_chunk=chunk)
    x, big = torch.randn(1, size, size, 32), torch.randn(3, size, size, 32)
    with torch.inference_mode():
        ref = blocks[1](blocks[0](x))
        ref_big = blocks[1](blocks[0](big))
        with reuse_scratch():
            out1 = fast[1](fast[0](x))
            assert scratch_bytes() > 0
            out_big = fast[1](fast[0](big))
            out2 = fast[1](fast[0](x))
        assert scratch_bytes() == 0
    for out in (out1, out2):
        torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(out_big, ref_big, **TOL)


def test_scratch_scope_nesting_and_threads():
    """Buffers are per name and per thread, survive nested scopes, and are
    plain allocations outside any scope."""
    import threading
    from ovsam.models.scratch import reuse_scratch, scratch, scratch_bytes
    like = torch.empty(0)
    a = scratch('a', (4, 4), like)
    assert scratch_bytes() == 0 and a.shape == (4, 4)
    with reuse_scratch():
        a1 = scratch('a', (4, 4), like)
        with reuse_scratch():
            a2 = scratch('a', (2, 8), like)
            assert a2.data_ptr() == a1.data_ptr()
            assert scratch('b', (4, 4), like).data_ptr() != a1.data_ptr()
        assert scratch('a', (16, ), like).data_ptr() == a1.data_ptr()  # outer scope still holds it
        assert scratch('a', (64, ), like).numel() == 64  # grows
        other = {}

        def worker():
            with reuse_scratch():
                other['ptr'] = scratch('a', (64, ), like).data_ptr()
                other['bytes'] = scratch_bytes()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert other['ptr'] != scratch('a', (64, ), like).data_ptr()
        assert other['bytes'] == 64 * 4
    assert scratch_bytes() == 0


def test_fast_global_block_chunked_gradients_match():
    """Under autograd the chunked global attention builds fresh (differentiable) biases."""
    blk = _block(window=0, size=6).train()
    fast = copy.deepcopy(blk)
    fast_path(fast, 'attention', query_chunk=8)
    x = torch.randn(1, 6, 6, 32)
    blk(x).square().sum().backward()
    fast(x).square().sum().backward()
    for (n, p), q in zip(blk.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=n)


def test_fast_paths_swap_in_and_out_completely(tiny_cfg):
    """One table: every fast path goes in with optimize_for_inference and
    every one comes back out with enabled=False (no fast class, no folded BN,
    contiguous convolution weights, the same state dict)."""
    from ovsam.models.fast_inference import FAST_PATHS, fast_modules, optimize_for_inference
    model = build_tiny(tiny_cfg)
    keys = list(model.state_dict())
    counts = optimize_for_inference(model)
    assert set(counts) == set(FAST_PATHS) and all(n > 0 for n in counts.values()), counts
    assert fast_modules(model)
    assert optimize_for_inference(model, enabled=False) == counts
    assert fast_modules(model) == []
    assert not any(hasattr(m, '_folded_bn') for m in model.modules())
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match='unknown fast paths'):
        optimize_for_inference(model, paths=['warp_drive'])


def test_plain_model_files_know_nothing_of_the_fast_paths():
    """The plain modules import nothing from fast_inference / scratch and carry
    no fast-path switches; the package has no import cycles."""
    import ast
    import os.path as osp
    import ovsam
    pkg = osp.dirname(ovsam.__file__)
    for name in ('clip_backbone', 'sam2clip', 'clip2sam', 'ovsam', 'classifier', 'prompt_encoder', 'common'):
        tree = ast.parse(open(osp.join(pkg, 'models', name + '.py')).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ('fast_inference', 'scratch') and \
                    not (node.module or '').endswith(('.fast_inference', '.scratch')), (name, node.module)
    from ovsam.models import CLIP2SAMHead, OpenCLIPBackbone, SAM2CLIPAdapter
    for cls, flags in ((CLIP2SAMHead, ('shared_image_embed', 'fast_upscaling', 'prompt_chunk', 'fast_transformer')),
                       (OpenCLIPBackbone, ('channels_last', 'fast_attention_pool')),
                       (SAM2CLIPAdapter, ('fast_attention', ))):
        assert not any(hasattr(cls, f) for f in flags), cls


def test_image_features_are_nchw_once_per_image():
    """The fast trunk runs channels-last, but every per-prompt RoIAlign (mmcv:
    NCHW memory only) reads C5 and the FPN levels: ``extract_feat`` hands them
    over contiguous, so no click copies a whole feature map."""
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.models.fast_inference import optimize_for_inference
    model = build_tiny(Config.fromfile(TINY_CFG)).eval()
    optimize_for_inference(model)
    with torch.no_grad():
        raw_c5 = model.backbone(torch.randn(1, 3, 256, 256))[-1]
        feats = model.extract_feat(torch.randn(1, 3, 256, 256))
    assert not raw_c5.is_contiguous(), 'the fast trunk no longer runs channels-last: this test checks nothing'
    assert feats.clip_feats[-1].is_contiguous()
    assert all(f.is_contiguous() for f in feats.fpn_feats)


@pytest.mark.parametrize('num_rois', [1, 3])
def test_fast_region_embed_pools_only_the_levels_used(tiny_model, num_rois):
    """One click maps to one FPN level: the fast head pools that level only
    (mmdet's extractor also reads every unused level, ``sum() * 0``) and gives
    the plain embeddings; under autograd it is the plain method."""
    from ovsam.models.fast_inference import FastCLIP2SAMHead
    head = copy.deepcopy(tiny_model.mask_decoder)
    g = torch.Generator().manual_seed(1)
    fpn = [torch.randn(1, 64, s, s, generator=g) for s in (64, 32, 16, 8)]
    rois = torch.tensor([[0., 10., 20., 30., 34.], [0., 0., 0., 255., 255.], [0., 30., 30., 120., 100.]])[:num_rois]
    label = torch.randn(num_rois, head.mask_decoder.transformer_dim, generator=g)
    with torch.no_grad():
        ref = head.region_embed(fpn, rois, label)
        assert fast_path(head, 'decoder') == 1 and type(head) is FastCLIP2SAMHead
        levels = head.roi.map_roi_levels(rois, len(fpn))
        unused = sorted(set(range(len(fpn))) - set(levels.tolist()))
        assert unused  # the case the fast path is for
        poisoned = [f.clone() if i not in unused else torch.full_like(f, float('nan')) for i, f in enumerate(fpn)]
        out = head.region_embed(poisoned, rois, label)  # unused levels are never read
    torch.testing.assert_close(out, ref, **TOL)
    out_grad = head.region_embed(fpn, rois, label)  # autograd: the plain extractor
    torch.testing.assert_close(out_grad, ref, **TOL)
    assert out_grad.requires_grad


def test_softmax_over_few_tokens_matches():
    from ovsam.models.fast_inference import _softmax_few
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50, 8 * 5, generator=g) * 10
    ref = logits.view(2, 50, 8, 5).softmax(-1).view(2, 50, 40)
    with torch.no_grad():
        torch.testing.assert_close(_softmax_few(logits.clone(), 2, 8, 5), ref, **TOL)
    x = logits.clone().requires_grad_(True)
    _softmax_few(x, 2, 8, 5)[..., 0].sum().backward()
    y = logits.clone().requires_grad_(True)
    y.view(2, 50, 8, 5).softmax(-1).view(2, 50, 40)[..., 0].sum().backward()
    torch.testing.assert_close(x.grad, y.grad, **TOL)


def test_fast_prompt_encoder_caches_the_dense_pe(tiny_model):
    from ovsam.models.fast_inference import FastSAMPromptEncoder
    pe = copy.deepcopy(tiny_model.pe)
    ref = pe.get_dense_pe()
    assert fast_path(pe, 'prompt_encoder') == 1 and type(pe) is FastSAMPromptEncoder
    with torch.no_grad():
        a, b = pe.get_dense_pe(), pe.get_dense_pe()
        assert a is b  # computed once
        torch.testing.assert_close(a, ref, atol=0, rtol=0)
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2)  # changed in place: recomputed
        c = pe.get_dense_pe()
    assert c is not a
    fast_path(pe, 'prompt_encoder', False)
    torch.testing.assert_close(c, pe.get_dense_pe(), atol=0, rtol=0)


def test_postprocess_masks_same_size_is_exact():
    """``postprocess_masks`` skips the resize when the original size is the
    resized one: bilinear interpolation to the same size is the identity."""
    import torch.nn.functional as F
    from ovsam.models.common import postprocess_masks
    x = torch.randn(3, 1, 32, 32)
    full = F.interpolate(x, (128, 128), mode='bilinear', align_corners=False)[..., :96, :128]
    assert torch.equal(F.interpolate(full, (96, 128), mode='bilinear', align_corners=False), full)
    assert torch.equal(postprocess_masks(x, (128, 128), (96, 128), (96, 128)), full)
    other = postprocess_masks(x, (128, 128), (96, 128), (48, 64))
    assert other.shape == (3, 1, 48, 64)
    torch.testing.assert_close(other, F.interpolate(full, (48, 64), mode='bilinear', align_corners=False))


def _edge_boxes(size):
    """Boxes in input pixels of a ``size`` square image: ordinary, partly and
    wholly outside, tiny, the whole image, fractional."""
    return torch.tensor([[10., 20., 200., 150.], [0., 0., size, size], [-50., -40., 30., 20.],
                         [100., 100., 101., 102.], [size - 40., size - 60., size + 80., size + 10.],
                         [33.3, 47.1, 88.8, 199.9], [size + 5., 3., size + 50., 40.]])


@pytest.mark.parametrize('stride,sampling_ratio,out', [(4, 0, 7), (8, 0, 12), (32, 0, 12), (16, 2, 7)])
def test_roi_align_windows_match_mmcv(stride, sampling_ratio, out):
    """The separable RoIAlign weights reproduce mmcv's aligned RoIAlign,
    boundary rules included, on channels-last and contiguous maps."""
    from mmcv.ops import roi_align
    from ovsam.models.fast_region_pool import roi_align_windows
    size = 256
    g = torch.Generator().manual_seed(stride)
    feat = torch.randn(1, 16, size // stride, size // stride, generator=g)
    boxes = _edge_boxes(size)
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    ref = roi_align(feat, rois, (out, out), 1. / stride, sampling_ratio, 'avg', True)
    for f in (feat, feat.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(roi_align_windows(f, boxes, out, 1. / stride, sampling_ratio), ref, **TOL)


def test_prepared_box_embed_matches_the_plain_branch(tiny_model):
    """After ``prepare_box_embed`` the fast backbone embeds a few boxes from
    the projected C5 maps; the plain branch (RoIAlign + attention pool) gives
    the same embeddings. Not prepared, with autograd, or with many boxes it is
    the plain branch; an in-place change of C5 drops the preparation."""
    from ovsam.models.fast_inference import FastOpenCLIPBackbone
    backbone = copy.deepcopy(tiny_model.backbone)
    g = torch.Generator().manual_seed(3)
    c5 = torch.randn(1, backbone.out_channels[-1], 8, 8, generator=g)
    boxes = _edge_boxes(256)
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    with torch.no_grad():
        ref = backbone.box_embed(c5, rois)
        assert fast_path(backbone, 'clip_backbone') == 1 and type(backbone) is FastOpenCLIPBackbone
        assert backbone._prepared(c5) is None
        assert backbone.prepare_box_embed(c5)
        view = c5[0:1]  # the predictor passes a view of the image's C5
        assert backbone._prepared(view) is not None
        torch.testing.assert_close(backbone.box_embed(view, rois), ref, **TOL)
        torch.testing.assert_close(backbone.box_embed(c5, rois[:1]), ref[:1], **TOL)
        from ovsam.models.fast_region_pool import prepared_box_embed
        chunked = prepared_box_embed(backbone.head, backbone._prepared(c5), boxes, backbone.roi_size, chunk=3)
        torch.testing.assert_close(chunked, ref, **TOL)  # boxes in chunks
        c5.mul_(2)  # changed in place: prepared maps are stale and not used
        assert backbone._prepared(c5) is None
        torch.testing.assert_close(backbone.box_embed(c5, rois[:2]), tiny_model.backbone.box_embed(c5, rois[:2]),
                                   **TOL)
    assert not backbone.prepare_box_embed(torch.cat([c5, c5]))  # one image only


def test_fast_predictor_clicks_match_the_plain_predictor(tiny_cfg):
    """One click at a time through the predictor (prepared image, one-prompt
    decoder, windowed RoIs, ...): the fast predictor answers as the plain one."""
    import numpy as np
    from ovsam.apis import OVSAMPredictor
    model = build_tiny(tiny_cfg)
    _randomise_rel_pos(model)
    img = (np.random.default_rng(0).random((180, 240, 3)) * 255).astype(np.uint8)
    preds = []
    for fast in (False, True):
        p = OVSAMPredictor(copy.deepcopy(model), clip_model_cfg=tiny_cfg.model.backbone.model_cfg,
                           allow_random_text=True, fast=fast)
        p.set_image(img)
        outs = [p.predict(box=[20, 30, 120, 150]), p.predict(box=[0, 0, 239, 179]),
                p.predict(point_coords=[[60, 70]], point_labels=[1])]
        outs.append(p.predict(point_coords=[[60, 70], [100, 90]], point_labels=[1, 0],
                              mask_input=outs[-1].low_res_logits))
        preds.append(outs)
    for a, b in zip(*preds):
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(b.class_probs, a.class_probs, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(b.mask_confidence, a.mask_confidence, atol=1e-5)


@pytest.mark.parametrize('offset', [1.0, 0.5, 0.0])
def test_stability_scores_match_segment_anything(offset):
    from segment_anything.utils.amg import calculate_stability_score
    from ovsam.apis.predictor import stability_scores
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 37, 53, generator=g) * 3
    logits[1] = -10  # empty at every threshold: NaN in both
    logits[2, :5] = 10
    ref, out = calculate_stability_score(logits, 0.0, offset), stability_scores(logits, offset)
    assert torch.equal(torch.isnan(ref), torch.isnan(out)) and bool(torch.isnan(out[1]))
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), atol=0, rtol=0)


def test_predictor_bf16_image_side_agrees_with_fp32(tiny_cfg):
    """``precision='bf16'``: the image side under bfloat16 autocast, features
    handed to the (float32) prompt side in float32; the masks agree with fp32's
    on a photo (real structure), and the arithmetic did change."""
    import numpy as np
    from skimage import data
    from ovsam.apis import OVSAMPredictor
    model = build_tiny(tiny_cfg)
    img = data.astronaut()
    preds = {}
    for precision in ('fp32', 'bf16'):
        p = OVSAMPredictor(copy.deepcopy(model), clip_model_cfg=tiny_cfg.model.backbone.model_cfg,
                           allow_random_text=True, precision=precision)
        assert p.precision == precision
        p.set_image(img)
        feats = p.image_state.feats
        assert all(f.dtype == torch.float32 for f in (*feats.clip_feats, feats.image_embed, *feats.fpn_feats))
        preds[precision] = (feats, p.predict(box=np.array([[40, 30, 300, 400], [200, 100, 480, 500],
                                                           [10, 300, 250, 510]], np.float32)))
    (f32, a), (f16, b) = preds['fp32'], preds['bf16']
    assert not torch.equal(f32.image_embed, f16.image_embed)
    torch.testing.assert_close(f16.image_embed, f32.image_embed, atol=0.1, rtol=0.05)
    inter = (a.masks & b.masks).reshape(3, -1).sum(1)
    union = (a.masks | b.masks).reshape(3, -1).sum(1)
    assert (inter / np.maximum(union, 1)).min() > 0.9
    with pytest.raises(ValueError, match='precision must be one of'):
        OVSAMPredictor(copy.deepcopy(model), allow_random_text=True, precision='fp16')


def test_fast_decoder_keeps_the_image_side_of_repeated_clicks(tiny_model):
    """Clicks on one image reuse ``image_embed + dense`` and the first layer's
    keys + positions; a changed embedding (in place) or dense prompt is not
    answered from the cache."""
    head = copy.deepcopy(tiny_model.mask_decoder)
    plain = tiny_model.mask_decoder
    _, sparse, dense = _head_inputs(tiny_model, 1)
    with torch.no_grad():
        _, embed, fpn = tiny_model.extract_feat(torch.randn(1, 3, 256, 256))
        pe = tiny_model.pe.get_dense_pe()
        fast_path(head, 'decoder')
        ref = plain(embed, pe, sparse, dense[:1], fpn)
        out1 = head(embed, pe, sparse, dense[:1], fpn)
        cached = head.__dict__['_image_side_cache']
        out2 = head(embed, pe, sparse, dense[:1], fpn)
        assert head.__dict__['_image_side_cache'] is cached  # reused
        for a in (out1, out2):
            torch.testing.assert_close(a[0], ref[0], **TOL)
            torch.testing.assert_close(a[1], ref[1], **TOL)
        embed.mul_(-1)  # the same tensor, changed in place
        torch.testing.assert_close(head(embed, pe, sparse, dense[:1], fpn)[0], plain(embed, pe, sparse, dense[:1], fpn)[0],
                                   **TOL)
        other = dense[:1] + 1  # another dense prompt (a mask)
        torch.testing.assert_close(head(embed, pe, sparse, other, fpn)[0], plain(embed, pe, sparse, other, fpn)[0],
                                   **TOL)
