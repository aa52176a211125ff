"""Segment-everything with labels and text queries.

The recipe is checked exactly with a stand-in decoder that returns the
ground-truth instance under each grid point (so the right answer is known);
the real tiny model then runs every option end to end.
"""
import numpy as np
import pytest
import torch

from conftest import build_tiny


@pytest.fixture(scope='module')
def cfg():
    from mmengine.config import Config

    from conftest import TINY_CFG
    return Config.fromfile(TINY_CFG)


@pytest.fixture(scope='module')
def scene():
    """A 256 x 256 RGB scene with at least one circle, and its instances."""
    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    for seed in range(100):
        bgr, inst = render_scene(np.random.default_rng(seed), SHAPE_CLASSES, image_size=256, min_objects=3,
                                 max_objects=5, min_visible_area=600)
        if any(c == 0 for c, _ in inst) and len({c for c, _ in inst}) >= 2:
            return np.ascontiguousarray(bgr[:, :, ::-1]), inst
    raise AssertionError('no suitable scene')


@pytest.fixture
def predictor(cfg):
    from ovsam.apis import OVSAMPredictor
    from ovsam.datasets.shapes import SHAPE_CLASSES
    p = OVSAMPredictor(build_tiny(cfg), clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True)
    p.set_vocabulary(list(SHAPE_CLASSES))
    return p


def oracle(predictor, instances, confidence=None):
    """Replace the decoder by the ground truth: the instance under each point,
    labelled with its class (probability 0.9); background points give empty
    masks."""
    h, w = instances[0][1].shape
    label_map = np.zeros((h, w), np.int64)
    for k, (_, m) in enumerate(instances, start=1):
        label_map[m] = k
    classes = [c for c, _ in instances]

    def fake(point_coords, point_labels=None, boxes=None, mask_input=None, top_k=5, return_logits=False,
             image_state=None, vocabulary=None, stability_score_offset=1.0):
        sx, sy = (image_state or predictor.image_state).meta['scale_factor']
        n = point_coords.shape[0]
        k_cls = predictor.num_classes
        logits = torch.full((n, h, w), -10.0)
        probs = torch.full((n, k_cls), 0.1 / k_cls)
        conf = torch.zeros(n)
        for i, (x, y) in enumerate(point_coords[:, 0].tolist()):
            inst = label_map[min(int(y / sy), h - 1), min(int(x / sx), w - 1)]
            if inst:
                logits[i][torch.from_numpy(label_map == inst)] = 10.0
                probs[i, classes[inst - 1]] += 0.9
                conf[i] = 0.99 if confidence is None else confidence[inst - 1]
        k = max(1, min(top_k, k_cls))
        ts, tl = probs.topk(k, dim=1)
        from segment_anything.utils.amg import calculate_stability_score
        stability = torch.nan_to_num(calculate_stability_score(logits, 0.0, stability_score_offset), nan=0.0)
        return dict(masks=logits > 0, stability_scores=stability, mask_confidence=conf, labels=tl[:, 0],
                    scores=ts[:, 0], topk_labels=tl, topk_scores=ts, class_probs=probs)

    predictor.predict_torch = fake
    return label_map


def _hit_instances(instances, points_per_side):
    """Instances containing at least one grid point."""
    from segment_anything.utils.amg import build_point_grid
    h, w = instances[0][1].shape
    pts = build_point_grid(points_per_side) * np.array([[w, h]])
    hit = set()
    for x, y in pts:
        for k, (_, m) in enumerate(instances):
            if m[int(y), int(x)]:
                hit.add(k)
    return hit


def test_recipe_recovers_ground_truth_instances(predictor, scene):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    rgb, instances = scene
    predictor.set_image(rgb)
    oracle(predictor, instances)
    gen = OVSAMAutomaticMaskGenerator(predictor, points_per_side=32, points_per_batch=50)
    anns = gen.generate()
    hit = _hit_instances(instances, 32)
    assert len(hit) >= 3
    assert len(anns) == len(hit)  # one mask per instance: duplicates removed by NMS
    names = predictor.class_names
    matched = set()
    for a in anns:
        seg = a['segmentation']
        assert seg.dtype == bool and seg.shape == rgb.shape[:2]
        k = next(i for i, (_, m) in enumerate(instances) if np.array_equal(m, seg))
        matched.add(k)
        assert a['label'] == instances[k][0] and a['class_name'] == names[instances[k][0]]
        assert a['score'] == pytest.approx(0.9 + 0.1 / len(names))
        assert a['topk'][0] == [a['class_name'], pytest.approx(a['score'])]
        assert a['area'] == int(seg.sum())
        ys, xs = np.nonzero(seg)
        assert a['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        (px, py), = a['point_coords']
        assert seg[int(py), int(px)]
        assert a['stability_score'] == pytest.approx(1.0)
        assert a['crop_box'] == [0, 0, rgb.shape[1], rgb.shape[0]]
    assert matched == hit
    assert [a['area'] for a in anns] == sorted((a['area'] for a in anns), reverse=True)


def test_filters_and_output_modes(predictor, scene):
    from pycocotools import mask as mask_utils

    from ovsam.apis import OVSAMAutomaticMaskGenerator
    rgb, instances = scene
    predictor.set_image(rgb)
    conf = [0.3 + 0.6 * (k % 2) for k in range(len(instances))]
    oracle(predictor, instances, confidence=conf)
    hit = _hit_instances(instances, 16)
    gen = OVSAMAutomaticMaskGenerator(predictor, points_per_side=16, mask_confidence_thresh=0.5,
                                      output_mode='coco_rle')
    anns = gen.generate()
    assert len(anns) == len([k for k in hit if conf[k] >= 0.5])
    for a in anns:
        m = mask_utils.decode(a['segmentation']).astype(bool)
        assert any(np.array_equal(m, im) for _, im in instances)
        assert isinstance(a['segmentation']['counts'], str)
    assert OVSAMAutomaticMaskGenerator(predictor, points_per_side=16, class_score_thresh=0.95).generate() == []
    rle = OVSAMAutomaticMaskGenerator(predictor, points_per_side=16, output_mode='uncompressed_rle').generate()
    assert len(rle) == len(hit) and 'counts' in rle[0]['segmentation']


def test_find_matches_synonyms_and_adds_new_queries(predictor, scene):
    rgb, instances = scene
    predictor.set_image(rgb)
    oracle(predictor, instances)
    k = predictor.num_classes
    from ovsam.apis import OVSAMAutomaticMaskGenerator

    def find(query, points_per_side, min_score=0.0):
        return OVSAMAutomaticMaskGenerator(predictor, points_per_side=points_per_side).find(query, min_score=min_score)

    circles = find('Disc', points_per_side=32)
    assert predictor.num_classes == k  # 'disc' is a synonym of 'circle,disc'
    expected = [i for i in _hit_instances(instances, 32) if instances[i][0] == 0]
    assert len(circles) == len(expected) >= 1
    for r in circles:
        assert r['label'] == 0 and r['query_class'] == 'circle,disc'
    scores = [r['score'] for r in circles]
    assert scores == sorted(scores, reverse=True)
    assert find('pentagon', points_per_side=8) == []
    assert predictor.num_classes == k + 1 and predictor.class_names[-1] == 'pentagon'
    assert find('disc', points_per_side=32, min_score=0.999) == []
    with pytest.raises(ValueError):
        find(' , ', points_per_side=8)


def test_real_tiny_model_end_to_end(predictor, scene):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    rgb, _ = scene
    predictor.set_image(rgb)
    state = predictor.image_state
    gen = OVSAMAutomaticMaskGenerator(predictor, points_per_side=6, stability_score_thresh=0.0,
                                      box_nms_thresh=0.99, crop_n_layers=1, crop_nms_thresh=0.99,
                                      min_mask_region_area=20)
    anns = gen.generate()
    assert predictor.image_state is state  # whole-image features restored, not recomputed
    assert len(anns) >= 1
    keys = {'segmentation', 'bbox', 'area', 'stability_score', 'mask_confidence', 'label', 'class_name', 'score',
            'topk', 'point_coords', 'crop_box'}
    for a in anns:
        assert keys <= set(a)
        assert 0 <= a['score'] <= 1 and a['class_name'] == predictor.class_names[a['label']]
        assert a['segmentation'].shape == rgb.shape[:2] and a['area'] > 0
    crops = {tuple(a['crop_box']) for a in anns}
    assert all(len(c) == 4 for c in crops)
    # same results when the image is passed in again (features recomputed)
    again = OVSAMAutomaticMaskGenerator(predictor, points_per_side=6, stability_score_thresh=0.0,
                                        box_nms_thresh=0.99, crop_n_layers=1, crop_nms_thresh=0.99,
                                        min_mask_region_area=20).generate(rgb)
    assert [a['area'] for a in again] == [a['area'] for a in anns]
    # impossible thresholds: an empty list, not an error
    assert OVSAMAutomaticMaskGenerator(predictor, points_per_side=4, stability_score_thresh=1.01).generate() == []


def test_generator_odd_images_and_arguments(predictor):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    strip = np.random.default_rng(0).integers(0, 256, (3, 700, 3), dtype=np.uint8)
    anns = OVSAMAutomaticMaskGenerator(predictor, points_per_side=4, stability_score_thresh=0.0).generate(strip)
    for a in anns:
        assert a['segmentation'].shape == (3, 700)
    grid = [np.array([[0.5, 0.5], [0.25, 0.25]])]
    OVSAMAutomaticMaskGenerator(predictor, points_per_side=None, point_grids=grid,
                                stability_score_thresh=0.0).generate(strip)
    with pytest.raises(ValueError):
        OVSAMAutomaticMaskGenerator(predictor, points_per_side=4, point_grids=grid)
    with pytest.raises(ValueError):
        OVSAMAutomaticMaskGenerator(predictor, points_per_side=4, output_mode='png')
    with pytest.raises(ValueError):
        OVSAMAutomaticMaskGenerator(predictor, points_per_side=0)
    fresh = type(predictor)(predictor.model)
    with pytest.raises(RuntimeError, match='set_image'):
        OVSAMAutomaticMaskGenerator(fresh, points_per_side=4).generate()


def test_full_size_work_in_chunks_gives_the_same_records(predictor, scene, monkeypatch):
    """Masks, stability scores and RLEs made a few prompts at a time (as on a
    large photo) equal those made for a whole batch at once, and no full-size
    float array ever holds more than one chunk of prompts."""
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    from ovsam.apis import automatic, predictor as predictor_module
    rgb, _ = scene
    predictor.set_image(rgb)
    kw = dict(points_per_side=6, stability_score_thresh=0.0, box_nms_thresh=0.99, crop_n_layers=1,
              crop_nms_thresh=0.99, output_mode='uncompressed_rle')
    whole = OVSAMAutomaticMaskGenerator(predictor, **kw).generate()
    assert len(whole) >= 2
    h, w = rgb.shape[:2]
    sizes = []
    post = predictor_module.postprocess_masks

    def spy(logits, *args):
        out = post(logits, *args)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(predictor_module, 'postprocess_masks', spy)
    monkeypatch.setattr(predictor_module, 'CHUNK_VALUES', 2 * h * w)  # two prompts at a time
    monkeypatch.setattr(automatic, 'RLE_VALUES', 3 * h * w)
    chunked = OVSAMAutomaticMaskGenerator(predictor, **kw).generate()
    assert sizes and max(sizes) <= 2 * h * w
    assert len(chunked) == len(whole)
    for a, b in zip(whole, chunked):
        assert a['segmentation'] == b['segmentation'] and a['bbox'] == b['bbox'] and a['label'] == b['label']
        assert a['stability_score'] == b['stability_score']
        assert a['mask_confidence'] == pytest.approx(b['mask_confidence'], rel=1e-5)
