"""Shapes and behaviour of each module on the tiny configuration."""
import pytest
import torch

from conftest import build_tiny, make_batch


def test_backbone_levels_and_box_embed(tiny_model):
    bb = tiny_model.backbone
    x = torch.randn(2, 3, 256, 256)
    feats = bb(x)
    assert [f.shape[1] for f in feats] == bb.out_channels == [64, 128, 256, 512]
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    assert all(not p.requires_grad for p in bb.parameters())
    rois = torch.tensor([[0, 10., 10., 100., 120.], [1, 0., 0., 256., 256.]])
    emb = bb.box_embed(feats[-1], rois)
    assert emb.shape == (2, 64)
    # embeddings depend on the box, not only on the image
    rois2 = rois.clone()
    rois2[0, 1:] = torch.tensor([150., 150., 250., 250.])
    assert not torch.allclose(bb.box_embed(feats[-1], rois2)[0], emb[0])


def test_backbone_stays_frozen_in_train_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.backbone.training
    assert not tiny_model.neck.training  # frozen adapter in stage 2
    assert tiny_model.mask_decoder.training


def test_adapter_output_is_sam_embedding(tiny_model):
    feats = tiny_model.backbone(torch.randn(1, 3, 256, 256))
    emb = tiny_model.neck(feats)
    assert emb.shape == (1, 64, 16, 16)
    with pytest.raises(ValueError, match='feature levels'):
        tiny_model.neck(feats[:3])


def test_head_decodes_one_mask_and_classifies(tiny_model):
    m = tiny_model
    feats, embed, fpn = m.extract_feat(torch.randn(2, 3, 256, 256))
    boxes = torch.tensor([[10., 20., 120., 140.], [50., 60., 200., 230.], [0., 0., 30., 30.]])
    sparse, dense = m.pe(None, boxes, None)
    masks, logits, used = m.mask_decoder(embed, m.pe.get_dense_pe(), sparse, dense, fpn,
                                         batch_idx=torch.tensor([0, 1, 1]))
    assert masks.shape == (3, 1, 64, 64)
    assert logits.shape == (3, 6)  # 5 classes + background
    assert torch.all(logits[:, -1] == 0)  # background text embedding is zero
    assert used.shape == (3, 4)
    # prompts of different images see different embeddings
    masks_same, _, _ = m.mask_decoder(embed, m.pe.get_dense_pe(), sparse, dense, fpn,
                                      batch_idx=torch.tensor([0, 0, 0]))
    assert torch.allclose(masks_same[0], masks[0])
    assert not torch.allclose(masks_same[1], masks[1])


def test_head_has_no_iou_parts(tiny_model):
    keys = tiny_model.mask_decoder.state_dict().keys()
    assert not any('iou' in k for k in keys)
    assert tiny_model.mask_decoder.mask_decoder.mask_tokens.weight.shape[0] == 1


@pytest.mark.parametrize('prompt', ['box', 'point', 'box+point'])
def test_predict_with_gt_prompts(tiny_model, prompt):
    boxes = [[20., 30., 120., 150.], [100., 50., 230., 200.]]
    points = [[[70., 90.]], [[160., 120.]]]
    inputs, samples = make_batch(tiny_model,
                                 boxes=boxes if 'box' in prompt else None,
                                 points=points if 'point' in prompt else None)
    with torch.no_grad():
        out = tiny_model.predict(inputs, samples)[0].pred_instances
    assert out.masks.shape == (2, 200, 240) and out.masks.dtype == torch.bool
    assert out.labels.shape == (2, ) and out.labels.max() < 5
    assert out.scores.shape == (2, ) and torch.all((out.scores >= 0) & (out.scores <= 1))
    assert out.cls_scores.shape == (2, 5)
    assert out.bboxes.shape == (2, 4)


def test_predict_with_detector_proposals(tiny_cfg):
    from mmengine.structures import InstanceData
    model = build_tiny(tiny_cfg, prompt_source='pred', label_source='detector')
    inputs, samples = make_batch(model)
    props = InstanceData()
    props.bboxes = torch.tensor([[20., 30., 120., 150.], [100., 50., 230., 200.]])
    props.scores = torch.tensor([0.9, 0.3])
    props.labels = torch.tensor([3, 1])
    samples[0].pred_instances = props
    with torch.no_grad():
        out = model.predict(inputs, samples)[0].pred_instances
    assert torch.equal(out.scores, torch.tensor([0.9, 0.3]))  # detector score kept
    assert torch.equal(out.labels, torch.tensor([3, 1]))  # label_source='detector'
    assert out.masks.shape == (2, 200, 240)
    # boxes go back to the original image frame
    scale = samples[0].metainfo['scale_factor'][0]
    assert torch.allclose(out.bboxes, props.bboxes / scale)


def test_predict_empty_prompts(tiny_model):
    inputs, samples = make_batch(tiny_model, boxes=torch.zeros(0, 4))
    out = tiny_model.predict(inputs, samples)[0].pred_instances
    assert out.masks.shape == (0, 200, 240) and len(out.labels) == 0


def test_point_prompt_clip_box_comes_from_mask_not_gt(tiny_model, monkeypatch):
    """For point prompts the frozen-CLIP branch must look at the predicted
    mask's box, whatever ground-truth box the sample carries."""
    seen = {}
    orig = tiny_model.clip_logits

    def spy(c5, boxes, mask_logits):
        seen['boxes'] = boxes.clone()
        return orig(c5, boxes, mask_logits)

    monkeypatch.setattr(tiny_model, 'clip_logits', spy)
    inputs, samples = make_batch(tiny_model, points=[[[70., 90.]]])
    samples[0].gt_instances.gt_boxes = torch.tensor([[1., 2., 3., 4.]])
    with torch.no_grad():
        tiny_model.predict(inputs, samples)
    assert not torch.allclose(seen['boxes'], torch.tensor([[1., 2., 3., 4.]]))


def test_loss_trains_head_only(tiny_cfg):
    model = build_tiny(tiny_cfg)
    model.train()
    masks = torch.zeros(3, 256, 256, dtype=torch.bool)
    masks[0, 20:100, 30:120] = True
    masks[1, 120:200, 100:220] = True
    masks[2, 10:60, 150:250] = True
    inputs, samples = make_batch(model, image_hw=(256, 256),
                                 boxes=[[30., 20., 120., 100.], [100., 120., 220., 200.], [150., 10., 250., 60.]],
                                 points=[[[60., 60.]], [[150., 150.]], [[200., 30.]]], masks=masks,
                                 labels=[0, 3, 5])  # 5 = background
    samples[0].gt_instances.prompt_is_point = torch.tensor([True, False, True])
    losses = model.loss(inputs, samples)
    assert set(losses) == {'loss_cls', 'loss_mask', 'loss_dice'}
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert model.mask_decoder.mask_decoder.transformer.layers[0].mlp.lin1.weight.grad is not None
    assert model.fpn_neck.lateral_convs[0].conv.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.neck.parameters())
    assert all(p.grad is None for p in model.pe.parameters())


def test_unknown_label_gives_no_classification_loss(tiny_cfg):
    model = build_tiny(tiny_cfg)
    masks = torch.zeros(1, 256, 256, dtype=torch.bool)
    masks[0, 20:100, 30:120] = True
    inputs, samples = make_batch(model, image_hw=(256, 256), boxes=[[30., 20., 120., 100.]], masks=masks,
                                 labels=[-1])
    losses = model.loss(inputs, samples)
    assert losses['loss_cls'].item() == 0
    assert losses['loss_mask'].item() > 0


def test_random_points_in_masks_uniform_inside_and_centre_when_empty():
    from ovsam.models.data_preprocessor import random_points_in_masks
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:14, 20:25] = True  # 20 pixels
    masks[2, 40, 7] = True
    boxes = torch.tensor([[0., 0., 8., 8.], [2., 4., 10., 20.], [0., 0., 1., 1.]])
    gen = torch.Generator().manual_seed(0)
    pts = torch.stack([random_points_in_masks(masks, boxes, gen) for _ in range(2000)])
    x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()
    assert bool(masks[0, y, x].all())
    counts = torch.bincount((y - 10) * 5 + (x - 20), minlength=20)
    assert counts.numel() == 20 and int(counts.min()) > 50  # every pixel drawn, ~100 each
    assert torch.equal(pts[:, 1], torch.tensor([6., 12.]).expand(2000, 2))  # empty: box centre
    assert torch.equal(pts[:, 2], torch.tensor([7., 40.]).expand(2000, 2))
