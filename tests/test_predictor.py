"""OVSAMPredictor: preprocessing, prompts in original pixels, mask prompts,
run-time vocabularies and error handling (tiny random model)."""
import os

import numpy as np
import pytest
import torch

from conftest import build_tiny

PROMPT_KW = ('point_coords', 'point_labels', 'box', 'mask_input')


@pytest.fixture(scope='module')
def cfg():
    from mmengine.config import Config

    from conftest import TINY_CFG
    return Config.fromfile(TINY_CFG)


@pytest.fixture(scope='module')
def predictor(cfg):
    from ovsam.apis import OVSAMPredictor
    model = build_tiny(cfg, num_classes=5)
    return OVSAMPredictor(model, clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True)


@pytest.fixture(scope='module')
def scene():
    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    bgr, instances = render_scene(np.random.default_rng(3), SHAPE_CLASSES, image_size=320, min_objects=3)
    rgb = np.ascontiguousarray(bgr[:200, :, ::-1])  # 200 x 320, not square
    return rgb


def _pipeline_inputs(model, rgb):
    """What mmdet's test pipeline + the model's data preprocessor produce."""
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate

    import ovsam  # noqa: F401
    size = model.pe.input_image_size[0]
    pipe = Compose([
        dict(type='mmdet.LoadImageFromNDArray'),
        dict(type='mmdet.Resize', scale=(size, size), keep_ratio=True),
        dict(type='mmdet.PackDetInputs', meta_keys=('img_shape', 'ori_shape', 'scale_factor')),
    ])
    packed = pipe(dict(img=np.ascontiguousarray(rgb[:, :, ::-1])))
    data = model.data_preprocessor(pseudo_collate([packed]), False)
    return data['inputs'], data['data_samples'][0].metainfo


# ------------------------------------------------------------------ set_image
def test_preprocessing_matches_mmdet_test_pipeline(predictor, scene):
    predictor.set_image(scene)
    inputs, meta = _pipeline_inputs(predictor.model, scene)
    st = predictor.image_state
    assert st.inputs.shape == inputs.shape == (1, 3, 256, 256)
    assert torch.equal(st.inputs, inputs)
    assert tuple(st.meta['img_shape']) == tuple(meta['img_shape']) == (160, 256)
    assert np.allclose(st.meta['scale_factor'], meta['scale_factor'])
    # padding holds the preprocessor's pad value (0) after normalisation
    assert (st.inputs[..., 160:, :] == 0).all()


def test_predictions_match_ovsam_predict_single(predictor, scene):
    from mmengine.structures import InstanceData
    predictor.set_image(scene)
    model, st = predictor.model, predictor.image_state
    sx, sy = st.meta['scale_factor']
    boxes = np.array([[10, 20, 120, 150], [100, 5, 300, 190], [0, 0, 319, 199]], np.float32)
    points = np.array([[[40, 50]], [[200, 100]], [[310, 190]]], np.float32)
    for kw in (dict(box=boxes), dict(point_coords=points)):
        out = predictor.predict(**kw)
        prompts = InstanceData()
        if 'box' in kw:
            prompts.bboxes = torch.from_numpy(boxes * np.array([sx, sy, sx, sy], np.float32))
        else:
            prompts.point_coords = torch.from_numpy(points * np.array([sx, sy], np.float32))
        with torch.no_grad():
            ref = model.predict_single(st.feats, prompts, st.meta)
        assert out.masks.shape == (3, 200, 320)
        assert np.array_equal(out.masks, ref.masks.numpy())
        assert np.array_equal(out.labels, ref.labels.numpy())
        assert np.allclose(out.scores, ref.scores.numpy(), atol=1e-6)
        assert np.allclose(out.class_probs, ref.cls_scores.numpy(), atol=1e-6)
        ref_boxes = ref.bboxes.numpy().copy()
        ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clip(0, 320)
        ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clip(0, 200)
        assert np.allclose(out.boxes, ref_boxes, atol=1e-3)
    # box prompts come back in original pixels
    assert np.allclose(predictor.predict(box=boxes).boxes, boxes, atol=1e-4)


def test_fast_paths_on_by_default_and_equivalent(cfg, scene):
    """The predictor switches on the fast inference paths unless ``fast=False``;
    both give the same masks and labels on the same weights."""
    import copy

    from ovsam.apis import OVSAMPredictor
    model = build_tiny(cfg, num_classes=5)
    kw = dict(clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True)
    plain = OVSAMPredictor(copy.deepcopy(model), fast=False, **kw)
    fast = OVSAMPredictor(model, **kw)
    from ovsam.models.fast_inference import FastCLIP2SAMHead, fast_modules
    assert type(fast.model.mask_decoder) is FastCLIP2SAMHead and fast_modules(plain.model) == []
    boxes = np.array([[10, 20, 120, 150], [100, 5, 300, 190], [0, 0, 319, 199]], np.float32)
    outs = []
    for p in (plain, fast):
        p.set_image(scene)
        outs.append(p.predict(box=boxes))
    assert np.array_equal(outs[0].masks, outs[1].masks)
    assert np.array_equal(outs[0].labels, outs[1].labels)
    assert np.allclose(outs[0].class_probs, outs[1].class_probs, atol=1e-5)


def test_image_formats_give_identical_features(predictor):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # no resize: exact comparisons

    def inputs(img, fmt='RGB'):
        predictor.set_image(img, fmt)
        return predictor.image_state.inputs.clone()

    ref = inputs(rgb)
    assert torch.equal(inputs(np.ascontiguousarray(rgb[:, :, ::-1]), 'BGR'), ref)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (256, 256, 1), dtype=np.uint8)], axis=2)
    assert torch.equal(inputs(rgba), ref)
    assert torch.allclose(inputs(rgb.astype(np.float32) / 255), ref, atol=1e-4)
    assert torch.allclose(inputs(rgb.astype(np.float64) / 255), ref, atol=1e-4)
    assert torch.equal(inputs(torch.from_numpy(rgb)), ref)
    from PIL import Image
    assert torch.equal(inputs(Image.fromarray(rgb)), ref)
    assert torch.equal(inputs(Image.fromarray(rgba, 'RGBA')), ref)
    gray = rgb[:, :, 0]
    assert torch.equal(inputs(gray), inputs(np.repeat(gray[:, :, None], 3, 2)))
    assert torch.equal(inputs(gray[:, :, None]), inputs(gray))
    assert torch.equal(inputs(Image.fromarray(gray, 'L')), inputs(gray))
    assert torch.equal(inputs(gray.astype(np.int64)), inputs(gray))


@pytest.mark.parametrize('shape', [(1, 1000), (1000, 1), (37, 53), (999, 3, 3), (5, 7, 4), (1, 1)])
def test_odd_sizes(predictor, shape):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    predictor.set_image(img)
    h, w = shape[:2]
    meta = predictor.image_state.meta
    nh, nw = meta['img_shape']
    assert max(nh, nw) == 256 and min(nh, nw) >= 1
    assert predictor.original_size == (h, w)
    out = predictor.predict(box=[0, 0, w, h], top_k=3)
    assert out.masks.shape == (1, h, w) and out.masks.dtype == bool
    assert out.low_res_logits.shape == (1, 1, 64, 64)
    out = predictor.predict(point_coords=[[w / 2, h / 2]])
    assert out.masks.shape == (1, h, w)
    assert np.isfinite(out.class_probs).all()


def test_strip_coordinates_scale_per_axis(predictor):
    img = np.random.default_rng(2).integers(0, 256, (1, 1000, 3), dtype=np.uint8)
    predictor.set_image(img)
    sx, sy = predictor.image_state.meta['scale_factor']
    assert sx == pytest.approx(256 / 1000) and sy == pytest.approx(1.0)
    coords, _, boxes, _ = predictor.transform_prompts([[500, 0.5]], None, [100, 0, 900, 1], None)
    assert torch.allclose(coords, torch.tensor([[[128.0, 0.5]]]))
    assert torch.allclose(boxes, torch.tensor([[25.6, 0.0, 230.4, 1.0]]))


# ------------------------------------------------------------------ prompts
def test_batched_prompts_equal_single_prompts(predictor, scene):
    predictor.set_image(scene)
    boxes = np.array([[10, 20, 120, 150], [100, 5, 300, 190], [50, 50, 60, 70]], np.float32)
    batch = predictor.predict(box=boxes, top_k=4)
    assert batch.topk_labels.shape == (3, 4) and len(batch.topk_names[0]) == 4
    assert np.all(np.diff(batch.topk_scores, axis=1) <= 0)
    assert np.allclose(batch.topk_scores[:, 0], batch.scores)
    assert batch.class_names == [predictor.class_names[i] for i in batch.labels]
    for i, b in enumerate(boxes):
        one = predictor.predict(box=b)
        assert np.allclose(one.low_res_logits[0], batch.low_res_logits[i], atol=1e-4)
        assert np.allclose(one.class_probs[0], batch.class_probs[i], atol=1e-5)
    # one prompt with several points (SAM style) vs N prompts with P points each
    pts = np.array([[30, 40], [60, 80]], np.float32)
    one = predictor.predict(point_coords=pts, point_labels=np.array([1, 0]))
    assert len(one) == 1
    many = predictor.predict(point_coords=np.stack([pts, pts + 5]), point_labels=np.array([[1, 0], [1, 1]]))
    assert len(many) == 2
    assert np.allclose(many.low_res_logits[0], one.low_res_logits[0], atol=1e-4)
    # points + box of the same prompt combine
    both = predictor.predict(point_coords=pts[None, :1], box=boxes[:1])
    assert not np.allclose(both.low_res_logits, predictor.predict(box=boxes[:1]).low_res_logits)
    # top_k larger than the vocabulary is clipped
    assert predictor.predict(box=boxes[0], top_k=50).topk_labels.shape == (1, predictor.num_classes)


def test_full_size_outputs_in_chunks_and_logits_on_request(predictor, scene, monkeypatch):
    """Masks, stability scores and confidences at the original size equal the
    whole-batch computation from the low-res logits, but are made a few
    prompts at a time; float logits at full size only on request."""
    from segment_anything.utils.amg import calculate_stability_score

    from ovsam.apis import predictor as predictor_module
    from ovsam.models.common import postprocess_masks
    predictor.set_image(scene)
    h, w = scene.shape[:2]
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, [w / 2, h / 2], (7, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, [w / 2, h / 2], (7, 2))], 1).astype(np.float32)
    sizes = []

    def spy(logits, *args):
        out = postprocess_masks(logits, *args)
        sizes.append(out.shape[0])
        return out

    monkeypatch.setattr(predictor_module, 'postprocess_masks', spy)
    monkeypatch.setattr(predictor_module, 'CHUNK_VALUES', 3 * h * w)  # three prompts at a time
    out = predictor.predict(box=boxes)
    assert sizes == [3, 3, 1] and out.logits is None
    assert out.masks.dtype == bool and out.masks.shape == (7, h, w)
    meta = predictor.image_state.meta
    full = postprocess_masks(torch.from_numpy(out.low_res_logits), meta['batch_input_shape'], meta['img_shape'],
                             meta['ori_shape'])[:, 0]
    assert np.array_equal(out.masks, (full > 0).numpy())
    assert np.array_equal(out.mask_scores, calculate_stability_score(full, 0.0, 1.0).nan_to_num(0.0).numpy())
    fg = (full > 0).flatten(1).float()
    conf = (full.sigmoid().flatten(1) * fg).sum(1) / fg.sum(1).clamp(min=1)
    np.testing.assert_allclose(out.mask_confidence, conf.numpy(), rtol=1e-5)
    with_logits = predictor.predict(box=boxes, return_logits=True)
    assert with_logits.logits.dtype == np.float32 and np.array_equal(with_logits.logits, full.numpy())
    assert np.array_equal(with_logits.masks, out.masks)
    sx, sy = predictor.scale_factor
    t = predictor.predict_torch(boxes=torch.from_numpy(boxes * np.float32([sx, sy, sx, sy])),
                                stability_score_offset=2.0)
    assert 'logits' not in t  # predict_torch: logits on request too
    assert torch.equal(t['stability_scores'], calculate_stability_score(full, 0.0, 2.0).nan_to_num(0.0))
    with pytest.raises(ValueError, match='stability_score_offset'):
        predictor.predict_torch(boxes=torch.from_numpy(boxes), stability_score_offset=-1)


def test_mask_prompt_changes_output_and_accepts_own_logits(predictor, scene):
    predictor.set_image(scene)
    box = np.array([60, 40, 200, 160], np.float32)
    first = predictor.predict(box=box)
    assert first.low_res_logits.shape == (1, 1, *predictor.mask_input_size)
    refined = predictor.predict(box=box, mask_input=first.low_res_logits)
    assert refined.masks.shape == first.masks.shape
    assert np.isfinite(refined.low_res_logits).all()
    assert np.abs(refined.low_res_logits - first.low_res_logits).max() > 1e-3
    # an arbitrary mask changes the result too, and differently
    other = np.full_like(first.low_res_logits, -20.0)
    other[..., 10:30, 10:30] = 20.0
    alt = predictor.predict(box=box, mask_input=other)
    assert np.abs(alt.low_res_logits - refined.low_res_logits).max() > 1e-3
    # mask-only prompts and (N, 4E, 4E) masks work; iterating keeps the shape
    only = predictor.predict(mask_input=first.low_res_logits[:, 0])
    assert len(only) == 1
    logits = first.low_res_logits
    for _ in range(2):
        logits = predictor.predict(point_coords=[[100, 100]], mask_input=logits).low_res_logits
    assert logits.shape == (1, 1, 64, 64)
    # the dense path is SAM's prompt encoder mask path
    pe = predictor.model.pe
    with torch.no_grad():
        _, dense = pe(None, None, torch.from_numpy(first.low_res_logits))
        _, no_mask = pe(None, torch.zeros(1, 4), None)
    assert not torch.allclose(dense, no_mask)


@pytest.mark.parametrize('kwargs, match', [
    (dict(box=[10, 10, 400, 100]), 'outside'),
    (dict(box=[-30, 10, 50, 100]), 'outside'),
    (dict(point_coords=[[10, 500]]), 'outside'),
    (dict(box=[50, 50, 40, 60]), 'degenerate'),
    (dict(box=[10, 10, np.nan, 60]), 'NaN'),
    (dict(point_coords=[[np.inf, 10]]), 'NaN'),
    (dict(mask_input=np.full((1, 1, 64, 64), np.nan)), 'NaN'),
    (dict(box=[10, 10, 60]), 'shape'),
    (dict(box=np.zeros((2, 2, 4))), 'shape'),
    (dict(point_coords=[10, 20]), 'shape'),
    (dict(point_coords=np.zeros((2, 3, 3))), 'shape'),
    (dict(point_coords=[[10, 20]], point_labels=[1, 1]), 'point_labels'),
    (dict(point_coords=[[10, 20]], point_labels=[5]), 'point_labels'),
    (dict(point_labels=[1]), 'without point_coords'),
    (dict(mask_input=np.zeros((1, 1, 32, 32))), 'mask_input'),
    (dict(box=np.zeros((2, 4)) + [0, 0, 5, 5], point_coords=np.zeros((3, 1, 2))), 'counts differ'),
    (dict(box=np.zeros((0, 4))), 'zero prompts|degenerate|shape'),
    (dict(box=['a', 'b', 'c', 'd']), 'numeric'),
    (dict(), 'no prompt'),
])
def test_prompt_errors(predictor, scene, kwargs, match):
    from ovsam.apis import PromptError
    predictor.set_image(scene)
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_image_and_bad_images(cfg):
    from ovsam.apis import OVSAMPredictor
    p = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg)
    with pytest.raises(RuntimeError, match='set_image'):
        p.predict(box=[0, 0, 10, 10])
    with pytest.raises(RuntimeError, match='set_image'):
        p.get_image_embedding()
    bad = [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 2), np.uint8), np.zeros((3, 10, 10, 1), np.uint8),
           np.full((4, 4, 3), 2.0), np.full((4, 4), np.nan), np.full((4, 4), 300, np.int32),
           np.zeros((4, 4, 3), np.complex64)]
    for img in bad:
        with pytest.raises(ValueError):
            p.set_image(img)
    with pytest.raises(ValueError, match='image_format'):
        p.set_image(np.zeros((4, 4, 3), np.uint8), 'HSV')
    p.set_image(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='multimask'):
        p.predict(box=[0, 0, 4, 4], multimask_output=True)
    p.reset_image()
    with pytest.raises(RuntimeError, match='set_image'):
        p.predict(box=[0, 0, 4, 4])


# ------------------------------------------------------------------ vocabulary
def test_vocabulary_at_run_time_and_caching(cfg, scene, tmp_path, monkeypatch):
    import ovsam.vocabulary.encoder as mod
    from ovsam.apis import OVSAMPredictor
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    calls = []
    real = mod.embed_synonyms

    def counting(model, tok, synonyms, *args, **kw):
        calls.append(list(synonyms))
        return real(model, tok, synonyms, *args, **kw)

    monkeypatch.setattr(mod, 'embed_synonyms', counting)
    p = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True)
    p.set_image(scene)
    names = ['cat', 'dog,puppy', 'traffic light']
    p.set_vocabulary(names)
    assert p.class_names == names and p.num_classes == 3
    assert calls == [['cat', 'dog', 'puppy', 'traffic light']]  # each synonym embedded once
    out = p.predict(box=[10, 10, 100, 100])
    assert out.class_probs.shape == (1, 3) and out.class_names[0] in names
    # same content again: served from memory; a new order re-uses the per-class cache
    p.set_vocabulary(list(names))
    p.set_vocabulary(names[::-1])
    assert len(calls) == 1
    p.set_vocabulary(names + ['bird'])
    assert calls[1:] == [['bird']]
    # equal to embedding everything at once
    model, tok = p.text_encoder.text_model
    direct = mod.encode_class_names(model, tok, names + ['bird'], progress=False)
    assert torch.allclose(p.vocabulary_embeddings(), torch.nn.functional.normalize(direct, dim=-1), atol=1e-6)
    # nothing written anywhere without an explicit cache_dir
    assert not (tmp_path / 'home').exists() and not (tmp_path / 'xdg').exists()

    # explicit cache dir: a second predictor loads the file instead of encoding
    cache = tmp_path / 'cache'
    p1 = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True,
                        cache_dir=str(cache))
    p1.set_vocabulary(['apple', 'pear'])
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith('vocab_')
    n = len(calls)
    p2 = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True,
                        cache_dir=str(cache))
    p2.set_vocabulary(['apple', 'pear'])
    assert len(calls) == n
    assert torch.allclose(p1.vocabulary_embeddings(), p2.vocabulary_embeddings())


def test_vocabulary_file_and_errors(cfg, predictor, scene, tmp_path):
    from ovsam.apis import OVSAMPredictor
    from ovsam.vocabulary import save_text_embeddings
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(4, 2, 64, generator=g)
    names = ['a', 'b,bee', 'c', 'd']
    path = str(tmp_path / 'v.pth')
    save_text_embeddings(path, emb, names)
    p = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg)
    p.set_vocabulary_file(path)
    p.set_image(scene)
    from_file = p.predict(box=[10, 10, 100, 100])
    p.set_vocabulary(names, embeddings=emb)
    assert np.allclose(p.predict(box=[10, 10, 100, 100]).class_probs, from_file.class_probs, atol=1e-6)
    p.set_vocabulary_spec(path)
    assert p.class_names == names
    # no CLIP weights and random text not allowed: a clear error
    with pytest.raises(RuntimeError, match='clip_checkpoint'):
        p.set_vocabulary(['zebra'])
    with pytest.raises(ValueError, match='another CLIP'):
        p.set_vocabulary(['x'], embeddings=torch.randn(1, 1, 32))
    with pytest.raises(ValueError, match='empty'):
        p.set_vocabulary([])
    with pytest.raises(ValueError, match='duplicate'):
        p.set_vocabulary(['a', 'a'], embeddings=torch.randn(2, 1, 64))
    with pytest.raises(FileNotFoundError):
        p.set_vocabulary_file(str(tmp_path / 'missing.pth'))
    # synonyms
    assert p.find_class('BEE') == 1 and p.find_class('zebra') is None
    assert p.add_class('bee') == 1 and p.num_classes == 4


def test_add_class_keeps_existing_classes(predictor, scene):
    predictor.set_vocabulary(['circle,disc', 'square'])
    predictor.set_image(scene)
    before = predictor.predict(box=[10, 10, 150, 150])
    idx = predictor.add_class('pentagon,five-sided shape')
    assert idx == 2 and predictor.class_names[-1] == 'pentagon,five-sided shape'
    emb = predictor.vocabulary_embeddings()
    assert emb.shape[:2] == (3, 2)
    after = predictor.predict(box=[10, 10, 150, 150])
    assert after.class_probs.shape == (1, 3)
    # the old classes' relative scores are unchanged (softmax over one more class)
    r0 = before.class_probs[0, 0] / before.class_probs[0, 1]
    r1 = after.class_probs[0, 0] / after.class_probs[0, 1]
    assert r0 == pytest.approx(r1, rel=1e-4)
    assert predictor.add_class('disc') == 0


def test_seen_classes_change_the_ensemble(predictor, scene):
    import torch
    predictor.set_vocabulary(['circle', 'square', 'star'])
    predictor.set_image(scene)
    # A mask that is non-empty at CLIP's resolution (a random model's masks
    # may vanish there, and then the head alone decides, whatever the split).
    mask_logits = torch.ones(1, 1, 64, 64)
    head_logits = torch.tensor([[-6.6, -9.1, -11.5, 0.0]])
    boxes = torch.tensor([[8., 8., 120., 120.]])
    feats = predictor.image_state.feats
    a = predictor.model.recognise(feats, mask_logits, head_logits, boxes)
    predictor.set_vocabulary(['circle', 'square', 'star'], seen_classes=['circle', 1])
    b = predictor.model.recognise(feats, mask_logits, head_logits, boxes)
    assert not torch.allclose(a[:, :2], b[:, :2])  # seen classes lean on the head now
    assert torch.allclose(a[:, 2:], b[:, 2:])  # 'star' and background unchanged
    with pytest.raises(ValueError, match='not in the vocabulary'):
        predictor.set_vocabulary(['circle'], seen_classes=['dog'])


def test_from_tiny_is_deterministic_and_builtin_vocabularies():
    from ovsam.apis import OVSAMPredictor
    from ovsam.datasets.shapes import SHAPE_CLASSES
    a = OVSAMPredictor.from_tiny(seed=0)
    b = OVSAMPredictor.from_tiny(seed=0)
    assert a.class_names == list(SHAPE_CLASSES)
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    a.set_image(img)
    b.set_image(img)
    assert np.array_equal(a.predict(box=[5, 5, 60, 50]).class_probs, b.predict(box=[5, 5, 60, 50]).class_probs)
    a.set_vocabulary_spec('coco')
    assert a.num_classes == 80 and a.class_names[0] == 'person'
    a.set_vocabulary_spec(['cat', 'dog'])
    assert a.class_names == ['cat', 'dog']


def test_from_config_loads_checkpoints_strictly(cfg, scene, tmp_path):
    from ovsam.apis import OVSAMPredictor
    from ovsam.checkpoint import CheckpointError
    trained = build_tiny(cfg, seed=3)
    path = str(tmp_path / 'tiny.pth')
    torch.save({'state_dict': trained.state_dict(), 'meta': {'epoch': 1}}, path)
    names = trained.mask_decoder.classifier.class_names
    emb = trained.mask_decoder.classifier.cls_embed.permute(1, 2, 0)[:-1]
    p = OVSAMPredictor.from_config(cfg, path)
    p.set_vocabulary(names, embeddings=emb)
    ref = OVSAMPredictor(trained)
    for pred in (p, ref):
        pred.set_image(scene)
    a, b = p.predict(box=[10, 10, 150, 150]), ref.predict(box=[10, 10, 150, 150])
    assert np.array_equal(a.low_res_logits, b.low_res_logits)
    assert np.allclose(a.class_probs, b.class_probs)
    sd = trained.state_dict()
    sd.pop(next(iter(sd)))
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match='missing keys'):
        OVSAMPredictor.from_config(cfg, path)
    # no vocabulary yet: a clear error, not a crash inside the classifier
    empty = OVSAMPredictor.from_config(cfg)
    empty.set_image(scene)
    with pytest.raises(RuntimeError, match='no vocabulary'):
        empty.predict(box=[10, 10, 50, 50])


@pytest.mark.slow  # two fresh processes import torch and mmdet
def test_memory_probe_script_runs():
    """tools/analysis/memory_probe.py (peak RSS on a large photo) runs both
    cases, each in its own process, and prints a row per case."""
    import os.path as osp
    import subprocess
    import sys

    from conftest import ROOT
    script = osp.join(ROOT, 'tools', 'analysis', 'memory_probe.py')
    r = subprocess.run([sys.executable, script, '--width', '120', '--height', '90', '--num-prompts', '3',
                        '--points-per-side', '2', '--threads', '1', '--max-gib', '6'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.split()}
    assert '3 masks bool' in rows['boxes'] and 'from 4 points' in rows['everything'], r.stdout
    for case in ('boxes', 'everything'):
        peak, before = (float(v) for v in rows[case].split()[1:3])
        assert 0 < before <= peak < 6
