"""Our COCO mask AP (mmdet CocoMetric as the eval configs set it up) equals
pycocotools' own COCOeval on the same predictions."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet.evaluation.metrics import CocoMetric
from mmengine.config import Config
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovsam.registry import METRICS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DETECTOR_DATA_CFG = osp.join(ROOT, 'configs', 'eval', '_base_', 'eval-data_coco_detector.py')

H, W = 120, 160
# file order differs from id order on purpose
CATEGORIES = [dict(id=5, name='e'), dict(id=2, name='b'), dict(id=9, name='i')]


def encode(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r['counts'] = r['counts'].decode()
    return r


def blob(rng, size):
    """A random blob-ish mask of about size x size pixels."""
    m = np.zeros((H, W), dtype=bool)
    if size > 96:  # COCO "large" (> 96^2 px): a box, an ellipse would not fit
        h, w = int(rng.integers(96, H)), int(rng.integers(100, W))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        m[y0:y0 + h, x0:x0 + w] = True
        return m
    cy, cx = rng.integers(size // 2, H - size // 2), rng.integers(size // 2, W - size // 2)
    yy, xx = np.mgrid[:H, :W]
    ry, rx = size / 2 * rng.uniform(0.6, 1.0), size / 2 * rng.uniform(0.6, 1.0)
    m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = True
    return m


def make_data(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    images, anns, gt = [], [], []
    for img_id in (1, 2, 3, 4):
        images.append(dict(id=img_id, height=H, width=W, file_name=f'{img_id}.png'))
        n = 0 if img_id == 4 else int(rng.integers(3, 7))  # image 4 has no objects
        for _ in range(n):
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]['id']
            m = blob(rng, int(rng.choice([16, 48, 110])))  # small / medium / large
            x, y, w, h = mask_util.toBbox(mask_util.encode(np.asfortranarray(m.astype(np.uint8)))).tolist()
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=cat, segmentation=encode(m),
                             area=float(m.sum()), bbox=[x, y, w, h], iscrowd=0))
            gt.append((img_id, cat, m))
    # a crowd region: detections on it are ignored, not false positives
    crowd = np.zeros((H, W), dtype=bool)
    crowd[90:120, 0:60] = True
    anns.append(dict(id=len(anns) + 1, image_id=2, category_id=5, segmentation=encode(crowd),
                     area=float(crowd.sum()), bbox=[0, 90, 60, 30], iscrowd=1))
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=CATEGORIES)))

    preds = {i: [] for i in (1, 2, 3, 4)}
    for img_id, cat, m in gt:
        if rng.random() < 0.15:
            continue  # missed
        shift = rng.integers(-3, 4, size=2)
        pm = np.roll(m, tuple(shift), axis=(0, 1))
        if rng.random() < 0.3:
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]['id']  # maybe wrong class
        preds[img_id].append((cat, pm, float(rng.uniform(0.3, 1.0))))
    for img_id in preds:  # false positives, including on image 4
        for _ in range(3):
            preds[img_id].append((CATEGORIES[int(rng.integers(3))]['id'], blob(rng, 30), float(rng.uniform(0, 0.6))))
    preds[2].append((5, crowd.copy(), 0.9))
    # > 100 detections of one class in one image, the true one ranked last:
    # only the standard maxDets=100 cuts it (mmdet's default would keep it)
    first = next((c, m) for i, c, m in gt if i == 1)
    for k in range(105):
        preds[1].append((first[0], blob(rng, 10), 0.99 - k * 1e-4))
    preds[1].append((first[0], first[1].copy(), 0.5))
    return str(path), preds


def to_samples(preds, label_of):
    out = []
    for img_id, items in sorted(preds.items()):
        masks = np.stack([m for _, m, _ in items]).astype(bool)
        boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                 for xs, ys in ((np.nonzero(m)[1], np.nonzero(m)[0]) for _, m, _ in items)]
        out.append(dict(img_id=img_id, ori_shape=(H, W), pred_instances=dict(
            masks=torch.from_numpy(masks), bboxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor([s for _, _, s in items]),
            labels=torch.tensor([label_of[c] for c, _, _ in items]))))
    return out


def pycocotools_stats(ann_file, preds):
    """Standard COCO segm evaluation: results without 'bbox' (the mask gives the area)."""
    results = [dict(image_id=i, category_id=c, segmentation=encode(m), score=s)
               for i, items in preds.items() for c, m, s in items]
    gt = COCO(ann_file)
    ev = COCOeval(gt, gt.loadRes(results), 'segm')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def our_metric(ann_file):
    """The CocoMetric of the detector-protocol eval configs, on another annotation file."""
    cfg = Config.fromfile(DETECTOR_DATA_CFG).test_evaluator
    cfg.ann_file = ann_file
    return METRICS.build(cfg)


def evaluate(metric, preds):
    classes = [c['name'] for c in CATEGORIES]
    metric.dataset_meta = dict(classes=classes)
    label_of = {c['id']: i for i, c in enumerate(CATEGORIES)}  # file order, as CocoDataset numbers them
    metric.process({}, to_samples(preds, label_of))
    return metric.evaluate(size=len(preds))


@pytest.mark.parametrize('seed', [0, 1])
def test_mask_ap_equals_pycocotools(tmp_path, seed):
    ann_file, preds = make_data(tmp_path, seed)
    ref = pycocotools_stats(ann_file, preds)
    assert 0.1 < ref[0] < 0.9 and all(v > 0 for v in ref[3:6])  # non-trivial, all area ranges populated
    res = evaluate(our_metric(ann_file), preds)
    names = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l']
    for i, name in enumerate(names):
        assert res[f'coco/segm_{name}'] == pytest.approx(round(float(ref[i]), 3), abs=1e-9), name


def test_mmdet_default_max_dets_would_differ(tmp_path):
    """Why the configs set proposal_nums=(1, 10, 100): with mmdet's default
    (100, 300, 1000) pycocotools' summary gives mAP at 100 detections per image
    but mAP_50 / mAP_75 / mAP_s / m / l at 1000, which are not COCO's numbers."""
    ann_file, preds = make_data(tmp_path, 0)
    ref = pycocotools_stats(ann_file, preds)
    res = evaluate(CocoMetric(ann_file=ann_file, metric='segm'), preds)
    assert res['coco/segm_mAP'] == pytest.approx(round(float(ref[0]), 3), abs=1e-9)
    assert res['coco/segm_mAP_50'] != pytest.approx(round(float(ref[1]), 3), abs=1e-9)
