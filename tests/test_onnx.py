"""ONNX export of the prompt-side model, checked against PyTorch.

The first tests need neither onnx nor onnxruntime: they check the export
wrapper's replacements (torchvision RoIAlign for mmcv's, vectorised mask
boxes, dense RoI level selection) against the modules the model really uses.
"""
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import ROOT, build_tiny


@pytest.fixture(scope='module')
def cfg():
    from mmengine.config import Config

    from conftest import TINY_CFG
    return Config.fromfile(TINY_CFG)


@pytest.fixture(scope='module')
def predictor(cfg):
    from ovsam.apis import OVSAMPredictor
    p = OVSAMPredictor(build_tiny(cfg, num_classes=6), clip_model_cfg=cfg.model.backbone.model_cfg)
    rgb = np.random.default_rng(0).integers(0, 256, (180, 256, 3), dtype=np.uint8)
    p.set_image(rgb)
    return p


def _prompts(n, seed=0, h=180, w=256):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, w / 2, n), y1 + rng.uniform(5, h / 2, n)], 1)
    points = np.stack([rng.uniform(0, w, (n, 3)), rng.uniform(0, h, (n, 3))], -1)
    labels = rng.integers(0, 2, (n, 3))
    return boxes.astype(np.float32), points.astype(np.float32), labels


@pytest.mark.parametrize('output_size', [7, 12])
@pytest.mark.parametrize('spatial_scale', [1 / 4, 1 / 8, 1 / 16, 1 / 32])
def test_torchvision_roi_align_equals_mmcv(output_size, spatial_scale):
    from mmcv.ops import RoIAlign

    from ovsam.apis.onnx_export import roi_align_tv
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 5, 33, 47, generator=g)
    xy = torch.rand(20, 2, generator=g) * 300 - 20
    wh = torch.rand(20, 2, generator=g) * 200
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=g).float(), xy, xy + wh], 1)
    rois = torch.cat([rois, torch.tensor([[0., 0, 0, 0, 0], [1., 5, 5, 5.5, 5.2]])])
    ref = RoIAlign(output_size, spatial_scale, sampling_ratio=0, aligned=True)(feat, rois)
    out = roi_align_tv(feat, rois, output_size, spatial_scale, 0, True)
    assert torch.allclose(out, ref, atol=1e-6)


def test_dense_mask_boxes_equal_mmdet_mask2bbox():
    from mmdet.structures.mask import mask2bbox

    from ovsam.models.common import masks_to_boxes
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, 50, generator=g) - 2.5
    logits[0] = -5  # empty
    logits[1, 3:9, 7:30] = 4
    out = masks_to_boxes(logits, 4.0)
    assert torch.equal(out, mask2bbox(logits.sigmoid() > 0.5) * 4.0)
    assert torch.equal(out[0], torch.zeros(4))


def test_roi_extractor_replacement_equals_single_roi_extractor(predictor):
    from ovsam.apis.onnx_export import PromptSideModel
    wrapper = PromptSideModel(predictor.model)
    fpn = predictor.image_state.feats.fpn_feats
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(30, 2, generator=g) * 200
    wh = torch.rand(30, 2, generator=g) ** 3 * 250  # small to large: every FPN level
    rois = torch.cat([torch.zeros(30, 1), xy, xy + wh], 1)
    sizes = torch.tensor([0., 10, 60, 120, 200, 300, 500, 900])  # levels 0..3 at finest_scale 56
    rois = torch.cat([rois, torch.stack([torch.zeros(8), 3 + sizes * 0, 5 + sizes * 0, 3 + sizes, 5 + sizes], 1)])
    head_roi = predictor.model.mask_decoder.roi
    assert set(head_roi.map_roi_levels(rois, 4).tolist()) == {0, 1, 2, 3}
    with torch.no_grad():
        assert torch.allclose(wrapper.roi_extract(fpn, rois), head_roi(fpn, rois), atol=1e-6)


def _feeds_torch(feeds):
    from ovsam.apis.onnx_export import INPUT_NAMES
    return [torch.from_numpy(feeds[k]) for k in INPUT_NAMES]


@pytest.mark.parametrize('kind', ['box', 'points', 'box+points', 'mask'])
def test_wrapper_equals_predictor_in_pytorch(predictor, kind):
    from ovsam.apis.onnx_export import PromptSideModel, onnx_prompt_inputs
    wrapper = PromptSideModel(predictor.model).eval()
    boxes, points, labels = _prompts(5)
    kw = dict(box=boxes) if kind == 'box' else dict(point_coords=points, point_labels=labels)
    if kind == 'box+points':
        kw['box'] = boxes
    if kind == 'mask':
        kw['mask_input'] = predictor.predict(box=boxes).low_res_logits
    feeds = onnx_prompt_inputs(predictor, **kw)
    with torch.no_grad():
        masks, scores, used_boxes = wrapper(*_feeds_torch(feeds))
    ref = predictor.predict_torch(*predictor.transform_prompts(kw.get('point_coords'), kw.get('point_labels'),
                                                               kw.get('box'), kw.get('mask_input')))
    assert torch.allclose(masks, ref['low_res_logits'], atol=1e-5)
    assert torch.allclose(scores, ref['scores_log'], atol=1e-4)
    assert torch.allclose(used_boxes, ref['boxes'], atol=1e-4)


@pytest.fixture(scope='module')
def onnx_file(predictor, tmp_path_factory):
    pytest.importorskip('onnx')
    from ovsam.apis.onnx_export import export_prompt_model
    path = str(tmp_path_factory.mktemp('onnx') / 'ovsam_tiny_prompt.onnx')
    export_prompt_model(predictor.model, path, class_names=predictor.class_names)
    return path


@pytest.fixture(scope='module')
def session(onnx_file):
    ort = pytest.importorskip('onnxruntime')
    return ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])


def test_onnx_graph_is_standard_and_dynamic(onnx_file, predictor):
    import onnx
    m = onnx.load(onnx_file)
    onnx.checker.check_model(m)
    assert {op.domain for op in m.opset_import} <= {'', 'ai.onnx'}  # no mmcv custom ops
    assert 'RoiAlign' in {n.op_type for n in m.graph.node}
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims['point_coords'][:2] == ['num_prompts', 'num_points']
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta['class_names']) == predictor.class_names
    assert int(meta['input_size']) == predictor.input_size


@pytest.mark.parametrize('n', [1, 7])
@pytest.mark.parametrize('kind', ['box', 'points', 'box+points', 'mask'])
def test_onnxruntime_matches_pytorch(session, predictor, n, kind):
    from ovsam.apis.onnx_export import onnx_prompt_inputs
    boxes, points, labels = _prompts(n, seed=n)
    kw = dict(box=boxes) if kind == 'box' else dict(point_coords=points, point_labels=labels)
    if kind == 'box+points':
        kw['box'] = boxes
    if kind == 'mask':
        kw = dict(point_coords=points[:, :1], mask_input=predictor.predict(box=boxes).low_res_logits)
    out_masks, out_scores, out_boxes = session.run(None, onnx_prompt_inputs(predictor, **kw))
    ref = predictor.predict_torch(*predictor.transform_prompts(kw.get('point_coords'), kw.get('point_labels'),
                                                               kw.get('box'), kw.get('mask_input')))
    assert out_masks.shape == (n, 1, 64, 64)
    assert np.allclose(out_masks, ref['low_res_logits'].numpy(), atol=1e-4)
    assert out_scores.shape == (n, predictor.num_classes + 1)
    assert np.allclose(out_scores, ref['scores_log'].numpy(), atol=1e-3)
    assert np.array_equal(out_scores[:, :-1].argmax(1), ref['labels'].numpy())
    assert np.allclose(out_boxes, ref['boxes'].numpy(), atol=1e-3)


def test_export_tool(tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    spec = importlib.util.spec_from_file_location('export_onnx',
                                                  osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'm.onnx'
    assert tool.main(['--tiny', '--out', str(out), '--out-dir', str(tmp_path / 'deploy'), '--vocabulary', 'cat',
                      'dog', '--check']) == 0
    assert out.is_file()
    assert sorted(os.listdir(tmp_path / 'deploy')) == ['image_encoder.onnx', 'manifest.json', 'prompt_decoder.onnx',
                                                       'vocabulary.npy']
    assert json.loads((tmp_path / 'deploy' / 'manifest.json').read_text())['class_names'] == ['cat', 'dog']
    with pytest.raises(SystemExit):  # neither output named
        tool.main(['--tiny'])
