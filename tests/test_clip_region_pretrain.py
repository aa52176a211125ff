"""Stage 0 on regions of whole scenes (ovsam.training.train_clip_on_regions)."""
import json
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import TINY_CFG


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    from mmengine.config import Config
    from ovsam.datasets import generate_shapes_dataset
    root = tmp_path_factory.mktemp('clip_regions')
    info = generate_shapes_dataset(str(root / 'data'), num_train=6, num_val=1, sa1b=False, seed=3,
                                   colour_mode='random')
    cfg = Config.fromfile(TINY_CFG).tiny_clip_cfg.to_dict()
    return root, cfg, info


def test_region_stage0_learns_writes_and_loads(scenes):
    """The losses fall on a tiny set, the files are open_clip's layout (config
    first, no temporary left), and OV-SAM's loader reads them."""
    from ovsam.models.clip_backbone import OpenCLIPBackbone
    from ovsam.training import train_clip_on_regions
    root, cfg, info = scenes
    out = str(root / 'clip' / 'tiny_clip.pt')
    logged = []
    res = train_clip_on_regions(cfg, info['train']['ann_file'], info['train']['img_dir'], out, steps=60,
                                scenes_per_step=3, boxes_per_object=2, crop_steps=4, crop_batch=8, lr=3e-3,
                                bn_batches=2, log_every=0, seed=1,
                                on_step=lambda step, loss, text_loss: logged.append((loss, text_loss)))
    assert len(logged) == 64 and res['num_objects'] == info['train']['num_instances']
    scene = np.array(logged[4:])  # the scene steps (after the 4 crop steps)
    first, last = scene[:10].mean(0), scene[-10:].mean(0)
    assert last[0] < first[0] and last[1] < first[1], (first, last)
    assert 0.0 <= res['region_accuracy'] <= 1.0
    with open(osp.splitext(out)[0] + '.json') as f:
        assert json.load(f) == cfg
    sd = torch.load(out, weights_only=True)
    assert any(k.startswith('visual.attnpool') for k in sd) and 'text_projection' in sd
    assert not [k for k in sd if 'aux' in k or 'proto' in k]  # training-only parts are not saved
    assert not osp.exists(out + '.tmp')
    backbone = OpenCLIPBackbone(model_name='tiny', model_cfg=cfg, init_cfg=dict(type='Pretrained', checkpoint=out))
    backbone.init_weights()
    # batch norm was re-estimated: the running statistics are no longer the initial ones
    assert not torch.allclose(backbone.stem[1].running_var, torch.ones_like(backbone.stem[1].running_var))


def test_region_stage0_boxes_follow_the_flips():
    """A box drawn on an image keeps covering the same pixels under all 8 flips/rotations."""
    from ovsam.training.region_pretrain import _dihedral
    img = np.zeros((32, 32, 3), np.uint8)
    img[4:10, 20:30] = 255  # rows 4..9, columns 20..29 -> xyxy (20, 4, 30, 10)
    box = np.array([[20, 4, 30, 10]], np.float32)
    for op in range(8):
        im, b = _dihedral(img, box, op)
        x0, y0, x1, y1 = b[0].astype(int)
        assert im[y0:y1, x0:x1].min() == 255 and im.sum() == img.sum(), op


def test_region_stage0_windows_keep_boxes_on_their_objects():
    """A window of a scene holds the chosen object's box, shifted to the window
    and clipped; a box with less than half its area inside is dropped."""
    from ovsam.training.region_pretrain import _window
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:20, 10:20] = 255
    boxes = np.array([[10, 10, 20, 20], [40, 40, 64, 64]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        win, b, lab = _window(rng, img, boxes[:1], np.array([3]), 32)
        assert win.shape == (32, 32, 3) and list(lab) == [3]
        x0, y0, x1, y1 = b[0].astype(int)
        assert win[y0:y1, x0:x1].min() == 255 and win[y0:y1, x0:x1].size == 300
    for _ in range(20):  # a 16-px window never keeps both (they are 20 px apart)
        win, b, lab = _window(rng, img, boxes, np.array([3, 4]), 16)
        assert len(b) == len(lab) <= 1 and (b >= 0).all() and (b <= 16).all()


def test_region_stage0_bad_input_is_clear(scenes, tmp_path):
    from ovsam.training import train_clip_on_regions
    root, cfg, info = scenes
    ann, imgs = info['train']['ann_file'], info['train']['img_dir']
    with pytest.raises(ValueError, match='steps must be'):
        train_clip_on_regions(cfg, ann, imgs, str(tmp_path / 'c.pt'), steps=0)
    vit = dict(cfg, vision_cfg=dict(image_size=64, layers=2, width=32, patch_size=16))
    with pytest.raises(ValueError, match='ResNet CLIP'):
        train_clip_on_regions(vit, ann, imgs, str(tmp_path / 'c.pt'), steps=1)
    with pytest.raises(ValueError, match='scene_window must lie between'):
        train_clip_on_regions(cfg, ann, imgs, str(tmp_path / 'c.pt'), steps=1, scene_window=512)
    with pytest.raises(FileNotFoundError, match='cannot read image'):
        train_clip_on_regions(cfg, ann, str(tmp_path), str(tmp_path / 'c.pt'), steps=1)
    empty = tmp_path / 'empty.json'
    with open(ann) as f:
        coco = json.load(f)
    empty.write_text(json.dumps(dict(coco, annotations=[])))
    with pytest.raises(ValueError, match='no annotated objects'):
        train_clip_on_regions(cfg, str(empty), imgs, str(tmp_path / 'c.pt'), steps=1)
    assert not (tmp_path / 'c.pt').exists()
