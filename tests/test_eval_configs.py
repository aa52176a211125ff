"""The evaluation configs parse, build their models (on the meta device) and
wire the pieces the protocols need."""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from conftest import ROOT
from ovsam.checkpoint import CheckpointError
from ovsam.datasets.coco_ov import COCO_CLASSES, COCO_OV_BASE_IDS, COCO_OV_NOVEL_IDS
from ovsam.registry import MODELS

EVAL_DIR = osp.join(ROOT, 'configs', 'eval')
CONFIGS = sorted(glob.glob(osp.join(EVAL_DIR, '*.py')))
NAMES = [osp.basename(p) for p in CONFIGS]
OFFICIAL = {'clip': 'RN50x16.pt', 'sam2clip': 'sam2clip_vith_rn50x16.pth', 'sam': 'sam_vit_h_4b8939.pth'}


def load(name):
    return Config.fromfile(osp.join(EVAL_DIR, name))


def without_files(model_cfg):
    """The model config with every file reference removed (meta-device build)."""
    m = model_cfg.copy()
    if 'checkpoints' in m:
        m.checkpoints = None
    if 'mask_decoder' in m:
        m.mask_decoder.classifier.vocabulary = None
    if 'classifier' in m:
        m.classifier.vocabulary = None
    if 'sam' in m:
        m.sam.checkpoint = None
    if 'clip' in m:
        m.clip.init_cfg = None
    return m


def test_expected_configs_exist():
    for name in ('ovsam_rn50x16_box-prompt_coco-ov.py', 'ovsam_rn50x16_point-prompt_coco-ov.py', 'ovsam_rn50x16_box-prompt_lvis.py',
                 'ovsam_rn50x16_detector-prompt_coco.py', 'ovsam_rn50x16_detector-prompt_lvis.py',
                 'sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py', 'sam-clip-maskpool_vith-rn50x16_box-prompt_coco-ov.py',
                 'ovsam_tiny_box-prompt_shapes.py'):
        assert name in NAMES, name


def test_config_basenames_are_unique():
    """mim finds configs by basename."""
    names = [osp.basename(p) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)]
    dups = {n for n in names if names.count(n) > 1}
    assert not dups


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_on_meta_device(name):
    cfg = load(name)
    assert cfg.custom_imports == dict(imports=['ovsam'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmdet' and cfg.test_cfg.type == 'TestLoop'
    assert cfg.pretty_text  # the runner dumps the config: no unprintable objects in it
    with torch.device('meta'):
        model = MODELS.build(without_files(cfg.model))
    assert next(model.parameters()).device.type == 'meta'
    if 'tiny' not in name:  # real size: SAM-H + RN50x16 ~ 0.8 B, OV-SAM ~ 0.3 B parameters
        n = sum(p.numel() for p in model.parameters())
        assert n > (600e6 if name.startswith('sam-clip') else 250e6)


@pytest.mark.parametrize('name', [n for n in NAMES if n.startswith('ovsam_rn50x16')])
def test_ovsam_configs_point_at_the_release(name):
    cfg = load(name)
    ck = cfg.model.checkpoints
    for k, f in OFFICIAL.items():
        assert osp.basename(ck[k]) == f
    dataset = 'lvis' if name.endswith('_lvis.py') else 'coco'
    assert osp.basename(ck.clip2sam) == f'clip2sam_{dataset}_rn50x16.pth'
    with torch.device('meta'):
        model = MODELS.build(without_files(cfg.model))
    roi = model.mask_decoder.roi.roi_layers[0].output_size
    assert tuple(roi) == ((7, 7) if dataset == 'lvis' else (12, 12))  # DESIGN 1.7
    if dataset == 'lvis':
        assert type(model).__name__ == 'OVSAMFrequencySplit'
        assert cfg.model.mask_decoder.classifier.num_classes == 1203
    # the release files are really read: a missing one fails loudly
    m = cfg.model.copy()
    m.mask_decoder.classifier.vocabulary = None
    with pytest.raises(CheckpointError, match='does not exist'), torch.device('meta'):
        MODELS.build(m)


def test_interactive_configs():
    box, point = load('ovsam_rn50x16_box-prompt_coco-ov.py'), load('ovsam_rn50x16_point-prompt_coco-ov.py')
    for cfg in (box, point):
        assert cfg.model.prompt_source == 'gt'
        assert cfg.model.base_classes == list(COCO_OV_BASE_IDS)
        assert cfg.model.novel_classes == list(COCO_OV_NOVEL_IDS)
        # the released label space: 80 COCO classes, 65 of them allowed
        assert cfg.model.mask_decoder.classifier.num_classes == 80
        assert osp.basename(cfg.model.mask_decoder.classifier.vocabulary) == 'rn50x16_coco.pth'
        ds = cfg.test_dataloader.dataset
        assert ds.type == 'CocoOVDataset' and ds.keep == 'all' and 'metainfo' not in ds
        assert cfg.test_evaluator.type == 'PromptSegMetric'
        assert cfg.test_evaluator.base_classes == list(COCO_OV_BASE_IDS)
        assert cfg.test_evaluator.novel_classes == list(COCO_OV_NOVEL_IDS)
        types = [t.type for t in cfg.test_dataloader.dataset.pipeline]
        # prompts (gt boxes / mask points) must be resized with the image
        assert types.index('LoadAnnotations') < types.index('Resize')
    assert box.model.data_preprocessor.eval_prompt == 'box'
    assert point.model.data_preprocessor.eval_prompt == 'point'
    lvis = load('ovsam_rn50x16_box-prompt_lvis.py')
    assert lvis.test_evaluator.type == 'LVISPromptSegMetric'
    assert lvis.test_evaluator.ann_file == lvis.model.split_ann_file == 'data/lvis/annotations/lvis_v1_val.json'
    assert lvis.test_dataloader.dataset.type == 'LVISV1Dataset'


@pytest.mark.parametrize('name,metric', [('ovsam_rn50x16_detector-prompt_coco.py', 'CocoMetric'),
                                         ('ovsam_rn50x16_detector-prompt_lvis.py', 'LVISMetricNumpy2')])
def test_detector_configs(name, metric):
    cfg = load(name)
    assert cfg.model.prompt_source == 'pred' and cfg.model.data_preprocessor.eval_prompt is None
    pipeline = cfg.test_dataloader.dataset.pipeline
    types = [t.type for t in pipeline]
    assert types.index('Resize') < types.index('LoadProposalPrompts') < types.index('PackDetInputsWithProposals')
    assert types.index('LoadProposalPrompts') == 2  # the index the documented --cfg-options use
    assert pipeline[2].ann_file == cfg.test_evaluator.ann_file
    assert cfg.test_evaluator.type == metric and cfg.test_evaluator.metric == 'segm'
    if metric == 'CocoMetric':
        assert tuple(cfg.test_evaluator.proposal_nums) == (1, 10, 100)
        assert cfg.model.mask_decoder.classifier.num_classes == 80
        assert len(cfg.model.base_classes) == 48 and len(cfg.model.novel_classes) == 32
    else:
        assert pipeline[2].topk == 300
    cfg.merge_from_dict({'test_dataloader.dataset.pipeline.2.proposal_file': 'mine.json'})
    assert cfg.test_dataloader.dataset.pipeline[2].proposal_file == 'mine.json'


@pytest.mark.parametrize('name', ['ovsam_rn50x16_box-prompt_coco-ov.py', 'sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py'])
def test_coco_ov_models_allow_the_split_of_80_classes(name):
    """Built from the config: 80 columns (+ background) normalised together,
    the 65 split classes allowed, the 15 others not (DESIGN 1.7)."""
    import numpy as np
    cfg = load(name)
    with torch.device('meta'):
        model = MODELS.build(without_files(cfg.model))
    if hasattr(model, 'class_split'):
        seen, allowed = model.class_split(80)
        assert seen.tolist() == [i in COCO_OV_BASE_IDS for i in range(80)] + [True]
        allowed = np.flatnonzero(allowed.numpy()).tolist()
    else:
        allowed = model.allowed_classes
    assert allowed == sorted(COCO_OV_BASE_IDS + COCO_OV_NOVEL_IDS) and len(allowed) == 65
    outside = [COCO_CLASSES[i] for i in range(80) if i not in allowed]
    assert len(outside) == 15 and 'traffic light' in outside and 'cat' not in outside


def test_coco_ov_training_config():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'ovsam_coco.py'))
    assert cfg.model.mask_decoder.classifier.num_classes == 80
    assert cfg.model.base_classes == list(COCO_OV_BASE_IDS) and cfg.model.novel_classes == list(COCO_OV_NOVEL_IDS)
    assert cfg.train_dataloader.dataset.type == 'CocoOVDataset' and cfg.train_dataloader.dataset.keep == 'base'
    assert cfg.val_dataloader.dataset.keep == 'all'
    assert [m.type for m in cfg.val_evaluator] == ['PromptSegMetric', 'CocoOVMetric']
    assert cfg.default_hooks.safe_checkpoints.type == 'SafeCheckpointsHook'


def test_baseline_configs():
    crop = load('sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py')
    pool = load('sam-clip-maskpool_vith-rn50x16_box-prompt_coco-ov.py')
    for cfg in (crop, pool):
        assert cfg.model.sam.image_encoder.variant == 'vit_h'
        assert osp.basename(cfg.model.sam.checkpoint) == 'sam_vit_h_4b8939.pth'
        assert cfg.model.clip.model_name == 'RN50x16'
        assert osp.basename(cfg.model.clip.init_cfg.checkpoint) == 'RN50x16.pt'
        assert cfg.model.classifier.num_classes == 80
        assert cfg.test_evaluator == load('ovsam_rn50x16_box-prompt_coco-ov.py').test_evaluator
    assert (crop.model.type, pool.model.type) == ('SAMCropCLIP', 'SAMMaskPoolCLIP')


def test_frequency_split_is_read_from_the_annotation_file(tmp_path, tiny_cfg):
    from conftest import build_tiny, make_batch
    cats = [dict(id=i + 1, name=n, frequency=f) for i, (n, f) in enumerate(zip('abcde', 'frcrf'))]
    ann = tmp_path / 'lvis.json'
    ann.write_text(json.dumps(dict(images=[], annotations=[], categories=cats)))
    model = build_tiny(tiny_cfg, num_classes=5, type='OVSAMFrequencySplit', split_ann_file=str(ann))
    assert model.base_classes is None  # lazily: building needs no file
    inputs, samples = make_batch(model, boxes=[[10, 10, 100, 120]])
    with torch.no_grad():
        model.predict(inputs, samples)
    assert model.base_classes == [0, 2, 4] and model.novel_classes == [1, 3]
    with pytest.raises(ValueError, match='split_ann_file'):
        build_tiny(tiny_cfg, type='OVSAMFrequencySplit', split_ann_file=str(ann), base_classes=[0])
