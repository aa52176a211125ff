"""LVIS mask AP on numpy 2 (LVISMetricNumpy2), checked against lvis-api itself."""
import json

import numpy as np
import pytest
import torch
from mmdet.evaluation.metrics import LVISMetric
from pycocotools import mask as mask_util

from ovsam.evaluation import LVISMetricNumpy2, LVISPromptSegMetric, numpy_float_alias
from ovsam.registry import METRICS

H, W = 40, 60
# ids in file order; label index = position
CATS = [dict(id=1, name='apple', frequency='f'), dict(id=2, name='bowl', frequency='c'),
        dict(id=3, name='cone', frequency='r'), dict(id=5, name='drum', frequency='f')]


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r['counts'] = r['counts'].decode()
    return r


# (image id, category id, mask)
GT = [(1, 1, rect(2, 20, 3, 30)), (1, 2, rect(22, 38, 10, 50)), (1, 5, rect(0, 10, 40, 60)),
      (2, 3, rect(5, 35, 5, 35)), (2, 1, rect(30, 40, 40, 60)),
      (3, 2, rect(10, 30, 10, 30)), (3, 3, rect(0, 8, 0, 8))]


def write_lvis(tmp_path):
    images = [
        # neg: categories verified absent (false positives there count);
        # not exhaustive: unmatched detections of these are not penalised
        dict(id=1, height=H, width=W, coco_url='http://images.cocodataset.org/val2017/1.jpg',
             neg_category_ids=[3], not_exhaustive_category_ids=[]),
        dict(id=2, height=H, width=W, coco_url='http://images.cocodataset.org/val2017/2.jpg',
             neg_category_ids=[2, 5], not_exhaustive_category_ids=[1]),
        dict(id=3, height=H, width=W, coco_url='http://images.cocodataset.org/val2017/3.jpg',
             neg_category_ids=[1], not_exhaustive_category_ids=[]),
    ]
    anns = []
    for i, (img, cat, m) in enumerate(GT):
        x, y, w, h = mask_util.toBbox(mask_util.encode(np.asfortranarray(m.astype(np.uint8)))).tolist()
        anns.append(dict(id=i + 1, image_id=img, category_id=cat, segmentation=rle(m), area=float(m.sum()),
                         bbox=[x, y, w, h]))
    cats = [dict(c, image_count=1, instance_count=1, synonyms=[c['name']], synset=c['name'] + '.n.01')
            for c in CATS]
    path = tmp_path / 'lvis.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return str(path)


def samples(preds):
    """Data samples (dict form) from ``{image id: [(label, mask, score), ...]}``."""
    out = []
    for img, items in sorted(preds.items()):
        masks = torch.from_numpy(np.stack([m for _, m, _ in items])) if items else torch.zeros(0, H, W, dtype=bool)
        boxes = []
        for _, m, _ in items:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        out.append(dict(img_id=img, ori_shape=(H, W), pred_instances=dict(
            masks=masks, labels=torch.tensor([lab for lab, _, _ in items], dtype=torch.long),
            scores=torch.tensor([s for _, _, s in items], dtype=torch.float32),
            bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))))
    return out


def label_of(cat_id):
    return [c['id'] for c in CATS].index(cat_id)


def gt_as_prediction():
    preds = {}
    for img, cat, m in GT:
        preds.setdefault(img, []).append((label_of(cat), m, 1.0))
    return preds


def perturbed():
    preds = {img: [(lab, m.copy(), s) for lab, m, s in items] for img, items in gt_as_prediction().items()}
    preds[1][0] = (0, rect(2, 20, 3, 18), 0.6)          # apple: IoU 0.55
    preds[1][1] = (1, rect(22, 38, 10, 47), 0.9)        # bowl: IoU 0.925
    preds[1].append((2, rect(0, 10, 0, 10), 0.95))      # cone: a negative category -> false positive
    preds[1].append((3, rect(12, 20, 40, 60), 0.3))     # drum: duplicate-ish, low IoU
    preds[2][0] = (2, rect(5, 35, 5, 30), 0.7)          # cone: IoU 0.83
    preds[2].append((0, rect(0, 5, 0, 5), 0.99))        # apple: not exhaustive -> ignored
    preds[2].append((1, rect(0, 10, 0, 10), 0.8))       # bowl: negative -> false positive
    preds[3][1] = (2, rect(0, 8, 0, 8), 0.2)            # cone: right mask, low score
    preds[3].append((2, rect(20, 40, 40, 60), 0.85))    # cone: false positive above it
    return preds


def lvis_direct(ann_file, preds):
    """AP as lvis-api computes it from a standard segm results list."""
    from lvis import LVIS, LVISEval, LVISResults
    results = [dict(image_id=img, category_id=CATS[lab]['id'], segmentation=rle(m), score=s)
               for img, items in preds.items() for lab, m, s in items]
    gt = LVIS(ann_file)
    with numpy_float_alias():
        ev = LVISEval(gt, LVISResults(gt, results), 'segm')
        ev.run()
    return ev.get_results()


def run_metric(metric, preds):
    metric.dataset_meta = dict(classes=[c['name'] for c in CATS])
    metric.process({}, samples(preds))
    return metric.evaluate(size=len(preds))


def test_gt_as_prediction_gives_ap_one(tmp_path):
    ann = write_lvis(tmp_path)
    res = run_metric(METRICS.build(dict(type='LVISMetricNumpy2', ann_file=ann, metric='segm')), gt_as_prediction())
    for k in ('AP', 'AP50', 'AP75', 'APr', 'APc', 'APf'):
        assert res[f'lvis/segm_{k}'] == 1.0, k
    assert 'float' not in np.__dict__  # nothing left patched


def test_perturbed_prediction_matches_lvis_api(tmp_path):
    ann = write_lvis(tmp_path)
    preds = perturbed()
    res = run_metric(LVISMetricNumpy2(ann_file=ann, metric='segm'), preds)
    ref = lvis_direct(ann, preds)
    assert 0.2 < ref['AP'] < 0.95  # a real, non-trivial value
    for k in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf'):
        assert res[f'lvis/segm_{k}'] == pytest.approx(round(float(ref[k]), 3), abs=1e-9), k
    # the frequency groups really differ: the rare category was hurt most
    assert ref['APr'] < ref['APf']


def test_plain_lvis_metric_needs_the_shim(tmp_path):
    """Guards the premise: lvis 0.5.3 on numpy >= 1.24 fails without the alias."""
    if 'float' in np.__dict__:
        pytest.skip('this numpy still has np.float')
    ann = write_lvis(tmp_path)
    with pytest.raises(AttributeError, match='float'):
        run_metric(LVISMetric(ann_file=ann, metric='segm'), gt_as_prediction())


def test_numpy_float_alias_is_scoped():
    if 'float' in np.__dict__:
        pytest.skip('this numpy still has np.float')
    with numpy_float_alias():
        assert np.float is float
        with numpy_float_alias():
            assert np.float is float
        assert np.float is float  # the inner exit keeps the outer alias
    assert 'float' not in np.__dict__
    with pytest.raises(RuntimeError):
        with numpy_float_alias():
            raise RuntimeError('boom')
    assert 'float' not in np.__dict__
    with pytest.raises(AttributeError):
        np.float  # noqa: B018


def test_lvis_prompt_metric_groups(tmp_path):
    ann = write_lvis(tmp_path)
    m = LVISPromptSegMetric(ann_file=ann)
    assert m.groups['frequent'].tolist() == [0, 3] and m.groups['common'].tolist() == [1]
    assert m.groups['rare'].tolist() == [2]
    assert m.groups['base'].tolist() == [0, 1, 3] and m.groups['novel'].tolist() == [2]
