"""Bad and edge inputs for every public entry point of the predictor and the
automatic generator: each gives the right result, or an exception of the right
type whose message names the input and says what to do."""
import math

import numpy as np
import pytest
import torch

from conftest import build_tiny

H, W = 40, 60


@pytest.fixture(scope='module')
def pred():
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.apis import OVSAMPredictor
    cfg = Config.fromfile(TINY_CFG)
    p = OVSAMPredictor(build_tiny(cfg, num_classes=4), clip_model_cfg=cfg.model.backbone.model_cfg,
                       allow_random_text=True)
    p.set_image(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return p


@pytest.fixture
def fresh(pred):
    """The shared predictor with its image and 4-class vocabulary back in place."""
    state = pred.image_state
    emb = torch.randn(4, 2, 64, generator=torch.Generator().manual_seed(1))
    pred.set_vocabulary([f'class{i}' for i in range(4)], embeddings=emb)
    yield pred
    pred.restore_image_state(state)


# ------------------------------------------------------------------ set_image
class Weird:
    pass


@pytest.mark.parametrize('image,match', [
    (np.zeros((0, 10, 3), np.uint8), 'empty'),
    (np.zeros((10, 0), np.uint8), 'empty'),
    (np.zeros((5, 5, 2), np.uint8), '1, 3 or 4 channels.*transposed'),
    (np.zeros((5, 5, 5), np.uint8), '1, 3 or 4 channels'),
    (np.zeros((3, 20, 20), np.uint8), 'channels.*transposed'),
    (np.zeros((2, 5, 5, 3), np.uint8), 'batch.*one'),
    (np.zeros((5, ), np.uint8), 'H x W'),
    (np.array(3), 'H x W'),
    (np.zeros((4, 4, 3), np.complex64), 'complex.*real'),
    (np.array([[1, 'a']], dtype=object), 'dtype object'),
    (np.array([['a', 'b']]), 'dtype <U1'),
    (np.full((4, 4, 3), np.nan, np.float32), 'NaN or Inf.*nan_to_num'),
    (np.full((4, 4), np.inf), 'NaN or Inf'),
    (np.full((4, 4, 3), 2.0), r'\[0, 1\].*divide'),
    (np.full((4, 4, 3), -0.5, np.float32), r'\[0, 1\]'),
    (np.full((4, 4), 300, np.int32), 'uint16 for 16-bit'),
    (np.full((4, 4), -1, np.int16), '0..255'),
    ('photo.jpg', 'path.*read the file'),
    (b'\x89PNG', 'path or bytes'),
    (None, 'None'),
    (Weird(), 'H x W|dtype object'),
    ([[1, 2], [3]], 'array|dtype object'),
])
def test_set_image_rejects(pred, image, match):
    state = pred.image_state
    with pytest.raises(ValueError, match=match) as e:
        pred.set_image(image)
    assert 'image' in str(e.value)
    assert pred.image_state is state  # the previous image stays


def test_set_image_bad_format(pred):
    for fmt in ('HSV', 'rgb ', None, 3):
        with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR'"):
            pred.set_image(np.zeros((4, 4, 3), np.uint8), fmt)


def test_16bit_and_float_pil_images_are_scaled_not_clipped(pred):
    from PIL import Image
    from ovsam.apis import image_to_rgb
    ramp = np.linspace(0, 65535, 24, dtype=np.float64).reshape(4, 6)
    u16 = np.rint(ramp).astype(np.uint16)
    want = u16.astype(np.float64) * 255 / 65535
    for img in (u16, Image.fromarray(u16), Image.fromarray(u16.astype(np.int32)),
                Image.fromarray(u16.astype('>u2').tobytes() and u16, 'I;16')):
        out = image_to_rgb(img)
        assert out.shape == (4, 6, 3)
        np.testing.assert_allclose(out[..., 0], want, atol=1e-3)
        assert out.max() > 250  # not clipped to 255 everywhere, not blacked out
        assert len(np.unique(out[..., 0])) == 24
    f = (ramp / 65535).astype(np.float32)
    np.testing.assert_allclose(image_to_rgb(Image.fromarray(f, 'F'))[..., 1], f * 255, atol=1e-3)
    np.testing.assert_allclose(image_to_rgb(Image.fromarray(f * 255, 'F'))[..., 1], f * 255, atol=1e-3)
    with pytest.raises(ValueError, match="PIL 'F'.*holds"):
        image_to_rgb(Image.fromarray(f * 1000, 'F'))
    with pytest.raises(ValueError, match='16-bit range'):
        image_to_rgb(Image.fromarray(np.full((3, 3), 70000, np.int32)))
    # 1-bit, palette, LA, CMYK: PIL's own RGB conversion
    assert image_to_rgb(Image.new('1', (3, 2), 1)).tolist() == [[[255] * 3] * 3] * 2
    assert image_to_rgb(Image.new('CMYK', (2, 2), (0, 0, 0, 0))).dtype == np.uint8
    assert image_to_rgb(Image.new('LA', (2, 2), (10, 3)))[0, 0].tolist() == [10, 10, 10]
    # a 16-bit image predicts like its 8-bit rendering
    st16 = pred.compute_image_state(u16)
    assert st16.image.dtype == np.float32 and st16.image.max() == pytest.approx(255, abs=1e-3)


def test_the_callers_array_is_copied(pred):
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    state = pred.compute_image_state(img)
    before = pred.predict(box=[5, 5, 30, 30], image_state=state)
    assert not np.shares_memory(state.image, img)
    img[:] = 0  # the caller reuses the buffer
    after = pred.predict(box=[5, 5, 30, 30], image_state=state)
    np.testing.assert_array_equal(before.low_res_logits, after.low_res_logits)
    assert state.image.max() > 0
    with pytest.raises(ValueError, match='read-only'):
        state.image[0, 0, 0] = 1
    with pytest.raises(TypeError):
        state.meta['ori_shape'] = (1, 1)
    t = torch.randint(0, 256, (H, W, 3), dtype=torch.uint8)
    st2 = pred.compute_image_state(t)
    t.zero_()
    assert st2.image.max() > 0


@pytest.mark.parametrize('shape', [(1, 1), (1, 7), (7, 1), (3, 3)])
def test_tiny_images_predict_and_segment_with_crops(pred, shape):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    state = pred.image_state
    img = np.random.default_rng(2).integers(0, 256, shape + (3, ), dtype=np.uint8)
    h, w = shape
    out = pred.predict(box=[0, 0, w, h], image_state=pred.compute_image_state(img))
    assert out.masks.shape == (1, h, w)
    gen = OVSAMAutomaticMaskGenerator(pred, points_per_side=2, crop_n_layers=1, stability_score_thresh=0,
                                      min_mask_region_area=1)
    recs = gen.generate(img)
    assert all(r['segmentation'].shape == shape for r in recs)
    assert all(0 <= r['bbox'][0] <= w and 0 <= r['bbox'][1] <= h for r in recs)
    assert pred.image_state.meta['ori_shape'] == shape  # the whole image, never a crop
    pred.restore_image_state(state)


# ------------------------------------------------------------------ predict
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize('kwargs,match', [
    (dict(box=[1 + 2j, 2, 30, 30]), 'box holds complex'),
    (dict(point_coords=np.array([[5 + 1j, 5]])), 'point_coords holds complex'),
    (dict(box=[1e30, 2, 2e30, 30]), 'box 0 .* outside the image'),
    (dict(box=[-1e30, 2, 3, 30]), 'outside the image'),
    (dict(point_coords=[[1e30, 5]]), 'point_coords: point 0 of prompt 0 .* outside'),
    (dict(point_coords=[[3e38, 5]]), 'outside'),
    (dict(box=[1, 2, 30, INF]), 'box contains NaN or Inf'),
    (dict(box=[NAN, 2, 30, 30]), 'box contains NaN'),
    (dict(point_coords=[[NAN, 5]]), 'point_coords contains NaN'),
    (dict(point_coords=[[5, 5]], point_labels=[NAN]), 'point_labels contains NaN'),
    (dict(point_coords=[[5, 5], [9, 9]], point_labels=[0, 0]), 'no foreground point.*label 1'),
    (dict(point_coords=[[5, 5]], point_labels=[-1]), 'no foreground point'),
    (dict(point_coords=[[[5, 5]], [[6, 6]]], point_labels=[[1], [0]]), 'prompt 1 has no foreground'),
    (dict(point_coords=[[5, 5]], point_labels=[2]), r'point_labels must be 1.*got values \[2.0\]'),
    (dict(point_coords=[[5, 5]], point_labels=[0.5]), 'point_labels must be 1'),
    (dict(point_coords=[[5, 5]], point_labels=['1']), 'point_labels must be numeric'),
    (dict(point_coords=[[5, 5]], point_labels=[1, 1]), r'point_labels must have shape.*one label per point'),
    (dict(point_coords=[[[5, 5]], [[6, 6]]], point_labels=[1, 1]), 'point_labels must have shape'),
    (dict(point_labels=[1]), 'point_labels given without point_coords'),
    (dict(point_coords=[5, 5]), r'point_coords must have shape .*one point is \[\[x, y\]\]'),
    (dict(point_coords=np.zeros((1, 0, 2))), 'zero points per prompt'),
    (dict(point_coords=np.zeros((0, 1, 2))), 'zero prompts'),
    (dict(point_coords=np.zeros((1, 1, 3))), 'point_coords must have shape'),
    (dict(point_coords=[[True, False]]), 'point_coords holds booleans'),
    (dict(point_coords=[[5, None]]), 'point_coords holds None'),
    (dict(point_coords=[[5, 'a']]), 'point_coords must be numeric'),
    (dict(point_coords=[[5, 5], [6]]), 'point_coords could not be read|numbers only'),
    (dict(point_coords='5,5'), 'point_coords must be numeric'),
    (dict(box=[30, 2, 10, 30]), 'degenerate boxes.*not x, y, w, h'),
    (dict(box=[1, 2, 1, 30]), 'degenerate'),
    (dict(box=np.zeros((0, 4))), 'zero prompts'),
    (dict(box=[[1, 2, 30]]), r'box must have shape \(4,\) or \(N, 4\)'),
    (dict(box=np.zeros((1, 1, 4))), 'box must have shape'),
    (dict(box=[[True, True, True, True]]), 'booleans'),
    (dict(box=[[1, 2, 30, 30]] * 2, point_coords=[[[5, 5]]] * 3), 'prompt counts differ.*box has 2'),
    (dict(mask_input=np.zeros((1, 1, 16, 16))), r'mask_input must be low-res logits of shape \(N, 1, 64, 64\)'),
    (dict(mask_input=np.full((1, 1, 64, 64), 1e9)), 'mask_input holds values up to 1e\\+09.*clip'),
    (dict(mask_input=np.full((1, 1, 64, 64), NAN)), 'mask_input contains NaN'),
    (dict(mask_input=np.zeros((0, 1, 64, 64))), 'mask_input holds zero prompts'),
    (dict(), 'no prompt: give point_coords, box'),
    (dict(box=[1, 2, 30, 30], top_k=0), 'top_k must be >= 1'),
    (dict(box=[1, 2, 30, 30], top_k=-3), 'top_k must be >= 1'),
    (dict(box=[1, 2, 30, 30], top_k=2.5), 'top_k must be an integer'),
    (dict(box=[1, 2, 30, 30], top_k=True), 'top_k must be an integer'),
    (dict(box=[1, 2, 30, 30], top_k='3'), 'top_k must be an integer'),
    (dict(box=[1, 2, 30, 30], multimask_output=True), 'multimask_output=False'),
])
def test_predict_rejects(fresh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fresh.predict(**kwargs)


def test_predict_edge_cases_with_defined_results(fresh):
    p = fresh
    out = p.predict(box=[1, 2, 30, 30], top_k=None)  # None: every class
    assert out.topk_labels.shape == (1, 4) and sorted(out.topk_labels[0].tolist()) == [0, 1, 2, 3]
    assert p.predict(box=[1, 2, 30, 30], top_k=100).topk_labels.shape == (1, 4)  # capped at K
    assert p.predict(box=[1, 2, 30, 30], top_k=np.int64(2)).topk_labels.shape == (1, 2)
    # background points next to a box or a mask input are fine
    bg = p.predict(box=[1, 2, 30, 30], point_coords=[[40, 5]], point_labels=[0])
    assert len(bg) == 1
    assert len(p.predict(point_coords=[[40, 5]], point_labels=[0], mask_input=out.low_res_logits)) == 1
    # booleans as point labels: True = foreground, False = background
    a = p.predict(point_coords=[[10, 10], [20, 20]], point_labels=[True, False])
    b = p.predict(point_coords=[[10, 10], [20, 20]], point_labels=[1, 0])
    np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
    # points and boxes on the border (and a pixel beyond) are in; tensors and lists agree
    edge = p.predict(box=torch.tensor([0., 0., W + 1, H + 1], dtype=torch.float64))
    assert edge.boxes.tolist() == [[0, 0, W, H]]
    np.testing.assert_array_equal(p.predict(box=[[0, 0, W + 1, H + 1]]).low_res_logits, edge.low_res_logits)
    # the caller's prompt arrays are not kept or changed
    pts = np.array([[10., 10.]])
    p.predict(point_coords=pts)
    assert pts.tolist() == [[10., 10.]]


def test_predict_pins(fresh):
    p = fresh
    with pytest.raises(TypeError, match='image_state must be an ImageState'):
        p.predict(box=[1, 2, 3, 4], image_state=np.zeros((4, 4, 3)))
    with pytest.raises(TypeError, match='vocabulary must be a VocabularyState.*set_vocabulary'):
        p.predict(box=[1, 2, 3, 4], vocabulary=['cat'])
    with pytest.raises(TypeError, match='ImageState'):
        p.restore_image_state('state')
    from ovsam.apis import OVSAMPredictor
    empty = OVSAMPredictor(p.model, fast=False)
    with pytest.raises(RuntimeError, match='no image set: call set_image'):
        empty.predict(box=[1, 2, 3, 4])


# ------------------------------------------------------------------ predict_torch
@pytest.mark.parametrize('kwargs,match', [
    (dict(boxes=torch.tensor([[1., NAN, 30., 30.]])), 'boxes contains NaN'),
    (dict(boxes=torch.tensor([[1., 2., 30., INF]])), 'boxes contains NaN or Inf'),
    (dict(boxes=torch.tensor([[30., 2., 10., 30.]])), 'boxes: degenerate'),
    (dict(boxes=torch.tensor([[1., 2., 1e6, 30.]])), "outside the image inside the model's input frame"),
    (dict(boxes=torch.tensor([1., 2., 30.])), 'boxes must have shape'),
    (dict(boxes=torch.tensor([[1 + 1j, 2, 30, 30]])), 'boxes holds complex'),
    (dict(point_coords=torch.tensor([[[5., 5.]]]), point_labels=torch.tensor([[0]])), 'no foreground'),
    (dict(point_coords=torch.tensor([[[5., 5.]]]), point_labels=torch.tensor([[1, 1]])), 'point_labels'),
    (dict(point_coords=torch.tensor([[[5., NAN]]])), 'point_coords contains NaN'),
    (dict(mask_input=torch.zeros(1, 1, 8, 8)), 'mask_input must be low-res logits'),
    (dict(), 'no prompt: give point_coords, boxes'),
    (dict(boxes=torch.tensor([[1., 2., 30., 30.]]), top_k=0), 'top_k must be >= 1'),
])
def test_predict_torch_rejects(fresh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fresh.predict_torch(**kwargs)


def test_predict_torch_equals_predict(fresh):
    p = fresh
    sx, sy = p.scale_factor
    a = p.predict(box=[3, 4, 30, 33], top_k=None)
    b = p.predict_torch(boxes=torch.tensor([[3 * sx, 4 * sy, 30 * sx, 33 * sy]]), top_k=None)
    np.testing.assert_allclose(b['class_probs'].numpy(), a.class_probs, rtol=1e-6)
    c = p.predict_torch(boxes=np.array([[3 * sx, 4 * sy, 30 * sx, 33 * sy]]), top_k=None)  # numpy works too
    np.testing.assert_allclose(c['class_probs'].numpy(), a.class_probs, rtol=1e-6)


# ------------------------------------------------------------------ vocabularies
@pytest.mark.parametrize('seen,exc,match', [
    ([True], ValueError, 'boolean True: booleans are not class indices'),
    ([0, False], ValueError, 'booleans are not'),
    (np.array([True, False, True]), ValueError, 'boolean mask'),
    ([3], ValueError, r'class index 3 is not in the vocabulary \(0..2\)'),
    ([-1], ValueError, 'class index -1 is not in the vocabulary'),
    (['dog'], ValueError, "class 'dog' is not in the vocabulary"),
    ([0, 'a'], ValueError, "class 'a' \\(index 0\\) is given twice"),
    ([1, 1], ValueError, 'given twice'),
    ([1.0], ValueError, 'neither a class index'),
    ([None], ValueError, 'neither a class index'),
    (5, TypeError, 'seen_classes must be a list'),
])
def test_seen_classes_rejected(fresh, seen, exc, match):
    vocab = fresh.vocabulary
    with pytest.raises(exc, match=match):
        fresh.set_vocabulary(['a', 'b', 'c'], embeddings=torch.randn(3, 1, 64), seen_classes=seen)
    assert fresh.vocabulary is vocab


def test_seen_classes_accepted_forms(fresh):
    m = fresh.model
    fresh.set_vocabulary(['a', 'b', 'c'], embeddings=torch.randn(3, 1, 64), seen_classes=[np.int64(2), 'A'])
    assert m.base_classes == [2, 0] and m.novel_classes is None
    fresh.set_vocabulary(['a', 'b', 'c'], embeddings=torch.randn(3, 1, 64), seen_classes='b')
    assert m.base_classes == [1]
    fresh.set_vocabulary(['a', 'b', 'c'], embeddings=torch.randn(3, 1, 64), seen_classes=torch.tensor([0]))
    assert m.base_classes == [0]


@pytest.mark.parametrize('names,emb,exc,match', [
    (['a', 'b'], torch.randn(3, 1, 64), ValueError, 'hold 3 classes x 1 synonyms for 2 class names'),
    (['a', 'b'], torch.randn(2, 1, 32), ValueError, 'another CLIP model'),
    (['a', 'b'], torch.randn(2, 0, 64), ValueError, 'one row .* per name'),
    (['a', 'b'], torch.full((2, 1, 64), NAN), ValueError, 'NaN or Inf'),
    (['a', 'b'], torch.zeros(2, 1, 64), ValueError, 'all zero'),
    (['a', 'b'], torch.randint(0, 3, (2, 1, 64)), ValueError, 'float tensor'),
    (['a', 'b'], 'emb', ValueError, 'embeddings must be'),
    (['a', 'A '], torch.randn(2, 1, 64), ValueError, 'duplicate'),
    ([], torch.randn(0, 1, 64), ValueError, 'empty vocabulary'),
    (None, None, TypeError, 'None'),
    ([1, 2], torch.randn(2, 1, 64), TypeError, 'strings'),
    (['# comment'], torch.randn(1, 1, 64), ValueError, 'comment'),
])
def test_set_vocabulary_rejects(fresh, names, emb, exc, match):
    vocab = fresh.vocabulary
    buf = fresh.model.mask_decoder.classifier.cls_embed
    with pytest.raises(exc, match=match):
        fresh.set_vocabulary(names, embeddings=emb)
    assert fresh.vocabulary is vocab and fresh.model.mask_decoder.classifier.cls_embed is buf


def test_set_vocabulary_file_and_spec_errors(fresh, tmp_path):
    vocab = fresh.vocabulary
    with pytest.raises(FileNotFoundError):
        fresh.set_vocabulary_file(str(tmp_path / 'missing.pth'))
    from ovsam.vocabulary import save_text_embeddings
    path = str(tmp_path / 'v.pth')
    save_text_embeddings(path, torch.randn(2, 1, 64), ['x', 'y'])
    with pytest.raises(ValueError, match='booleans are not'):
        fresh.set_vocabulary_file(path, seen_classes=[True])
    assert fresh.vocabulary is vocab
    fresh.set_vocabulary_file(path, seen_classes=['y'])
    assert fresh.class_names == ['x', 'y'] and fresh.model.base_classes == [1]


def test_add_class_and_find_class(fresh):
    p = fresh
    with pytest.raises(TypeError, match='strings'):
        p.add_class(3)
    with pytest.raises(TypeError):
        p.add_class(None)
    with pytest.raises(ValueError, match='no usable synonym'):
        p.add_class(' , ')
    with pytest.raises(ValueError, match='line break'):
        p.add_class('cat\ndog')
    with pytest.raises(TypeError, match='query must be a class name'):
        p.find_class(5)
    assert p.add_class('CLASS2') == 2 and p.num_classes == 4  # an existing synonym
    assert p.add_class('zebra') == 4 and p.class_names[-1] == 'zebra'
    assert p.find_class('Zebra') == 4


def test_direct_model_changes_are_adopted(fresh):
    """Changing the model's classifier directly takes effect, and the result says so."""
    p = fresh
    p.model.mask_decoder.classifier.set_vocabulary(torch.randn(2, 1, 64), ['u', 'v'])
    out = p.predict(box=[1, 2, 30, 30])
    assert out.vocabulary.class_names == ('u', 'v') and out.class_probs.shape == (1, 2)
    assert p.class_names == ['u', 'v']


# ------------------------------------------------------------------ automatic generator
@pytest.mark.parametrize('kwargs,match', [
    (dict(crop_n_layers=-1), 'crop_n_layers must be >= 0'),
    (dict(crop_n_layers=1.5), 'crop_n_layers must be an integer'),
    (dict(crop_n_layers=True), 'crop_n_layers must be an integer'),
    (dict(crop_n_layers=20), 'crops; use at most a few'),
    (dict(points_per_side=0), 'points_per_side must be >= 1'),
    (dict(points_per_side=-4), 'points_per_side must be >= 1'),
    (dict(points_per_side=2.5), 'points_per_side must be an integer'),
    (dict(points_per_side=100000), 'points_per_side=100000'),
    (dict(points_per_side=None), 'exactly one of points_per_side and point_grids'),
    (dict(point_grids=[np.array([[0.5, 0.5]])]), 'exactly one'),
    (dict(points_per_side=None, point_grids=np.array([[0.5, 0.5]])), 'wrap a single grid in a list'),
    (dict(points_per_side=None, point_grids=[np.array([[1.5, 0.5]])]), r'in \[0, 1\].*divide pixel'),
    (dict(points_per_side=None, point_grids=[np.array([[-0.1, 0.5]])]), r'in \[0, 1\]'),
    (dict(points_per_side=None, point_grids=[np.array([[np.nan, 0.5]])]), 'NaN'),
    (dict(points_per_side=None, point_grids=[np.array([0.5, 0.5, 0.2])]), r'shape \(M, 2\)'),
    (dict(points_per_side=None, point_grids=[np.zeros((4, 3))]), r'shape \(M, 2\)'),
    (dict(points_per_side=None, point_grids=[np.zeros((0, 2))]), 'M >= 1'),
    (dict(points_per_side=None, point_grids=[[['a', 'b']]]), r'point_grids\[0\] must be an \(M, 2\) array'),
    (dict(points_per_side=None, point_grids=[np.zeros((1, 2))], crop_n_layers=1), 'need 2 point grids'),
    (dict(points_per_side=None, point_grids=5), 'list of \\(M, 2\\) arrays'),
    (dict(pred_iou_thresh=0.5), 'unexpected keyword'),
    (dict(stability_score_thresh=NAN), 'stability_score_thresh must be a finite number'),
    (dict(stability_score_thresh='0.9'), 'stability_score_thresh must be a number'),
    (dict(stability_score_offset=-1), 'stability_score_offset must be a finite number >= 0'),
    (dict(mask_confidence_thresh=INF), 'mask_confidence_thresh'),
    (dict(class_score_thresh=NAN), 'class_score_thresh'),
    (dict(box_nms_thresh=1.5), r'box_nms_thresh must be a finite number in \[0, 1\].*IoU'),
    (dict(crop_nms_thresh=NAN), 'crop_nms_thresh'),
    (dict(crop_overlap_ratio=1.0), 'crop_overlap_ratio must be < 1'),
    (dict(crop_overlap_ratio=-0.1), 'crop_overlap_ratio'),
    (dict(crop_n_points_downscale_factor=0), 'crop_n_points_downscale_factor must be >= 1'),
    (dict(crop_n_points_downscale_factor=8, crop_n_layers=1, points_per_side=4), 'leaves no grid point'),
    (dict(points_per_batch=0), 'points_per_batch must be >= 1'),
    (dict(min_mask_region_area=-5), 'min_mask_region_area must be >= 0'),
    (dict(min_mask_region_area=NAN), 'min_mask_region_area must be an integer'),
    (dict(output_mode='rle'), "output_mode must be 'binary_mask'"),
    (dict(top_k=0), 'top_k must be >= 1'),
])
def test_generator_constructor_rejects(pred, kwargs, match):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    with pytest.raises((ValueError, TypeError), match=match):
        OVSAMAutomaticMaskGenerator(pred, **kwargs)


def test_generator_generate_and_find(fresh):
    from ovsam.apis import OVSAMAutomaticMaskGenerator, OVSAMPredictor
    with pytest.raises(TypeError, match='predictor must be an OVSAMPredictor'):
        OVSAMAutomaticMaskGenerator(object())
    gen = OVSAMAutomaticMaskGenerator(fresh, points_per_side=2, stability_score_thresh=0, top_k=None)
    state = fresh.image_state
    for bad, match in ((np.zeros((0, 3, 3)), 'empty'), (np.zeros((4, 4, 2)), 'channels'),
                       (np.full((4, 4), np.nan), 'NaN'), ('img.png', 'path')):
        with pytest.raises(ValueError, match=match):
            gen.generate(bad)
        assert fresh.image_state is state
    recs = gen.generate()
    assert all(len(r['topk']) == 4 for r in recs)  # top_k=None: all classes
    for q, exc, match in ((3, ValueError, 'query must be a non-empty class name'),
                          ('', ValueError, 'non-empty'), (' , ', ValueError, 'non-empty')):
        with pytest.raises(exc, match=match):
            gen.find(q)
    with pytest.raises(ValueError, match='min_score must be a finite number'):
        gen.find('class1', min_score=NAN)
    with pytest.raises(ValueError, match=r'min_score must be a finite number in \[0, 1\]'):
        gen.find('class1', min_score=2)
    hits = gen.find('class1')
    assert all(r['query_class'] == 'class1' for r in hits)
    empty = OVSAMPredictor(fresh.model, fast=False)
    empty.model.mask_decoder.classifier.cls_embed = torch.zeros(64, 1, 1)
    empty = OVSAMPredictor(empty.model, fast=False)
    with pytest.raises(RuntimeError, match='no vocabulary: set one on the predictor'):
        OVSAMAutomaticMaskGenerator(empty, points_per_side=2).generate(np.zeros((4, 4, 3), np.uint8))


# ------------------------------------------------------------------ drawing
@pytest.mark.parametrize('kwargs,match', [
    (dict(masks=np.zeros((1, 5, 5), bool)), r'masks must have shape \(N, 8, 9\)'),
    (dict(masks=np.ones((2, 8, 9), bool), labels=[0]), r'labels must have shape \(2,\)'),
    (dict(masks=np.ones((1, 8, 9), bool), labels=[5], class_names=['a', 'b']), 'label 5 is not an index'),
    (dict(masks=np.ones((1, 8, 9), bool), labels=[-1]), 'class indices >= 0'),
    (dict(masks=np.ones((1, 8, 9), bool), boxes=[[NAN, 0, 3, 3]]), 'boxes contain NaN'),
    (dict(masks=np.ones((1, 8, 9), bool), class_names='ab'), 'class_names must be a list of strings'),
    (dict(points=[[1, 2, 3]]), r'points must be \(M, 2\)'),
    (dict(points=[[1, 2]], point_labels=[1, 0]), 'one label per point'),
])
def test_draw_predictions_rejects(kwargs, match):
    from ovsam.apis import draw_predictions
    with pytest.raises(ValueError, match=match):
        draw_predictions(np.zeros((8, 9, 3), np.uint8), **kwargs)


def test_draw_predictions_bad_image():
    from ovsam.apis import draw_predictions
    for img in (np.zeros((0, 3, 3)), np.zeros((4, 4, 2)), np.zeros((4, 4, 3), complex)):
        with pytest.raises(ValueError, match='image must be a non-empty'):
            draw_predictions(img)
    assert draw_predictions(np.full((4, 5), 300.0)).shape == (4, 5, 3)  # clipped to 255


# ------------------------------------------------------------------ review of issue 17 (second round)
def test_options_are_booleans_not_truth_values(fresh):
    for kw in (dict(return_logits='no'), dict(return_logits=None), dict(multimask_output='no'),
               dict(return_logits=2)):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=f'{name} must be True or False'):
            fresh.predict(box=[1, 1, 20, 20], **kw)
    with pytest.raises(ValueError, match='return_logits must be True or False'):
        fresh.predict_torch(boxes=[[1., 1, 20, 20]], return_logits='yes')
    assert fresh.predict(box=[1, 1, 20, 20], return_logits=np.bool_(True)).logits.shape == (1, H, W)
    assert fresh.predict(box=[1, 1, 20, 20], return_logits=0).logits is None


def test_label_shape_message(fresh):
    with pytest.raises(ValueError, match=r'point_labels must have shape \(2,\) or \(1, 2\) to match'):
        fresh.predict(point_coords=[[5, 5], [6, 6]], point_labels=[1])


def test_forged_vocabulary_state_is_refused_and_changes_nothing(fresh):
    from ovsam.apis.predictor import VocabularyState
    good = fresh.vocabulary
    before = fresh.predict(box=[1, 1, 20, 20], top_k=None)
    for bad, text in [
        (VocabularyState(('a', 'b'), torch.randn(2, 1, 7), good.split), r'shape \(2, 1, 7\) but this model needs'),
        (VocabularyState(('a', 'b'), good.cls_embed, good.split), r'classes \+ 1 = 3'),
        (VocabularyState(('a', 'b', 'c', 'd'), good.cls_embed.int(), good.split), 'must be a float tensor'),
        (VocabularyState(('a', 'b', 'c', 'd'), good.cls_embed * float('nan'), good.split), 'NaN or Inf'),
        (VocabularyState(('a', 'b', 'c', 'd'), good.cls_embed, ()), "not this model's class split"),
        (VocabularyState(('a', 1, 'c', 'd'), good.cls_embed, good.split), 'tuple of strings'),
    ]:
        with pytest.raises(ValueError, match=text):
            fresh.predict(box=[1, 1, 20, 20], vocabulary=bad)
        assert fresh.vocabulary is good
    after = fresh.predict(box=[1, 1, 20, 20], top_k=None)
    np.testing.assert_array_equal(after.class_probs, before.class_probs)
    # a renamed copy of a real state is a valid vocabulary
    renamed = VocabularyState(('w', 'x', 'y', 'z'), good.cls_embed, good.split)
    assert fresh.predict(box=[1, 1, 20, 20], vocabulary=renamed).class_names[0] in 'wxyz'


def test_from_config_and_from_tiny_arguments(tmp_path):
    from ovsam.apis import OVSAMPredictor
    with pytest.raises(TypeError, match='config must be a config file path or an mmengine Config'):
        OVSAMPredictor.from_config(5)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        OVSAMPredictor.from_config(str(tmp_path / 'none.py'))
    with pytest.raises(IsADirectoryError, match='is a directory'):
        OVSAMPredictor.from_config(str(tmp_path))
    with pytest.raises(ValueError, match='seed must be an integer'):
        OVSAMPredictor.from_tiny(seed='a')
