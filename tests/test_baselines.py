"""The paper's baselines (SAM + CLIP crop, SAM + CLIP mask pooling) on tiny random weights."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from conftest import ROOT, TINY_CFG
from ovsam.datasets.shapes import SHAPE_BASE_CLASSES, SHAPE_CLASSES, SHAPE_NOVEL_CLASSES, generate_shapes_dataset
from ovsam.registry import DATASETS, MODELS
from ovsam.vocabulary import save_text_embeddings

CROP_CFG = osp.join(ROOT, 'configs', 'eval', 'sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py')
POOL_CFG = osp.join(ROOT, 'configs', 'eval', 'sam-clip-maskpool_vith-rn50x16_box-prompt_coco-ov.py')

TINY_SAM = dict(
    image_encoder=dict(variant='custom', image_size=256, embed_dim=32, depth=1, num_heads=2,
                       global_attn_indexes=(0, ), window_size=4, out_chans=64),
    prompt_encoder=dict(embed_dim=64, image_size=256, embedding_size=16, mask_in_chans=8),
    decoder=dict(transformer_dim=64, depth=1, mlp_dim=128, num_heads=4))


def tiny_clip_cfg():
    return Config.fromfile(TINY_CFG).tiny_clip_cfg.to_dict()


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    info = generate_shapes_dataset(str(root), num_train=0, num_val=3, image_size=256, sa1b=False, seed=3)
    vocab = str(root / 'vocab.pth')
    save_text_embeddings(vocab, torch.randn(len(SHAPE_CLASSES), 2, 64, generator=torch.Generator().manual_seed(0)),
                         SHAPE_CLASSES)
    return dict(root=str(root), info=info, vocab=vocab)


def tiny_model_cfg(path, vocab, **overrides):
    """A real baseline config with its SAM-H / RN50x16 parts swapped for tiny ones."""
    cfg = Config.fromfile(path)
    m = cfg.model
    m.data_preprocessor.pad_size_divisor = 256
    m.sam = dict(TINY_SAM, checkpoint=None)
    m.clip = dict(type='OpenCLIPBackbone', model_name='tiny', model_cfg=tiny_clip_cfg())
    m.classifier = dict(vocabulary=vocab, num_classes=len(SHAPE_CLASSES))
    m.base_classes = list(SHAPE_BASE_CLASSES)
    m.novel_classes = list(SHAPE_NOVEL_CLASSES)
    m.update(overrides)
    return m


def build(path, vocab, seed=0, **overrides):
    torch.manual_seed(seed)
    return MODELS.build(tiny_model_cfg(path, vocab, **overrides)).eval()


def dataset(shapes, pipeline_extra=(), resize=256):
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')  # mmdet's LoadAnnotations, not mmcv's
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='Resize', scale=(resize, resize), keep_ratio=True), *pipeline_extra]
    if not pipeline_extra:
        pipeline.append(dict(type='PackDetInputs',
                             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')))
    return DATASETS.build(dict(type='CocoDataset', data_root=shapes['root'] + '/',
                               ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                               metainfo=dict(classes=SHAPE_CLASSES), test_mode=True, pipeline=pipeline))


def run(model, ds, metrics):
    evaluator = Evaluator(metrics)
    evaluator.dataset_meta = ds.metainfo
    outputs = []
    for i in range(len(ds)):
        batch = pseudo_collate([ds[i]])
        with torch.no_grad():
            out = model.test_step(batch)
        evaluator.process(out, batch)
        outputs.extend(out)
    return evaluator.evaluate(len(ds)), outputs


@pytest.mark.parametrize('path', [CROP_CFG, POOL_CFG])
def test_gt_box_prompts_through_prompt_and_coco_metrics(shapes, path):
    model = build(path, shapes['vocab'])
    ds = dataset(shapes, resize=200)  # a real rescale: 256 -> 200, padded to 256
    ann = osp.join(shapes['root'], 'annotations', 'instances_val.json')
    metrics = [dict(type='PromptSegMetric', base_classes=SHAPE_BASE_CLASSES, novel_classes=SHAPE_NOVEL_CLASSES),
               dict(type='CocoMetric', ann_file=ann, metric='segm', proposal_nums=(1, 10, 100))]
    res, outputs = run(model, ds, metrics)
    n_inst = shapes['info']['val']['num_instances']
    assert res['prompt/num_prompts'] == n_inst
    assert 0 <= res['prompt/miou'] <= 1 and 0 <= res['prompt/accuracy'] <= 1
    assert 0 <= res['coco/segm_mAP'] <= 1
    for out in outputs:
        pred, gt = out.pred_instances, out.gt_instances
        assert pred.masks.shape == (len(gt), 256, 256) and pred.masks.dtype == torch.bool
        assert pred.labels.max() < len(SHAPE_CLASSES)
        # only classes of the split may be predicted, scores are probabilities
        assert set(pred.labels.tolist()) <= set(SHAPE_BASE_CLASSES) | set(SHAPE_NOVEL_CLASSES)
        assert torch.all((pred.scores > 0) & (pred.scores <= 1))
        # box prompts come back in original pixels
        torch.testing.assert_close(pred.bboxes, gt.bboxes / out.scale_factor[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize('path', [CROP_CFG, POOL_CFG])
def test_detector_prompts(shapes, path, tmp_path):
    """prompt_source='pred': proposals from a results file; scores (and with
    label_source='detector' labels) are the detector's."""
    ann = osp.join(shapes['root'], 'annotations', 'instances_val.json')
    gt = json.load(open(ann))['annotations']
    dets = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=0.5 + 0.01 * i)
            for i, a in enumerate(gt)]
    det_file = tmp_path / 'dets.json'
    det_file.write_text(json.dumps(dets))
    extra = [dict(type='LoadProposalPrompts', proposal_file=str(det_file), ann_file=ann, classes=SHAPE_CLASSES),
             dict(type='PackDetInputsWithProposals',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    ds = dataset(shapes, extra)
    model = build(path, shapes['vocab'], prompt_source='pred', label_source='detector')
    model.data_preprocessor.eval_prompt = None
    res, outputs = run(model, ds, [dict(type='CocoMetric', ann_file=ann, metric='segm', proposal_nums=(1, 10, 100))])
    assert 0 <= res['coco/segm_mAP'] <= 1
    for out in outputs:
        mine = sorted((d for d in dets if d['image_id'] == out.img_id), key=lambda d: -d['score'])
        np.testing.assert_allclose(out.pred_instances.scores.numpy(), [d['score'] for d in mine], rtol=1e-6)
        assert out.pred_instances.labels.tolist() == [d['category_id'] - 1 for d in mine]


def test_weights_load_from_sam_and_clip_files(shapes, tmp_path):
    """SAM .pth (SAM's key layout) and an open_clip state dict (visual.*) load strictly."""
    import open_clip
    ref = build(CROP_CFG, shapes['vocab'], seed=0)
    sam_path = str(tmp_path / 'sam_tiny.pth')
    torch.save(dict(state_dict=ref.sam.state_dict()), sam_path)
    torch.manual_seed(5)
    full_clip = open_clip.model.CLIP(**tiny_clip_cfg())
    clip_path = str(tmp_path / 'clip_tiny.pth')
    torch.save(full_clip.state_dict(), clip_path)

    loaded = build(CROP_CFG, shapes['vocab'], seed=1,
                   sam=dict(TINY_SAM, checkpoint=sam_path),
                   clip=dict(type='OpenCLIPBackbone', model_name='tiny', model_cfg=tiny_clip_cfg(),
                             init_cfg=dict(type='Pretrained', checkpoint=clip_path)))
    other = build(CROP_CFG, shapes['vocab'], seed=1)
    for k, v in ref.sam.state_dict().items():
        assert torch.equal(loaded.sam.state_dict()[k], v), k
    proj = 'image_encoder.patch_embed.proj.weight'
    assert not torch.equal(other.sam.state_dict()[proj], ref.sam.state_dict()[proj])
    assert torch.equal(loaded.clip.stem[0].weight, full_clip.visual.conv1.weight)
    assert torch.equal(loaded.clip.head.c_proj.weight, full_clip.visual.attnpool.c_proj.weight)
    # a SAM file with missing parts is refused
    sd = ref.sam.state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith('mask_decoder.iou')}, sam_path)
    with pytest.raises(Exception, match='missing keys'):
        build(CROP_CFG, shapes['vocab'], sam=dict(TINY_SAM, checkpoint=sam_path))


def test_crop_is_the_box_resized_to_clip_input(shapes):
    model = build(CROP_CFG, shapes['vocab'])
    s = model.clip.image_size
    xs = torch.arange(256, dtype=torch.float32)
    image = torch.stack([xs.expand(256, 256), xs[:, None].expand(256, 256), torch.zeros(256, 256)])[None]
    crop = model.crops(image, torch.tensor([[16., 40., 80., 72.]]))
    assert crop.shape == (1, 3, s, s)
    # pixel centres: output cell j covers x in 16 + [j, j + 1) * 64 / s; its mean is the cell centre - 0.5
    cx = 16 + (torch.arange(s) + 0.5) * 64 / s - 0.5
    cy = 40 + (torch.arange(s) + 0.5) * 32 / s - 0.5
    torch.testing.assert_close(crop[0, 0, 0], cx, atol=1e-3, rtol=0)
    torch.testing.assert_close(crop[0, 1, :, 0], cy, atol=1e-3, rtol=0)


@pytest.mark.parametrize('pooling', ['attnpool', 'value'])
def test_mask_pooling_only_sees_inside_the_mask(shapes, pooling):
    model = build(POOL_CFG, shapes['vocab'], pooling=pooling)
    c5 = torch.randn(1, model.clip.out_channels[-1], 8, 8)
    masks = torch.zeros(2, 256, 256, dtype=torch.bool)
    masks[0, :64, :96] = True   # exactly C5 cells [0:2, 0:3]
    masks[1, 100:180, 20:200] = True
    boxes = torch.tensor([[0., 0., 96., 64.], [20., 100., 200., 180.]])
    e = model.clip_embed(None, c5, 0, masks, boxes)
    c5b = c5.clone()
    c5b[..., 6:, 7:] += 5  # cells no mask touches
    torch.testing.assert_close(model.clip_embed(None, c5b, 0, masks, boxes), e)
    c5c = c5.clone()
    c5c[..., 0, 0] += 5  # inside mask 0 only
    e2 = model.clip_embed(None, c5c, 0, masks, boxes)
    assert not torch.allclose(e2[0], e[0]) and torch.allclose(e2[1], e[1])
    if pooling == 'value':
        head = model.clip.head
        dense = head.c_proj(head.v_proj(c5[0, :, :2, :3].flatten(1).t()))  # per-cell CLIP embeddings
        torch.testing.assert_close(e[0], dense.mean(0), atol=1e-5, rtol=1e-4)


def test_point_prompts_use_best_of_three_masks(shapes):
    model = build(CROP_CFG, shapes['vocab'])
    embed = torch.randn(64, 16, 16)
    pts = InstanceData(point_coords=torch.tensor([[[30., 40.]], [[200., 100.]]]))
    logits, iou, is_point = model.decode(embed, pts)
    pe = model.sam.prompt_encoder
    sparse, dense = pe((pts.point_coords, torch.ones(2, 1, dtype=torch.long)), None, None)
    ref_masks, ref_iou = model.sam.mask_decoder(embed[None], pe.get_dense_pe(), sparse, dense, True)
    best = ref_iou.argmax(1)
    assert is_point.all()
    torch.testing.assert_close(iou, ref_iou[torch.arange(2), best])
    torch.testing.assert_close(logits[:, 0], ref_masks[torch.arange(2), best])
    boxes = InstanceData(bboxes=torch.tensor([[10., 10., 90., 120.]]))
    logits, iou, _ = model.decode(embed, boxes)
    sparse, dense = pe(None, boxes.bboxes, None)
    ref_masks, ref_iou = model.sam.mask_decoder(embed[None], pe.get_dense_pe(), sparse, dense, False)
    torch.testing.assert_close(logits, ref_masks)


def test_no_prompts_gives_empty_prediction(shapes):
    from mmdet.structures import DetDataSample
    model = build(POOL_CFG, shapes['vocab'])
    sample = DetDataSample(metainfo=dict(img_shape=(200, 240), ori_shape=(100, 120), batch_input_shape=(256, 256),
                                         scale_factor=(2., 2.)))
    sample.gt_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    out = model.predict(torch.zeros(1, 3, 256, 256), [sample])[0].pred_instances
    assert out.masks.shape == (0, 100, 120) and len(out.labels) == 0


def test_inference_only(shapes):
    model = build(CROP_CFG, shapes['vocab'])
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.clip.training
    with pytest.raises(NotImplementedError):
        model.loss(torch.zeros(1, 3, 256, 256), [])
