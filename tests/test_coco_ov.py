"""The COCO open-vocabulary split in COCO's 80-class label space (the
released model's): split ids, CocoOVDataset's filtering, CocoOVMetric."""
import json

import numpy as np
import pytest
import torch

import ovsam  # noqa: F401  (registers the dataset and the metric)
from ovsam.datasets.coco_ov import (COCO_CLASSES, COCO_OV_BASE_IDS, COCO_OV_CLASSES, COCO_OV_NOVEL_IDS,
                                    CocoOVDataset, CocoOVMetric)


def test_split_ids_index_the_80_classes():
    assert len(COCO_CLASSES) == 80 and len(COCO_OV_CLASSES) == 65
    assert len(COCO_OV_BASE_IDS) == 48 and len(COCO_OV_NOVEL_IDS) == 17
    assert COCO_CLASSES.index('person') == 0 and 0 in COCO_OV_BASE_IDS
    assert COCO_CLASSES.index('cat') == 15 and 15 in COCO_OV_NOVEL_IDS
    outside = set(range(80)) - set(COCO_OV_BASE_IDS) - set(COCO_OV_NOVEL_IDS)
    assert len(outside) == 15 and COCO_CLASSES.index('traffic light') in outside
    assert [COCO_CLASSES[i] for i in sorted(COCO_OV_BASE_IDS + COCO_OV_NOVEL_IDS)] == list(COCO_OV_CLASSES)


# image id -> class names of its instances (one 40x40 square each)
IMAGES = {1: ['person', 'traffic light'], 2: ['cat'], 3: ['traffic light'], 4: ['person', 'cat']}


def _square(x, y, s=40):
    return [float(x), float(y), float(x + s), float(y), float(x + s), float(y + s), float(x), float(y + s)]


@pytest.fixture(scope='module')
def ann_file(tmp_path_factory):
    cats = [dict(id=i + 1, name=c) for i, c in enumerate(COCO_CLASSES)]
    images, anns = [], []
    for img_id, names in IMAGES.items():
        images.append(dict(id=img_id, file_name=f'{img_id}.jpg', height=100, width=200))
        for k, name in enumerate(names):
            x, y = 10 + 60 * k, 20
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=COCO_CLASSES.index(name) + 1,
                             bbox=[x, y, 40, 40], area=1600.0, iscrowd=0, segmentation=[_square(x, y)]))
    path = tmp_path_factory.mktemp('coco_ov') / 'instances.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return str(path)


def _infos(ds):
    return [ds.get_data_info(i) for i in range(len(ds))]


def _labels(ds):
    return {info['img_id']: [COCO_CLASSES[i['bbox_label']] for i in info['instances']] for info in _infos(ds)}


def test_evaluation_keeps_the_65_split_classes(ann_file):
    ds = CocoOVDataset(ann_file=ann_file, data_prefix=dict(img=''), keep='all', test_mode=True, pipeline=[])
    assert ds.metainfo['classes'] == COCO_CLASSES  # labels index the 80 classes
    assert _labels(ds) == {1: ['person'], 2: ['cat'], 3: [], 4: ['person', 'cat']}
    labels = {i['bbox_label'] for info in _infos(ds) for i in info['instances']}
    assert labels == {0, 15}


def test_training_keeps_base_instances_and_drops_emptied_images(ann_file):
    ds = CocoOVDataset(ann_file=ann_file, data_prefix=dict(img=''), keep='base', pipeline=[],
                       filter_cfg=dict(filter_empty_gt=True, min_size=32))
    assert ds.metainfo['classes'] == COCO_CLASSES
    assert _labels(ds) == {1: ['person'], 4: ['person']}
    novel = CocoOVDataset(ann_file=ann_file, data_prefix=dict(img=''), keep='novel', test_mode=True, pipeline=[])
    assert _labels(novel) == {1: [], 2: ['cat'], 3: [], 4: ['cat']}
    with pytest.raises(ValueError, match='keep must be'):
        CocoOVDataset(ann_file=ann_file, data_prefix=dict(img=''), keep='rare', pipeline=[])


def _sample(img_id, names):
    """Each ground-truth instance predicted exactly, as its own class."""
    masks = torch.zeros(len(names), 100, 200, dtype=torch.bool)
    boxes = []
    for k in range(len(names)):
        x = 10 + 60 * k
        masks[k, 20:60, x:x + 40] = True
        boxes.append([x, 20, x + 40, 60])
    labels = [COCO_CLASSES.index(n) for n in names]
    return dict(img_id=img_id, ori_shape=(100, 200),
                pred_instances=dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                    scores=torch.ones(len(names)), labels=torch.tensor(labels, dtype=torch.long),
                                    masks=masks))


def test_coco_ov_metric_scores_the_split_only(ann_file):
    """The model never predicts the 15 classes outside the split: plain
    CocoMetric would count their AP of 0; CocoOVMetric leaves them out."""
    from mmdet.evaluation import CocoMetric
    preds = [_sample(i, [n for n in names if n in COCO_OV_CLASSES]) for i, names in IMAGES.items()]
    results = {}
    for cls in (CocoOVMetric, CocoMetric):
        metric = cls(ann_file=ann_file, metric='segm', proposal_nums=(1, 10, 100))
        metric.dataset_meta = dict(classes=COCO_CLASSES)
        metric.process({}, preds)
        results[cls.__name__] = metric.compute_metrics(metric.results)['segm_mAP']
    assert results['CocoOVMetric'] == pytest.approx(1.0)
    assert results['CocoMetric'] == pytest.approx(2 / 3, abs=1e-3)  # person 1, cat 1, traffic light 0
    assert np.isfinite(results['CocoOVMetric'])
