"""Co-training data: segmentation, detection and image-level sources in one
run (mmdet's multi-source samplers over a ConcatDataset), per-source ratios,
rank streams under DDP, joint labels, bad detection data."""
import json
import os
from collections import Counter

import cv2
import numpy as np
import pytest

BATCH = 6
RATIO = [3, 2, 1]  # segmentation : detection : image-level


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """Generated shapes (COCO format, used as segmentation and as detection
    data), an image-level folder and the joint vocabulary of the three."""
    from ovsam.datasets import generate_shapes_dataset
    from ovsam.vocabulary.joint import JointVocabulary
    root = tmp_path_factory.mktemp('cotrain')
    generate_shapes_dataset(str(root / 'shapes'), num_train=8, num_val=0, sa1b=False, seed=5,
                            classes=['circle,disc', 'square', 'triangle'])
    for c, name in enumerate(('heart', 'star')):
        os.makedirs(root / 'in' / name)
        for k in range(5):
            cv2.imwrite(str(root / 'in' / name / f'{k}.png'), np.full((24, 32 + k, 3), 50 * c, np.uint8))
    ann = str(root / 'shapes' / 'annotations' / 'instances_train.json')
    joint = JointVocabulary.build({'seg': ann, 'det': ann, 'in': ['heart', 'star']})
    joint.save(str(root / 'joint.json'))
    return root


def _seg(root, **kw):
    cfg = dict(type='CoTrainCocoDataset', data_root=str(root / 'shapes') + '/',
               ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
               joint_vocabulary=str(root / 'joint.json'), source='seg',
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                         dict(type='PackDetInputs')])
    cfg.update(kw)
    return cfg


def _det(root, **kw):
    cfg = _seg(root, **{'source': 'det', **kw})
    cfg.update(pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                                       dict(type='PackDetInputs')])
    return cfg


def _img(root, **kw):
    return dict(type='ImageLevelDataset', data_root=str(root / 'in'), data_prefix=dict(img=''), classes=None,
                joint_vocabulary=str(root / 'joint.json'), source='in',
                pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadWholeImageBox'), dict(type='PackDetInputs')],
                **kw)


def _concat(root, **img_kw):
    import ovsam  # noqa: F401
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return DATASETS.build(dict(type='ConcatDataset', datasets=[_seg(root), _det(root), _img(root, **img_kw)]))


def _source_of(ds, idx):
    return int(np.searchsorted(ds.cumulative_sizes, idx, side='right'))


def test_sources_share_the_joint_label_space(sources):
    from ovsam.vocabulary.joint import JointVocabulary
    joint = JointVocabulary.load(str(sources / 'joint.json'))
    ds = _concat(sources)
    assert ds.metainfo['classes'] == tuple(joint.class_names)  # mmengine compared all three
    assert [len(d) for d in ds.datasets] == [8, 8, 10]
    seg, det, img = (ds[int(i)]['data_samples'] for i in (0, 8, 25))
    assert 'masks' in seg.gt_instances and 'masks' not in det.gt_instances and 'masks' not in img.gt_instances
    assert img.gt_instances.labels.tolist() == [joint.source_ids('in')[1]]  # 'star'
    assert set(det.gt_instances.labels.tolist()) <= set(joint.source_ids('det').tolist())


@pytest.mark.parametrize('sampler', ['MultiSourceSampler', 'OVSAMGroupMultiSourceSampler'])
def test_every_batch_has_the_source_ratio(sources, sampler):
    from mmdet.registry import DATA_SAMPLERS
    ds = _concat(sources, read_sizes='Group' in sampler)  # grouping needs image sizes
    s = DATA_SAMPLERS.build(dict(type=sampler, dataset=ds, batch_size=BATCH, source_ratio=RATIO, seed=0))
    it = iter(s)
    for _ in range(20):
        batch = [next(it) for _ in range(BATCH)]
        assert Counter(_source_of(ds, i) for i in batch) == {0: 3, 1: 2, 2: 1}


def test_mmdet_group_sampler_needs_ours_for_three_sources(sources):
    """mmdet's GroupMultiSourceSampler is sized for two sources; ours for any."""
    from mmdet.registry import DATA_SAMPLERS
    ds = _concat(sources, read_sizes=True)
    with pytest.raises(IndexError):
        DATA_SAMPLERS.build(dict(type='GroupMultiSourceSampler', dataset=ds, batch_size=BATCH, source_ratio=RATIO))
    ds = _concat(sources)  # no image sizes for the image-level source
    with pytest.raises(KeyError, match='read_sizes=True'):
        DATA_SAMPLERS.build(dict(type='OVSAMGroupMultiSourceSampler', dataset=ds, batch_size=BATCH,
                                 source_ratio=RATIO))


def test_two_ranks_see_disjoint_streams_that_cover_each_source(sources, monkeypatch):
    """mmdet's definition: every rank slices the same seeded stream of each
    source (rank r takes draws r, r + W, ...); over one pass of a source the
    W ranks see disjoint indices that together are the whole source."""
    import mmdet.datasets.samplers.multi_source_sampler as mss
    ds = _concat(sources)
    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setattr(mss, 'get_dist_info', lambda r=rank: (r, 2))
        s = mss.MultiSourceSampler(ds, batch_size=BATCH, source_ratio=RATIO, seed=7)
        it = iter(s)
        per_rank[rank] = [next(it) for _ in range(BATCH * 20)]
    for src, size in enumerate(len(d) for d in ds.datasets):
        seen = [[i for i in per_rank[r] if _source_of(ds, i) == src][:size // 2] for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == size // 2
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(ds.cumulative_sizes[src] - size, ds.cumulative_sizes[src]))
    # and the ranks do not just replay one order
    assert per_rank[0][:BATCH] != per_rank[1][:BATCH]


def test_mixed_batch_trains_with_mask_losses(sources, tiny_cfg):
    """One batch of the three sources through the preprocessor and the model:
    mask losses from the segmentation samples, classification on all."""
    import torch
    from mmdet.registry import DATA_SAMPLERS
    from mmengine.dataset import pseudo_collate
    from conftest import build_tiny
    from ovsam.vocabulary.joint import JointVocabulary
    joint = JointVocabulary.load(str(sources / 'joint.json'))
    ds = _concat(sources)
    s = iter(DATA_SAMPLERS.build(dict(type='MultiSourceSampler', dataset=ds, batch_size=BATCH, source_ratio=RATIO,
                                      seed=0)))
    batch = pseudo_collate([ds[next(s)] for _ in range(BATCH)])
    model = build_tiny(tiny_cfg, num_classes=joint.num_classes)
    model.mask_decoder.loss_cls_cfg = tiny_cfg.model.mask_decoder.loss_cls
    data = model.data_preprocessor(batch, training=True)
    kinds = [('masks' in d.gt_instances, bool(d.gt_instances.has_mask.any()), bool(d.gt_instances.prompt_is_point.any()))
             for d in data['data_samples']]
    assert kinds[:3] == [(True, True, True)] * 3 and all(k == (False, False, False) for k in kinds[3:])
    with torch.no_grad():
        losses = model.loss(data['inputs'], data['data_samples'])
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert losses['loss_mask'] > 0 and losses['loss_dice'] > 0 and losses['loss_cls'] > 0


def test_detection_file_without_masks_where_masks_are_expected(sources, tmp_path):
    """Segmentation pipeline (with_mask=True) on a file whose annotation lacks
    its mask: an error naming the annotation and what to do."""
    import ovsam  # noqa: F401
    from mmdet.registry import DATASETS
    from ovsam.datasets import AnnotationError
    with open(sources / 'shapes' / 'annotations' / 'instances_train.json') as f:
        ann = json.load(f)
    del ann['annotations'][2]['segmentation']
    bad = tmp_path / 'boxes.json'
    bad.write_text(json.dumps(ann))
    cfg = _seg(sources, joint_vocabulary=None, source=None)
    cfg.update(ann_file=str(bad))
    with pytest.raises(AnnotationError, match=r'annotation 3 \(image \d+\) has no mask .* use LoadAnnotations'
                                              r'\(with_bbox=True, with_mask=False\)'):
        DATASETS.build(cfg)
    cfg = _det(sources, joint_vocabulary=None, source=None)
    cfg.update(ann_file=str(bad))
    ds = DATASETS.build(cfg)  # as detection data it is fine
    assert ds.metainfo['classes'] == ('circle,disc', 'square', 'triangle')  # the file's categories


def test_missing_detection_data_says_how_to_make_it(tmp_path):
    import ovsam  # noqa: F401
    from mmdet.registry import DATASETS
    cfg = dict(type='CoTrainCocoDataset', data_root=str(tmp_path) + '/', ann_file='annotations/v3det_train.json',
               data_prefix=dict(img='images/'), pipeline=[],
               missing_hint='Convert V3Det to COCO format with tools/x.py')
    with pytest.raises(FileNotFoundError, match='annotation file .*v3det_train.json.* does not exist. Convert V3Det'):
        DATASETS.build(cfg)


# ----------------------------------------------------------------- real configs
REAL = ('clip2sam_rn50x16_90k_lvis-v3det-in21k.py', 'clip2sam_rn50x16_90k_in21k.py')


@pytest.mark.parametrize('name', REAL)
def test_real_configs_build_on_the_meta_device(name):
    """The configs parse and build their model without touching any file; data
    paths are only read when the dataloader is built."""
    import torch
    from mmengine.config import Config
    from conftest import ROOT
    from ovsam.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    assert cfg.pretty_text and cfg.default_scope == 'mmdet' and cfg.train_cfg.type == 'IterBasedTrainLoop'
    m = cfg.model.copy()
    m.mask_decoder.classifier.vocabulary = None
    m.backbone.init_cfg = m.neck.init_cfg = None
    m.prompt_encoder.sam_checkpoint = m.mask_decoder.sam_checkpoint = None
    with torch.device('meta'):
        model = MODELS.build(m)
    assert sum(p.numel() for p in model.parameters()) > 250e6
    assert [h.type for h in cfg.custom_hooks] == ['CheckVocabularyHook']


def test_real_configs_say_how_to_make_missing_data(tmp_path, monkeypatch):
    import ovsam  # noqa: F401
    from mmengine.config import Config
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    from conftest import ROOT
    from ovsam.vocabulary.joint import JointVocabulary
    init_default_scope('mmdet')
    monkeypatch.chdir(tmp_path)  # a checkout without data
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', REAL[0]))
    sources = cfg.train_dataloader.dataset.datasets
    assert cfg.train_dataloader.sampler.type == 'MultiSourceSampler'
    assert [s.source for s in sources] == ['lvis', 'v3det', 'in21k']
    with pytest.raises(FileNotFoundError, match='make it with python tools/build_vocabulary.py'):
        DATASETS.build(cfg.train_dataloader.dataset)
    os.makedirs('data/embeddings')
    JointVocabulary.build({'lvis': ['a'], 'v3det': ['b'], 'in21k': ['c']}).save(sources[0].joint_vocabulary)
    for src, match in zip(sources, ('Put LVIS v1 under data/lvis/', 'Put V3Det under data/V3Det/',
                                    "Put ImageNet-21k under data/imagenet21k/: .*meta/train.txt")):
        with pytest.raises(FileNotFoundError, match=match):
            DATASETS.build(src)
    in21k = Config.fromfile(os.path.join(ROOT, 'configs', REAL[1])).train_dataloader.dataset
    os.makedirs('data/imagenet21k/train')
    with open('data/imagenet21k/classes.txt', 'w') as f:
        f.write('n00000001 tench,Tinca tinca\n')
    with pytest.raises(FileNotFoundError, match="annotation list .*meta/train.txt.* Put ImageNet-21k under"):
        DATASETS.build(dict(in21k, joint_vocabulary=None, source=None))
