"""The opt-in fast inference paths give the plain modules' outputs.

Tolerances (fp32, CPU): attention through SDPA with the rel-pos bias as a mask
only re-associates sums, so ViT blocks / adapters / image encoders agree to
``atol=rtol=1e-5`` (observed ~1e-6 at 1280 channels); the shared-embedding
decoder computes the very same operations broadcast, ``atol=rtol=1e-5`` on
logits. Binary masks and labels must match exactly on these inputs.
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
    from ovsam.models.fast_inference import FastBlock, enable_fast_attention
    blk = _block(window=window, size=size, qkv_bias=qkv_bias, rel_pos=rel_pos)
    fast = copy.deepcopy(blk)
    assert enable_fast_attention(fast, query_chunk=chunk) == 1
    assert isinstance(fast, FastBlock)
    x = torch.randn(2, size, size, 32)
    with torch.no_grad():
        ref, out = blk(x), fast(x)
    torch.testing.assert_close(out, ref, **TOL)


def test_fast_attention_keeps_state_dict_and_reverts():
    from segment_anything.modeling.image_encoder import Block
    from ovsam.models.fast_inference import enable_fast_attention
    blk = _block()
    keys = list(blk.state_dict())
    enable_fast_attention(blk)
    assert list(blk.state_dict()) == keys
    copy.deepcopy(blk)  # still copyable / picklable
    enable_fast_attention(blk, enabled=False)
    assert type(blk) is Block


def test_fast_block_gradients_match():
    from ovsam.models.fast_inference import enable_fast_attention
    blk = _block(window=4, size=10).train()
    fast = copy.deepcopy(blk)
    enable_fast_attention(fast)
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


def test_adapter_fast_attention_option(tiny_cfg):
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    from ovsam.models.fast_inference import FastBlock
    cfg = dict(tiny_cfg.model.neck)
    torch.manual_seed(0)
    plain = MODELS.build(cfg)
    plain.init_weights()
    _randomise_rel_pos(plain)
    fast = MODELS.build(dict(cfg, fast_attention=True))
    assert all(isinstance(b, FastBlock) for b in fast.blocks)
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict())
    feats = [torch.randn(1, c, 256 // s, 256 // s) for c, s in zip(cfg['in_channels'], cfg['strides'])]
    with torch.no_grad():
        torch.testing.assert_close(fast(feats), plain(feats), **TOL)


def test_sam_image_encoder_fast_attention():
    from ovsam.models import build_sam_image_encoder
    from ovsam.models.fast_inference import enable_fast_attention
    torch.manual_seed(0)
    enc = build_sam_image_encoder('custom', image_size=160, out_chans=16, embed_dim=32, depth=2, num_heads=4,
                                  global_attn_indexes=(1, ), window_size=4).eval()  # 10x10 grid, padded
    _randomise_rel_pos(enc)
    fast = copy.deepcopy(enc)
    assert enable_fast_attention(fast) == 2
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
    model = tiny_model
    x = torch.randn(2, 3, 256, 256)
    boxes, sparse, dense = _head_inputs(model, 6)
    head = model.mask_decoder
    with torch.no_grad():
        _, embed, fpn = model.extract_feat(x)
        pe = model.pe.get_dense_pe()
        for idx in (torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long),
                    torch.tensor([0, 1, 0, 1, 1, 0])):  # the mixed batch falls back to the plain path
            head.shared_image_embed = False
            ref = head(embed, pe, sparse, dense, fpn, batch_idx=idx)
            head.shared_image_embed = True
            out = head(embed, pe, sparse, dense, fpn, batch_idx=idx)
            torch.testing.assert_close(out[0], ref[0], **TOL)
            torch.testing.assert_close(out[1], ref[1], **TOL)
            torch.testing.assert_close(out[2], ref[2])
    head.shared_image_embed = False


def test_optimize_for_inference_predict_matches(tiny_cfg):
    from ovsam.models.fast_inference import optimize_for_inference
    plain = build_tiny(tiny_cfg)
    _randomise_rel_pos(plain)
    fast = optimize_for_inference(copy.deepcopy(plain))
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


@pytest.mark.parametrize('dim', [64, 256])
def test_fast_upscaling_matches(dim):
    """Token-layout mask upscaling == SAM's output_upscaling + hypernetwork product."""
    from ovsam.models.clip2sam import build_sam_mask_decoder
    from ovsam.models.fast_inference import upscale_and_predict_masks
    torch.manual_seed(0)
    dec = build_sam_mask_decoder(dim, 1, 64, 4).eval()
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
    from ovsam.models.fast_inference import enable_channels_last
    model = copy.deepcopy(tiny_model)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = model.backbone(x)
        assert enable_channels_last(model) == 1
        out = model.backbone(x)
        fpn = model.fpn_neck(out)
        embed = model.neck(out)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(embed, tiny_model.neck(ref), **TOL)
        torch.testing.assert_close(fpn[0], tiny_model.fpn_neck(ref)[0], **TOL)
    assert enable_channels_last(model, enabled=False) == 1
    with torch.no_grad():
        back = model.backbone(x)
    assert all(o.is_contiguous() for o in back)


@pytest.mark.parametrize('grid,heads', [(2, 4), (3, 8)])
def test_attention_pool_first_token_matches_open_clip(grid, heads):
    from open_clip.modified_resnet import AttentionPool2d
    from ovsam.models.fast_inference import attention_pool_first_token
    torch.manual_seed(grid)
    pool = AttentionPool2d(grid, 64, heads, 32).eval()
    x = torch.randn(5, 64, grid, grid)
    with torch.no_grad():
        torch.testing.assert_close(attention_pool_first_token(pool, x), pool(x), **TOL)


def test_fast_attention_pool_region_embed_matches(tiny_model):
    from ovsam.models.fast_inference import enable_fast_attention_pool
    model = copy.deepcopy(tiny_model)
    c5 = torch.randn(1, model.backbone.out_channels[-1], 8, 8)
    rois = torch.tensor([[0., 10., 20., 100., 200.], [0., 0., 0., 255., 255.], [0., 50., 60., 70., 80.]])
    with torch.no_grad():
        ref = model.backbone.region_embed(c5, rois)
        assert enable_fast_attention_pool(model) == 1
        out = model.backbone.region_embed(c5, rois)
    torch.testing.assert_close(out, ref, **TOL)

