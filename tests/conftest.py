import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_CFG = osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_tiny.py')
REAL_CFG = osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_rn50x16.py')
# Key/shape manifests of the official checkpoints (copied from the project's
# shared/reference so the layout tests never depend on files outside the repo).
REFERENCE = osp.join(ROOT, 'tests', 'fixtures', 'official_layout')

torch.set_num_threads(2)



@pytest.fixture(scope='session')
def tiny_cfg():
    from mmengine.config import Config
    return Config.fromfile(TINY_CFG)


def build_tiny(cfg, num_classes=5, seed=0, **model_overrides):
    """A tiny OVSAM with a random vocabulary of ``num_classes``."""
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    torch.manual_seed(seed)
    model_cfg = cfg.model.copy()
    model_cfg.update(model_overrides)
    model = MODELS.build(model_cfg)
    model.init_weights()
    g = torch.Generator().manual_seed(seed + 1)
    model.mask_decoder.classifier.set_vocabulary(torch.randn(num_classes, 2, 64, generator=g),
                                                 [f'class{i}' for i in range(num_classes)])
    return model.eval()


@pytest.fixture
def tiny_model(tiny_cfg):
    return build_tiny(tiny_cfg)


def make_batch(model, image_hw=(200, 240), boxes=None, points=None, seed=0, masks=None, labels=None):
    """One preprocessed image with prompts in ``gt_instances``."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    size = model.pe.input_image_size[0]
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    img = torch.rand(3, nh, nw, generator=g) * 255
    inputs = torch.zeros(1, 3, size, size)
    inputs[0, :, :nh, :nw] = (img - 120) / 60
    sample = DetDataSample(metainfo=dict(img_shape=(nh, nw), ori_shape=(h, w), batch_input_shape=(size, size),
                                         pad_shape=(size, size), scale_factor=(scale, scale)))
    gt = InstanceData()
    if boxes is not None:
        gt.bboxes = torch.as_tensor(boxes, dtype=torch.float32)
    if points is not None:
        gt.point_coords = torch.as_tensor(points, dtype=torch.float32)
    if masks is not None:
        gt.masks = masks
    if labels is not None:
        gt.labels = torch.as_tensor(labels)
    sample.gt_instances = gt
    return inputs, [sample]
