"""Per-instance supervision for co-training: hand-made batches mixing instances
with and without masks give the right losses, and prompts are points only
where a mask exists."""
import math

import pytest
import torch

from conftest import build_tiny, make_batch

K = 4  # tiny vocabulary
BG_WEIGHT = 0.1


def _head(tiny_cfg):
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    cfg = tiny_cfg.model.mask_decoder.copy()
    cfg.num_points = 0  # every pixel centre: deterministic, hand-computable
    head = MODELS.build(cfg)
    head.classifier.set_vocabulary(torch.randn(K, 1, 64, generator=torch.Generator().manual_seed(0)),
                                   [f'c{i}' for i in range(K)])
    return head


def _close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a).reshape(()), torch.as_tensor(b).reshape(()), **kw)


def _bce(logits, target):
    """Mean binary cross-entropy with logits, written out."""
    p = logits.sigmoid()
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean()


def _dice(logits, target, eps=1.0):
    """mmdet's naive Dice (1 - (2|p t| + eps) / (|p| + |t| + eps)), mean over instances."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def _ce(cls_logits, labels):
    """Class-weighted cross-entropy (background weight 0.1), weighted mean."""
    w = torch.tensor([1.0] * K + [BG_WEIGHT])[labels]
    ce = -cls_logits.log_softmax(-1)[torch.arange(len(labels)), labels]
    return (w * ce).sum() / w.sum()


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(n, 1, 8, 8, generator=g)
    cls_logits = torch.randn(n, K + 1, generator=g)
    masks = (torch.rand(n, 8, 8, generator=g) > 0.5).float()
    labels = torch.tensor([0, 2, K][:n] + [1] * max(n - 3, 0))
    return mask_logits, cls_logits, masks, labels


def test_mixed_batch_losses_by_hand(tiny_cfg):
    """Instances 0 and 2 have masks, 1 does not: mask BCE/Dice over 0 and 2
    only, classification over all three (weights 5, 5, 2 of the config)."""
    head = _head(tiny_cfg)
    mask_logits, cls_logits, masks, labels = _inputs()
    has = torch.tensor([True, False, True])
    out = head.loss(mask_logits, cls_logits, labels, masks[has], has_mask=has)
    sel = mask_logits[has][:, 0]
    _close(out['loss_mask'], 5 * _bce(sel, masks[has]))
    _close(out['loss_dice'], 5 * _dice(sel, masks[has]))
    _close(out['loss_cls'], 2 * _ce(cls_logits, labels))
    # the instance without a mask changes nothing in the mask losses, whatever its logits
    other = mask_logits.clone()
    other[1] = 100.
    again = head.loss(other, cls_logits, labels, masks[has], has_mask=has)
    _close(again['loss_mask'], out['loss_mask'])
    _close(again['loss_dice'], out['loss_dice'])


def test_no_masks_gives_zero_mask_losses_with_gradient(tiny_cfg):
    head = _head(tiny_cfg)
    mask_logits, cls_logits, _, labels = _inputs()
    mask_logits.requires_grad_(True)
    out = head.loss(mask_logits, cls_logits, labels, None, has_mask=torch.zeros(3, dtype=torch.bool))
    assert out['loss_mask'].item() == 0 and out['loss_dice'].item() == 0
    _close(out['loss_cls'], 2 * _ce(cls_logits, labels))
    (out['loss_mask'] + out['loss_dice']).backward()  # in the graph: DDP sees every parameter used
    assert mask_logits.grad is not None and (mask_logits.grad == 0).all()


def test_all_masks_is_the_old_behaviour(tiny_cfg):
    head = _head(tiny_cfg)
    mask_logits, cls_logits, masks, labels = _inputs()
    a = head.loss(mask_logits, cls_logits, labels, masks)  # has_mask=None: all N
    b = head.loss(mask_logits, cls_logits, labels, masks, has_mask=torch.ones(3, dtype=torch.bool))
    for k in a:
        _close(a[k], b[k])
    _close(a['loss_mask'], 5 * _bce(mask_logits[:, 0], masks))


def test_mask_count_mismatch_is_an_error(tiny_cfg):
    head = _head(tiny_cfg)
    mask_logits, cls_logits, masks, labels = _inputs()
    with pytest.raises(ValueError, match='2 instances are marked as having a mask but gt_masks holds 3'):
        head.loss(mask_logits, cls_logits, labels, masks, has_mask=torch.tensor([True, False, True]))


def test_same_all_reduces_with_and_without_masks(tiny_cfg, monkeypatch):
    """Under DDP a rank whose batch has no mask takes part in the all-reduce of
    the ranks that have some (else the job hangs)."""
    import mmdet.utils
    calls = []
    real = mmdet.utils.reduce_mean
    monkeypatch.setattr(mmdet.utils, 'reduce_mean', lambda t: calls.append(1) or real(t))
    head = _head(tiny_cfg)
    mask_logits, cls_logits, masks, labels = _inputs()
    head.loss(mask_logits, cls_logits, labels, masks)
    with_masks = len(calls)
    calls.clear()
    head.loss(mask_logits, cls_logits, labels, None, has_mask=torch.zeros(3, dtype=torch.bool))
    assert with_masks == len(calls) == 2


# ----------------------------------------------------------------- whole model
def _sample(model, seed, boxes, labels, masks=None):
    inputs, samples = make_batch(model, image_hw=(256, 256), boxes=boxes, labels=labels, seed=seed)
    if masks is not None:
        samples[0].gt_instances.masks = masks
    return inputs, samples[0]


def _masks(boxes, size=256):
    m = torch.zeros(len(boxes), size, size)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        m[i, int(y1):int(y2), int(x1):int(x2)] = 1
    return m


def test_model_mixed_batch_keeps_mask_losses(tiny_cfg):
    """A batch of a segmentation sample and a detection sample (no masks) keeps
    the segmentation sample's mask losses exactly (they were dropped for the
    whole batch before) and classifies both samples' instances."""
    model = build_tiny(tiny_cfg, num_classes=K)
    model.mask_decoder.num_points = 0
    model.mask_decoder.loss_cls_cfg = tiny_cfg.model.mask_decoder.loss_cls
    seg_boxes = [[10., 20., 120., 140.], [100., 90., 240., 230.]]
    det_boxes = [[30., 30., 200., 180.]]
    x_seg, s_seg = _sample(model, 0, seg_boxes, [0, 1], _masks(seg_boxes))
    x_det, s_det = _sample(model, 1, det_boxes, [3])
    with torch.no_grad():
        alone = model.loss(x_seg, [s_seg])
        mixed = model.loss(torch.cat([x_seg, x_det]), [s_seg, s_det])
        det_only = model.loss(x_det, [s_det])
    assert alone['loss_mask'] > 0
    _close(mixed['loss_mask'], alone['loss_mask'], rtol=1e-5, atol=1e-6)
    _close(mixed['loss_dice'], alone['loss_dice'], rtol=1e-5, atol=1e-6)
    assert det_only['loss_mask'] == 0 and det_only['loss_dice'] == 0
    # classification: the weighted mean over all three instances
    cls = (2 * alone['loss_cls'] + det_only['loss_cls']) / 3
    _close(mixed['loss_cls'], cls, rtol=1e-5, atol=1e-6)


def test_empty_masks_are_no_supervision(tiny_cfg):
    """An instance whose mask is empty (no segmentation in the file, or cut
    away) counts as an instance without a mask."""
    from mmengine.structures import InstanceData
    from ovsam.models.prompts import instance_has_mask
    gt = InstanceData(labels=torch.tensor([0, 1, 2]), masks=_masks([[0, 0, 5, 5], [0, 0, 0, 0], [3, 3, 9, 9]], 16))
    assert instance_has_mask(gt).tolist() == [True, False, True]
    gt.has_mask = torch.tensor([False, False, True])  # given by the data: wins
    assert instance_has_mask(gt).tolist() == [False, False, True]
    assert instance_has_mask(InstanceData(labels=torch.tensor([0, 1]))).tolist() == [False, False]


def test_points_only_where_a_mask_exists(tiny_cfg):
    """point_ratio 1: every instance with a mask is prompted by a point inside
    it, every other one by its box."""
    import ovsam  # noqa: F401
    from mmengine.structures import InstanceData
    from mmdet.registry import MODELS
    dp = MODELS.build(dict(tiny_cfg.model.data_preprocessor, num_prompts=0, point_ratio=1.0))
    boxes = torch.tensor([[0., 0., 10., 10.], [20., 20., 40., 40.], [5., 5., 30., 30.]])
    masks = _masks([[0, 0, 10, 10], [0, 0, 0, 0], [5, 5, 30, 30]], 64).bool()
    gt = dp.sample_train_prompts(InstanceData(bboxes=boxes, labels=torch.tensor([0, 1, 2]), masks=masks))
    by_label = {int(lab): (bool(p), pt) for lab, p, pt in zip(gt.labels, gt.prompt_is_point, gt.point_coords[:, 0])}
    assert by_label[1][0] is False
    assert by_label[0][0] and by_label[2][0]
    for lab in (0, 2):
        x, y = by_label[lab][1].long().tolist()
        assert masks[lab, y, x]
    # box-only sample: all boxes, even at point_ratio 1
    gt = dp.sample_train_prompts(InstanceData(bboxes=boxes, labels=torch.tensor([0, 1, 2])))
    assert not gt.prompt_is_point.any() and not gt.has_mask.any()


def test_mixed_batch_masks_are_padded_per_sample(tiny_cfg):
    """The preprocessor pads the masks of every sample that has them (mmdet
    looks at the first sample only and fails on a detection sample first)."""
    import numpy as np
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    dp = MODELS.build(dict(tiny_cfg.model.data_preprocessor, num_prompts=4, point_ratio=0.5))
    samples = []
    for i, with_mask in enumerate((False, True)):
        s = DetDataSample(metainfo=dict(img_shape=(200, 240), batch_input_shape=(256, 256)))
        gt = InstanceData(bboxes=torch.tensor([[10., 10., 100., 100.]]), labels=torch.tensor([i]))
        if with_mask:
            m = np.zeros((1, 200, 240), np.uint8)
            m[0, 10:100, 10:100] = 1
            gt.masks = BitmapMasks(m, 200, 240)
        s.gt_instances = gt
        samples.append(s)
    data = dict(inputs=[torch.zeros(3, 200, 240, dtype=torch.uint8)] * 2, data_samples=samples)
    out = dp(data, training=True)
    seg = out['data_samples'][1].gt_instances
    assert seg.masks.shape[-2:] == (256, 256) and seg.has_mask.all()
    det = out['data_samples'][0].gt_instances
    assert 'masks' not in det and not det.has_mask.any() and not det.prompt_is_point.any()
    assert math.isclose(float(seg.prompt_is_point.float().mean()), 0.5)


# ----------------------------------------------------------------- generated data
def test_generated_cotraining_data_has_the_three_groups(tmp_path):
    """shapes(cotrain=...): segmentation classes with masks in train/, box-only
    classes only in the box set (no masks), image-level classes only as
    single-object images; validation keeps every class with masks."""
    import json
    import os
    from ovsam.datasets import SHAPE_CLASSES, generate_shapes_dataset
    r = generate_shapes_dataset(str(tmp_path), num_train=12, num_val=6, sa1b=False, seed=4,
                                cotrain=dict(box_only=['hexagon'], image_level=['star', 'heart'], num_boxes=12,
                                             num_image_level=2))
    groups = r['cotrain']
    assert groups['box_only_classes'] == (7, ) and groups['image_level_classes'] == (3, 9)
    ann = json.load(open(tmp_path / 'annotations' / 'instances_train.json'))
    assert len(ann['categories']) == len(SHAPE_CLASSES)
    assert {a['category_id'] - 1 for a in ann['annotations']} <= set(groups['segmentation_classes'])
    boxes = json.load(open(tmp_path / 'annotations' / 'instances_boxes.json'))
    cats = {a['category_id'] - 1 for a in boxes['annotations']}
    assert 7 in cats and not cats & {3, 9}
    assert not any('segmentation' in a for a in boxes['annotations'])
    assert sorted(os.listdir(tmp_path / 'image_level')) == ['classes.txt', 'heart', 'star']
    assert len(os.listdir(tmp_path / 'image_level' / 'star')) == 2
    val = json.load(open(tmp_path / 'annotations' / 'instances_val.json'))
    assert all('segmentation' in a for a in val['annotations'])


@pytest.mark.slow
def test_tiny_cotraining_config_trains(tmp_path):
    """configs/tiny/clip2sam_tiny_300it_shapes-cotrain.py end to end for 3
    iterations (random weights): three sources, joint vocabulary, multi-source
    batches, finite losses with mask losses from the segmentation scenes."""
    import os.path as osp
    import subprocess
    import sys
    from mmengine.config import Config
    from conftest import ROOT
    from ovsam.datasets import generate_shapes_dataset
    from ovsam.vocabulary.joint import JointVocabulary
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', 'clip2sam_tiny_300it_shapes-cotrain.py'))
    data = tmp_path / 'data'
    generate_shapes_dataset(str(data), num_train=6, num_val=2, sa1b=False, seed=1,
                            cotrain=dict(box_only=list(cfg.box_only_classes),
                                         image_level=list(cfg.image_level_classes), num_boxes=4, num_image_level=2))
    joint = JointVocabulary.build({'segmentation': str(data / 'annotations' / 'instances_train.json'),
                                   'detection': str(data / 'annotations' / 'instances_boxes.json'),
                                   'image_level': str(data / 'image_level' / 'classes.txt')})
    assert joint.num_classes == 10
    joint.save(str(data / 'joint_vocabulary.json'))
    g = torch.Generator().manual_seed(0)
    from ovsam.vocabulary import save_text_embeddings
    save_text_embeddings(str(data / 'joint_vocabulary.pth'), torch.randn(10, 1, 64, generator=g), joint.class_names)
    text = open(osp.join(ROOT, 'configs', 'tiny', 'clip2sam_tiny_300it_shapes-cotrain.py')).read()
    text = text.replace("_base_ = ['./", f"_base_ = ['{osp.join(ROOT, 'configs', 'tiny')}/")
    text = text.replace("data_root = 'data/shapes_cotrain/'", f"data_root = '{data}/'")
    text += '''
model = dict(backbone=dict(init_cfg=None), neck=dict(init_cfg=None), prompt_encoder=dict(sam_checkpoint=None),
             mask_decoder=dict(sam_checkpoint=None, num_points=64, classifier=dict(vocabulary=vocabulary)))
train_cfg = dict(max_iters=3, val_begin=4)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=3))
'''
    path = tmp_path / 'cotrain.py'
    path.write_text(text)
    r = subprocess.run([sys.executable, 'tools/train.py', str(path), '--work-dir', str(tmp_path / 'wd')], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(__import__('os').environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    import re
    masks = [float(v) for v in re.findall(r'loss_mask: ([0-9.]+)', log)]
    assert len(masks) == 3 and all(v > 0 for v in masks), log[-2000:]


def test_cotrain_demo_stage0_never_sees_the_image_level_classes(tmp_path, monkeypatch):
    """tools/toy/cotrain.py (default ``--clip-classes no-image-level``) trains
    its own stage 0 on the main job's scenes with the image-level-only classes'
    names and objects removed, and writes its CLIP / SAM2CLIP under
    <work dir>/cotrain, leaving the main job's untouched."""
    import importlib
    import json
    import os.path as osp
    import sys
    from conftest import ROOT
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    cotrain = importlib.import_module('toy.cotrain')
    pipeline = importlib.import_module('toy.pipeline')
    wd = tmp_path / 'wd'
    ann = wd / 'data' / 'annotations'
    ann.mkdir(parents=True)
    (wd / 'data' / 'train').mkdir()
    names = ['circle', 'star', 'heart', 'square']
    coco = dict(images=[dict(id=1, file_name='a.png', width=8, height=8)],
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(names)],
                annotations=[dict(id=i + 1, image_id=1, category_id=i + 1, bbox=[0, 0, 2, 2], area=4, iscrowd=0)
                             for i in range(4)])
    (ann / 'instances_train.json').write_text(json.dumps(coco))
    seen = {}
    monkeypatch.setattr(pipeline.Pipeline, 'run_clip', lambda self: seen.update(
        data=self.data, ckpt=self.clip_ckpt, coco=json.load(open(osp.join(self.data, 'annotations',
                                                                          'instances_train.json')))))
    monkeypatch.setattr(sys, 'argv', ['cotrain.py', '--work-dir', str(wd)])
    p = cotrain.pipeline_arg_parser('x')
    p.add_argument('--iters', type=int, default=1)
    p.add_argument('--num-boxes', type=int, default=1)
    p.add_argument('--num-image-level', type=int, default=1)
    p.add_argument('--clip-classes', default='no-image-level')
    demo = cotrain.CoTrainDemo(p.parse_args(['--work-dir', str(wd)]))
    from ovsam.datasets.shapes import SHAPE_CLASSES
    assert {SHAPE_CLASSES[i] for i in demo.cfg0.image_level_classes} == {'star', 'heart'}
    demo.run_clip()
    assert [c['name'] for c in seen['coco']['categories']] == ['circle', 'square']
    assert sorted(a['category_id'] for a in seen['coco']['annotations']) == [1, 4]
    assert osp.realpath(osp.join(seen['data'], 'train')) == osp.realpath(wd / 'data' / 'train')
    assert seen['ckpt'].startswith(str(wd / 'cotrain')) and demo.sam2clip_ckpt.startswith(str(wd / 'cotrain'))
    assert demo.data == osp.join(str(wd), 'data')  # restored
