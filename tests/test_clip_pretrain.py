"""Stage 0 of the toy pipeline: the tiny CLIP and the files it writes."""
import json
import os.path as osp

import pytest
import torch

from conftest import TINY_CFG


@pytest.fixture(scope='module')
def tiny_clip(tmp_path_factory):
    from mmengine.config import Config
    from ovsam.datasets import generate_shapes_dataset
    from ovsam.training import train_clip_on_crops
    root = tmp_path_factory.mktemp('clip0')
    info = generate_shapes_dataset(str(root / 'data'), num_train=10, num_val=1, sa1b=False, seed=3)
    cfg = Config.fromfile(TINY_CFG).tiny_clip_cfg.to_dict()
    out = str(root / 'clip' / 'tiny_clip.pt')
    res = train_clip_on_crops(cfg, info['train']['ann_file'], info['train']['img_dir'], out, steps=4,
                              batch_size=20, log_every=0)
    return cfg, out, res, info


def test_tiny_clip_reports_and_writes_open_clip_files(tiny_clip):
    cfg, out, res, info = tiny_clip
    assert res['num_crops'] == info['train']['num_instances']
    assert 0.0 <= res['crop_accuracy'] <= 1.0
    assert torch.isfinite(torch.tensor(res['loss']))
    with open(osp.splitext(out)[0] + '.json') as f:
        assert json.load(f) == cfg
    sd = torch.load(out, weights_only=True)
    assert any(k.startswith('visual.') for k in sd) and 'text_projection' in sd
    assert not osp.exists(out + '.tmp')


def test_tiny_clip_loads_through_the_real_clip_path(tiny_clip):
    """The backbone loaded from the stage-0 file computes open_clip's own image embedding."""
    from open_clip.model import CLIP
    from ovsam.models.clip_backbone import OpenCLIPBackbone
    cfg, out, _, _ = tiny_clip
    backbone = OpenCLIPBackbone(model_name='tiny', model_cfg=cfg, init_cfg=dict(type='Pretrained', checkpoint=out))
    backbone.init_weights()
    clip = CLIP(**cfg)
    clip.load_state_dict(torch.load(out, weights_only=True))
    clip.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = clip.encode_image(x)
        rois = torch.tensor([[i, 0., 0., 64., 64.] for i in range(3)])
        got = backbone.box_embed(backbone(x)[-1], rois)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_tiny_clip_missing_annotations_or_images_are_clear(tiny_clip, tmp_path):
    from ovsam.training import train_clip_on_crops
    cfg, _, _, info = tiny_clip
    with pytest.raises(FileNotFoundError):
        train_clip_on_crops(cfg, str(tmp_path / 'missing.json'), str(tmp_path), str(tmp_path / 'c.pt'), steps=1)
    with pytest.raises(FileNotFoundError, match='cannot read image'):
        train_clip_on_crops(cfg, info['train']['ann_file'], str(tmp_path), str(tmp_path / 'c.pt'), steps=1)
    assert not (tmp_path / 'c.pt').exists()
