"""The whole model as two ONNX graphs, run by ``ovsam_onnx`` without torch.

A tiny random model with a class split is exported (``export_deployment``);
the runtime then runs in a SUBPROCESS where importing torch, mmcv, mmdet,
mmengine, OpenCV or ovsam itself fails, on generated scenes (one resized
down, one resized up), with box, point, box+point and mask-refinement
prompts; its masks (IoU >= 0.99), labels and scores are compared with
``OVSAMPredictor`` on the same inputs here.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, build_tiny

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

BLOCKED = ('torch', 'torchvision', 'mmcv', 'mmdet', 'mmengine', 'mmpretrain', 'open_clip', 'segment_anything',
           'cv2', 'ovsam')
SITECUSTOMIZE = f'''
import sys
BLOCKED = {BLOCKED!r}
class _Blocker:
    """Makes this interpreter one without torch & co (a meta-path finder that refuses them)."""
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is blocked: the ONNX runtime must not need it')
        return None
sys.meta_path.insert(0, _Blocker())
'''
CHILD = '''
import sys
import numpy as np
for name in {blocked!r}:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f'{{name}} is importable: the blocker does not work')
from ovsam_onnx import OVSAMOnnxPredictor, PromptError
model_dir, inputs, out = sys.argv[1:4]
data = np.load(inputs)
p = OVSAMOnnxPredictor(model_dir, num_threads=1)
res = {{}}
for i in range(2):
    p.set_image(data[f'image{{i}}'])
    box, pts, lab = data[f'boxes{{i}}'], data[f'points{{i}}'], data[f'labels{{i}}']
    calls = dict(box=dict(box=box), points=dict(point_coords=pts, point_labels=lab),
                 both=dict(box=box, point_coords=pts[:, :1]))
    for kind, kw in list(calls.items()):
        o = p.predict(**kw)
        if kind == 'box':
            calls['refine'] = dict(point_coords=pts[:, :1], mask_input=o.low_res_logits)
        for field in ('masks', 'labels', 'class_probs', 'low_res_logits', 'mask_scores', 'boxes', 'topk_labels'):
            res[f'{{i}}_{{kind}}_{{field}}'] = getattr(o, field)
    o = p.predict(**calls['refine'])
    res[f'{{i}}_refine_masks'], res[f'{{i}}_refine_labels'] = o.masks, o.labels
p.set_vocabulary([p.class_names[j] for j in (4, 1, 2)])
res['subset_probs'] = p.predict(box=box).class_probs
errors = []
for kw in (dict(box=[0, 0, 10 ** 5, 10]), dict(point_coords=[[5, 5]], point_labels=[0]), dict(box=[[1, 2]])):
    try:
        p.predict(**kw)
    except PromptError as e:
        errors.append(str(e))
res['errors'] = np.array(errors)
res['modules'] = np.array(sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r}))
np.savez(out, **res)
'''.format(blocked=BLOCKED)


def _scene(size, seed, crop):
    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    img, inst = render_scene(np.random.default_rng(seed), list(SHAPE_CLASSES), image_size=size, min_objects=3,
                             max_objects=5)
    h, w = crop
    img = np.ascontiguousarray(img[:h, :w, ::-1])  # BGR -> RGB, not square
    masks = [m[:h, :w] for _, m in inst if m[:h, :w].sum() > 20]
    boxes, points = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        k = len(ys) // 2
        points.append([[xs[k], ys[k]], [0.5 * (xs.min() + xs.max()), ys.min() - 3.0]])
    points = np.clip(np.array(points, np.float32), 0, [w - 1, h - 1])
    labels = np.tile(np.array([[1, 0]]), (len(masks), 1))
    return img, np.array(boxes, np.float32), points, labels


def _torch_predictor(export_to=None):
    """The tiny model with a class split in an OVSAMPredictor; exported first
    (from its plain modules) to ``export_to`` if given."""
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.apis import OVSAMPredictor
    from ovsam.apis.onnx_export import export_deployment
    cfg = Config.fromfile(TINY_CFG)
    model = build_tiny(cfg, num_classes=6)
    model.set_class_split([0, 2], [1, 3, 4])  # class 5 excluded, 1 / 3 / 4 novel
    manifest = None if export_to is None else export_deployment(model, export_to)
    return OVSAMPredictor(model, clip_model_cfg=cfg.model.backbone.model_cfg), manifest


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp('deploy'))
    pred, manifest = _torch_predictor(out_dir)
    return pred, out_dir, manifest


def _calls(boxes, points, labels):
    return dict(box=dict(box=boxes), points=dict(point_coords=points, point_labels=labels),
                both=dict(box=boxes, point_coords=points[:, :1]))


@pytest.fixture(scope='module')
def refs(exported, runs):
    """OVSAMPredictor's answers on the same scenes and prompts (image side run once per scene)."""
    pred, _, _ = exported
    out = []
    for img, boxes, points, labels in runs[0]:
        pred.set_image(img)
        res = {kind: pred.predict(**kw) for kind, kw in _calls(boxes, points, labels).items()}
        res['refine'] = pred.predict(point_coords=points[:, :1], mask_input=res['box'].low_res_logits)
        out.append(res)
    return out


@pytest.fixture(scope='module')
def runs(exported, tmp_path_factory):
    """The torch-free runtime's answers (subprocess) and the inputs they are for."""
    pred, out_dir, _ = exported
    tmp = tmp_path_factory.mktemp('child')
    scenes = [_scene(320, 3, (320, 230)), _scene(128, 5, (100, 128))]  # resized down; resized up
    arrays = {}
    for i, (img, boxes, points, labels) in enumerate(scenes):
        arrays.update({f'image{i}': img, f'boxes{i}': boxes, f'points{i}': points, f'labels{i}': labels})
    np.savez(tmp / 'inputs.npz', **arrays)
    (tmp / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), osp.join(ROOT, 'projects')]),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', CHILD, out_dir, str(tmp / 'inputs.npz'), str(tmp / 'out.npz')],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return scenes, dict(np.load(tmp / 'out.npz'))


def _iou(a, b):
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def test_runtime_never_imported_torch_or_its_stack(runs):
    _, res = runs
    assert res['modules'].tolist() == []


@pytest.mark.parametrize('i', [0, 1])
@pytest.mark.parametrize('kind', ['box', 'points', 'both'])
def test_runtime_matches_pytorch_predictor(runs, refs, i, kind):
    (img, boxes, _, _), res = runs[0][i], runs[1]
    ref = refs[i][kind]
    got = {f: res[f'{i}_{kind}_{f}'] for f in ('masks', 'labels', 'class_probs', 'low_res_logits', 'mask_scores',
                                               'boxes', 'topk_labels')}
    assert got['masks'].shape == ref.masks.shape == (len(boxes), ) + img.shape[:2]
    assert got['masks'].dtype == bool
    assert ref.masks.any((1, 2)).all()  # real masks, not empty ones that agree trivially
    assert _iou(got['masks'], ref.masks).min() >= 0.99
    np.testing.assert_array_equal(got['labels'], ref.labels)
    np.testing.assert_array_equal(got['topk_labels'], ref.topk_labels)
    np.testing.assert_allclose(got['class_probs'], ref.class_probs, atol=1e-4)
    np.testing.assert_allclose(got['low_res_logits'], ref.low_res_logits, atol=1e-3)
    np.testing.assert_allclose(got['mask_scores'], ref.mask_scores, atol=1e-3)
    np.testing.assert_allclose(got['boxes'], ref.boxes, atol=1e-3)
    assert (ref.class_probs[:, 5] < 1e-30).all()  # the exported split: class 5 is excluded


@pytest.mark.parametrize('i', [0, 1])
def test_runtime_mask_refinement_matches(runs, refs, i):
    res, ref = runs[1], refs[i]['refine']
    assert _iou(res[f'{i}_refine_masks'], ref.masks).min() >= 0.99
    np.testing.assert_array_equal(res[f'{i}_refine_labels'], ref.labels)


def test_runtime_vocabulary_subset_matches(runs):
    (img, boxes, _, _), res = runs[0][1], runs[1]
    pred, _ = _torch_predictor()  # the same weights; its vocabulary changes here
    keep = [4, 1, 2]
    pred.set_vocabulary([pred.class_names[j] for j in keep], embeddings=pred.vocabulary_embeddings()[keep])
    pred.set_image(img)
    ref = pred.predict(box=boxes)
    assert ref.class_probs.shape == (len(boxes), 3)
    np.testing.assert_allclose(res['subset_probs'], ref.class_probs, atol=1e-4)


def test_runtime_errors_name_the_problem(runs):
    _, res = runs
    errors = res['errors'].tolist()
    assert len(errors) == 3
    assert 'box 0' in errors[0] and 'outside the image' in errors[0]
    assert 'no foreground point' in errors[1]
    assert 'box must have shape (4,) or (N, 4)' in errors[2]


def test_manifest_and_graphs(exported):
    import onnx

    from ovsam_onnx import layout
    pred, out_dir, manifest = exported
    assert sorted(os.listdir(out_dir)) == sorted([layout.MANIFEST, layout.IMAGE_ENCODER, layout.PROMPT_DECODER,
                                                  layout.VOCABULARY])
    with open(osp.join(out_dir, layout.MANIFEST)) as f:
        assert json.load(f) == manifest
    assert manifest['class_names'] == pred.class_names
    assert manifest['seen_classes'] == [0, 2] and manifest['allowed_classes'] == [0, 1, 2, 3, 4]
    assert manifest['input_size'] == pred.input_size == 256
    assert manifest['preprocessing']['pixel_mean'] == pytest.approx([123.675, 116.28, 103.53])
    emb = np.load(osp.join(out_dir, layout.VOCABULARY))
    np.testing.assert_allclose(emb, pred.vocabulary_embeddings().numpy(), atol=1e-7)
    for name, inputs, outputs in [
            (layout.IMAGE_ENCODER, layout.IMAGE_INPUTS, layout.FEATURE_NAMES),
            (layout.PROMPT_DECODER, layout.FEATURE_NAMES + layout.PROMPT_NAMES + layout.VOCABULARY_NAMES,
             layout.PROMPT_OUTPUTS)]:
        m = onnx.load(osp.join(out_dir, name))
        onnx.checker.check_model(m)
        assert {op.domain for op in m.opset_import} <= {'', 'ai.onnx'}  # no custom ops
        assert [i.name for i in m.graph.input] == inputs and [o.name for o in m.graph.output] == outputs
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims['class_embed'][1:] == ['num_classes_bg', 'num_synonyms']
    assert dims['point_coords'][:2] == ['num_prompts', 'num_points']


def test_resize_is_opencvs_bilinear():
    import cv2

    from ovsam_onnx.image import resize_bilinear, resize_longest_side
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 7), (9, 1), (512, 256), (100, 77), (333, 500), (2000, 1500), (37, 300)]
    sizes += [tuple(s) for s in rng.integers(1, 700, (12, 2))]
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for size in (256, 1024):
            resized, meta = resize_longest_side(img, size)
            nh, nw = meta['img_shape']
            assert max(nh, nw) == size
            ref = img if (nh, nw) == (h, w) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(resized, ref.reshape(nh, nw, 3).astype(np.float32), err_msg=str((h, w)))
    img = rng.random((90, 61, 3), dtype=np.float32) * 255
    ref = cv2.resize(img, (256, 377), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(resize_bilinear(img, 256, 377), ref, atol=0.05)


def test_image_conversion_follows_the_predictors_rules():
    from PIL import Image

    from ovsam.apis.inputs import image_to_rgb as torch_rule
    from ovsam_onnx.image import image_to_rgb
    rng = np.random.default_rng(1)
    cases = [rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), rng.integers(0, 256, (5, 6), dtype=np.uint8),
             rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), rng.integers(0, 65536, (5, 6), dtype=np.uint16),
             rng.random((5, 6, 3)), rng.random((5, 6, 3)) > 0.5, Image.fromarray(rng.integers(0, 256, (5, 6),
                                                                                               dtype=np.uint8), 'L')]
    for x in cases:
        for fmt in ('RGB', 'BGR'):
            np.testing.assert_array_equal(image_to_rgb(x, fmt), torch_rule(x, fmt))
    for bad, text in [(None, 'is None'), ('a.png', 'path'), (np.zeros((2, 4, 4, 3)), 'batch'),
                      (np.zeros((4, 4, 2)), '1, 3 or 4 channels'), (np.full((3, 3), 2.0), r'\[0, 1\]'),
                      (np.zeros((0, 3, 3), np.uint8), 'empty')]:
        with pytest.raises(ValueError, match=text):
            image_to_rgb(bad)


def test_runtime_bad_inputs_in_process(exported, tmp_path):
    from ovsam_onnx import OVSAMOnnxPredictor, PromptError, load_manifest
    _, out_dir, manifest = exported
    with pytest.raises(FileNotFoundError, match='no manifest.json'):
        load_manifest(str(tmp_path))
    (tmp_path / 'manifest.json').write_text(json.dumps(dict(manifest, format_version=99)))
    with pytest.raises(ValueError, match='format version 99'):
        load_manifest(str(tmp_path))
    (tmp_path / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match='image_encoder file .* is missing'):
        load_manifest(str(tmp_path))
    p = OVSAMOnnxPredictor(out_dir, num_threads=1)
    with pytest.raises(RuntimeError, match='no image set'):
        p.predict(box=[0, 0, 5, 5])
    p.set_image(np.zeros((40, 50, 3), np.uint8))
    for kw, exc, text in [
            (dict(), PromptError, 'no prompt'),
            (dict(box=[5, 5, 1, 1]), PromptError, 'degenerate'),
            (dict(point_coords=[[1, np.nan]]), PromptError, 'NaN'),
            (dict(point_coords=[[1, 2]], point_labels=[3]), PromptError, 'must be 1 .foreground.'),
            (dict(box=[[0, 0, 5, 5]] * 2, point_coords=[[[1, 1]]]), PromptError, 'prompt counts differ'),
            (dict(point_coords=[[1, 2]], mask_input=np.zeros((1, 1, 8, 8))), PromptError, r'\(N, 1, 64, 64\)'),
            (dict(box=[0, 0, 5, 5], multimask_output=True), ValueError, 'one mask per prompt'),
            (dict(box=[0, 0, 5, 5], top_k=0), ValueError, 'top_k must be'),
            (dict(box=[0, 0, 5, 5], return_logits='yes'), ValueError, 'return_logits must be True or False')]:
        with pytest.raises(exc, match=text):
            p.predict(**kw)
    out = p.predict(box=[0, 0, 5, 5], top_k=None, return_logits=True)
    assert out.topk_labels.shape == (1, 6) and out.logits.shape == (1, 40, 50)
    np.testing.assert_array_equal(out.masks, out.logits > 0)
    with pytest.raises(KeyError, match='cannot embed new names'):
        p.set_vocabulary(['zebra'])
    with pytest.raises(ValueError, match='width 3 but this model needs 64'):
        p.set_vocabulary(['zebra'], embeddings=np.ones((1, 3)))
    exported_vocab = p.vocabulary
    p.set_vocabulary(['zebra', 'okapi'], embeddings=np.random.default_rng(0).normal(size=(2, 64)))
    assert p.predict(box=[0, 0, 5, 5]).class_probs.shape == (1, 2)
    # pinned image and vocabulary answer for themselves, not for the current ones
    state = p.compute_image_state(np.full((30, 20), 200, np.uint8))
    pinned = p.predict(box=[0, 0, 5, 5], image_state=state, vocabulary=exported_vocab)
    assert pinned.masks.shape == (1, 30, 20) and pinned.class_probs.shape == (1, 6)
    assert p.original_size == (40, 50)
    with pytest.raises(TypeError, match='image_state must be an OnnxImageState'):
        p.predict(box=[0, 0, 5, 5], image_state='x')
    p.set_vocabulary()
    assert p.class_names == manifest['class_names']


def test_export_refuses_a_flat_vocabulary_with_a_fix(tmp_path):
    """A vocabulary held one row per synonym (large vocabularies) is not what
    the graphs take: the export says so and how to export instead, and
    writes nothing."""
    import torch
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.apis.onnx_export import export_deployment
    model = build_tiny(Config.fromfile(TINY_CFG), num_classes=4)
    clf = model.mask_decoder.classifier
    emb = torch.randn(4, 2, clf.cls_embed.shape[0])
    clf.layout = 'flat'
    clf.set_vocabulary(emb)
    assert clf.flat
    with pytest.raises(ValueError, match="flat .*layout='padded'"):
        export_deployment(model, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')
