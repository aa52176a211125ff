"""Detector results as prompts: LoadProposalPrompts / PackDetInputsWithProposals."""
import json
import os
import pickle

import mmengine
import numpy as np
import pytest
import torch
from mmdet.datasets.transforms import Resize
from mmdet.structures.bbox import HorizontalBoxes

from ovsam.datasets import proposals as P
from ovsam.datasets.proposals import LoadProposalPrompts, PackDetInputsWithProposals, ProposalFileError
from ovsam.registry import TRANSFORMS

# Categories deliberately out of id order and with gaps: labels follow the
# file order of the categories whose names are dataset classes.
CATEGORIES = [dict(id=7, name='bird'), dict(id=1, name='cat'), dict(id=3, name='dog')]
IMAGES = [dict(id=10, height=100, width=200, file_name='a.png'),
          dict(id=11, height=50, width=50, file_name='b.png'),
          dict(id=12, height=80, width=80, file_name='c.png')]  # no detections


def write_ann(tmp_path):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(images=IMAGES, categories=CATEGORIES, annotations=[])))
    return str(path)


def det(image_id, cat, xywh, score):
    return dict(image_id=image_id, category_id=cat, bbox=list(xywh), score=score)


def write_json(tmp_path, dets, name='dets.json'):
    path = tmp_path / name
    path.write_text(json.dumps(dets))
    return str(path)


def resized_results(img_id, ori_hw, scale=(1024, 1024)):
    """Results dict after LoadImageFromFile + mmdet Resize (keep ratio)."""
    h, w = ori_hw
    results = dict(img=np.zeros((h, w, 3), np.uint8), img_id=img_id, img_path=f'{img_id}.png',
                   ori_shape=(h, w), img_shape=(h, w))
    return Resize(scale=scale, keep_ratio=True)(results)


@pytest.fixture
def warnings_log(monkeypatch):
    msgs = []
    monkeypatch.setattr(P, '_warn', msgs.append)
    return msgs


def test_json_category_mapping_and_counted_warning(tmp_path, warnings_log):
    ann = write_ann(tmp_path)
    dets = [det(10, 7, (10, 10, 20, 20), 0.9),   # bird -> label 0 (first dataset class in file order)
            det(10, 1, (30, 30, 10, 10), 0.8),   # cat -> label 1
            det(10, 3, (0, 0, 5, 5), 0.95),      # dog: not a dataset class
            det(11, 3, (0, 0, 5, 5), 0.5)]       # dog again
    t = LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann, classes=('cat', 'bird'))
    out = t(resized_results(10, (100, 200)))
    assert out['proposal_labels'].tolist() == [0, 1]
    np.testing.assert_allclose(out['proposal_scores'], [0.9, 0.8], rtol=1e-6)
    assert t.counts['unknown_category'] == 2
    assert len(warnings_log) == 1 and '2 with categories not in the mapping' in warnings_log[0]
    assert '{3: 2}' in warnings_log[0]
    with pytest.raises(ProposalFileError, match='categories not in the mapping'):
        LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann, classes=('cat', 'bird'),
                            on_unknown_category='error')


def test_boxes_follow_mmdet_resize(tmp_path):
    """The proposal boxes end up where Resize puts the same boxes as gt_bboxes."""
    ann = write_ann(tmp_path)
    xywh = np.array([[10.5, 20.25, 50, 30], [150, 0, 49.5, 99.75], [0, 60, 7, 3]])
    dets = [det(10, 1, b, 1 - 0.1 * i) for i, b in enumerate(xywh)]
    t = LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann)
    for scale in [(1024, 1024), (64, 64), (300, 120)]:
        h, w = 100, 200
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        ref = dict(img=np.zeros((h, w, 3), np.uint8), img_shape=(h, w), ori_shape=(h, w),
                   gt_bboxes=HorizontalBoxes(torch.tensor(xyxy, dtype=torch.float32)))
        ref = Resize(scale=scale, keep_ratio=True)(ref)
        out = t(resized_results(10, (h, w), scale))
        assert out['img_shape'] == ref['img_shape']
        np.testing.assert_allclose(out['proposal_bboxes'], ref['gt_bboxes'].tensor.numpy(), rtol=1e-6, atol=1e-4)
        assert out['proposal_bboxes'].dtype == np.float32


def test_threshold_topk_sorting_and_clipping(tmp_path, warnings_log):
    ann = write_ann(tmp_path)
    dets = [det(11, 1, (5, 5, 10, 10), 0.3),
            det(11, 1, (5, 5, 10, 10), 0.7),
            det(11, 1, (40, 40, 30, 30), 0.6),   # sticks out of the 50x50 image: clipped to 40..50
            det(11, 1, (60, 0, 10, 10), 0.99),   # entirely outside: dropped, counted
            det(11, 1, (5, 5, 0, 10), 0.98),     # zero width: dropped, counted
            det(11, 1, (5, 5, 10, 10), 0.05),    # below threshold
            det(11, 1, (1, 1, 10, 10), 0.5)]
    t = LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann, score_thr=0.1, topk=3)
    out = t(resized_results(11, (50, 50), scale=(50, 50)))
    np.testing.assert_allclose(out['proposal_scores'], [0.7, 0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out['proposal_bboxes'][1], [40, 40, 50, 50])
    assert t.counts['outside_image'] == 1 and t.counts['degenerate'] == 1
    assert t.counts['below_score_thr'] == 1 and t.counts['beyond_topk'] == 1
    assert len(warnings_log) == 1
    assert '1 with non-finite values or zero width/height' in warnings_log[0]
    assert '1 empty after clipping' in warnings_log[0]


def test_clipping_without_ann_file_is_counted_at_runtime(tmp_path, warnings_log):
    dets = [det(11, 1, (60, 0, 10, 10), 0.9), det(11, 1, (-5, -5, 20, 20), 0.8)]
    t = LoadProposalPrompts(write_json(tmp_path, dets), category_map={1: 0}, classes=('cat', ))
    for _ in range(3):
        out = t(resized_results(11, (50, 50), scale=(50, 50)))
        np.testing.assert_allclose(out['proposal_bboxes'], [[0, 0, 15, 15]])
    assert t.counts['outside_image_runtime'] == 3
    assert len(warnings_log) == 1  # once, however many images


def test_image_without_proposals_gives_empty_prediction(tmp_path, tiny_cfg):
    from conftest import build_tiny
    ann = write_ann(tmp_path)
    t = LoadProposalPrompts(write_json(tmp_path, [det(10, 1, (1, 1, 5, 5), 0.9)]), ann_file=ann)
    assert t.counts['images_without_proposals'] == 2
    out = t(resized_results(12, (80, 80), scale=(256, 256)))
    assert out['proposal_bboxes'].shape == (0, 4) and out['proposal_labels'].shape == (0, )
    packed = PackDetInputsWithProposals()(out)
    sample = packed['data_samples']
    assert len(sample.pred_instances) == 0
    model = build_tiny(tiny_cfg, num_classes=3, prompt_source='pred')
    model.data_preprocessor.eval_prompt = None
    data = model.data_preprocessor(dict(inputs=[packed['inputs']], data_samples=[sample]), False)
    with torch.no_grad():
        res = model.predict(data['inputs'], data['data_samples'])[0].pred_instances
    assert res.masks.shape == (0, 80, 80) and len(res.scores) == 0


def test_ovsam_receives_proposals(tmp_path, tiny_cfg):
    """Through the packer and the data preprocessor to OVSAM(prompt_source='pred'):
    scores are the detector's and the boxes come back in original pixels."""
    from conftest import build_tiny
    ann = write_ann(tmp_path)
    dets = [det(10, 1, (10, 20, 50, 30), 0.9), det(10, 7, (120, 10, 60, 80), 0.4)]
    t = LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann, classes=('cat', 'bird'))
    packed = PackDetInputsWithProposals()(t(resized_results(10, (100, 200), scale=(256, 256))))
    model = build_tiny(tiny_cfg, num_classes=2, prompt_source='pred', label_source='detector')
    model.data_preprocessor.eval_prompt = None
    data = model.data_preprocessor(dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]), False)
    with torch.no_grad():
        res = model.predict(data['inputs'], data['data_samples'])[0].pred_instances
    np.testing.assert_allclose(res.scores.numpy(), [0.9, 0.4], rtol=1e-6)
    assert res.labels.tolist() == [1, 0]  # cat is label 1, bird label 0 (file order)
    np.testing.assert_allclose(res.bboxes.numpy(), [[10, 20, 60, 50], [120, 10, 180, 90]], atol=1e-3)
    assert res.masks.shape == (2, 100, 200)


def test_bad_files(tmp_path):
    ann = write_ann(tmp_path)
    with pytest.raises(ProposalFileError, match='empty'):
        LoadProposalPrompts(write_json(tmp_path, [], 'empty.json'), ann_file=ann)
    with pytest.raises(ProposalFileError, match='annotation file'):
        LoadProposalPrompts(ann, ann_file=ann)
    with pytest.raises(ProposalFileError, match='entry 1'):
        LoadProposalPrompts(write_json(tmp_path, [det(10, 1, (0, 0, 1, 1), 1.0), dict(image_id=10)], 'x.json'),
                            ann_file=ann)
    with pytest.raises(ProposalFileError, match='none of its image ids'):
        LoadProposalPrompts(write_json(tmp_path, [det(999, 1, (0, 0, 1, 1), 1.0)], 'y.json'), ann_file=ann)
    with pytest.raises(ProposalFileError, match='none of the 1 detections'):
        LoadProposalPrompts(write_json(tmp_path, [det(10, 42, (0, 0, 1, 1), 1.0)], 'z.json'), ann_file=ann)
    with pytest.raises(ValueError, match='needs the dataset'):
        LoadProposalPrompts(write_json(tmp_path, [det(10, 1, (0, 0, 1, 1), 1.0)], 'w.json'))
    with pytest.raises(FileNotFoundError):
        LoadProposalPrompts(str(tmp_path / 'missing.json'), ann_file=ann)


def test_unknown_images_counted_or_refused(tmp_path, warnings_log):
    ann = write_ann(tmp_path)
    dets = [det(10, 1, (0, 0, 4, 4), 0.9), det(555, 1, (0, 0, 4, 4), 0.9), det(556, 1, (0, 0, 4, 4), 0.9)]
    t = LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann)
    assert t.counts['unknown_image'] == 2 and t.counts['kept'] == 1
    assert len(warnings_log) == 1 and '2 on images not in the annotation file' in warnings_log[0]
    with pytest.raises(ProposalFileError, match='not in'):
        LoadProposalPrompts(write_json(tmp_path, dets), ann_file=ann, on_unknown_image='error')


def test_transform_must_follow_resize(tmp_path):
    ann = write_ann(tmp_path)
    t = LoadProposalPrompts(write_json(tmp_path, [det(10, 1, (0, 0, 4, 4), 0.9)]), ann_file=ann)
    with pytest.raises(KeyError, match='after Resize'):
        t(dict(img_id=10, ori_shape=(100, 200), img_shape=(100, 200)))
    with pytest.raises(KeyError, match='LoadProposalPrompts'):
        PackDetInputsWithProposals()(resized_results(10, (100, 200)))


def test_file_read_once_per_process(tmp_path, monkeypatch):
    ann = write_ann(tmp_path)
    path = write_json(tmp_path, [det(10, 1, (0, 0, 4, 4), 0.9)], 'once.json')
    calls = []
    real = P._read_json
    monkeypatch.setattr(P, '_read_json', lambda p: calls.append(p) or real(p))
    transforms = [TRANSFORMS.build(dict(type='LoadProposalPrompts', proposal_file=path, ann_file=ann))
                  for _ in range(3)]
    for t in transforms:
        for _ in range(4):
            t(resized_results(10, (100, 200)))
    assert len(calls) == 1
    os.utime(path, ns=(1, 1))  # a rewritten file is read again
    LoadProposalPrompts(path, ann_file=ann)
    assert len(calls) == 2


def mmdet_pickle(tmp_path, entries, name='dets.pkl'):
    """A results pickle as tools/test.py --out (DumpDetResults) writes it."""
    path = str(tmp_path / name)
    mmengine.dump(entries, path)
    return path


def test_mmdet_pickle(tmp_path):
    ann = write_ann(tmp_path)
    entries = [
        dict(img_id=10, img_path='a.png', ori_shape=(100, 200), scale_factor=(np.float64(2.5), 2.5),
             pred_instances=dict(bboxes=torch.tensor([[1., 2., 30., 40.], [5., 5., 9., 9.]]),
                                 scores=torch.tensor([0.5, 0.8]), labels=torch.tensor([2, 0]))),
        dict(img_id=11, img_path='b.png',
             pred_instances=dict(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                 labels=torch.zeros(0, dtype=torch.long))),
    ]
    path = mmdet_pickle(tmp_path, entries)
    # labels as dataset label indices: 3 classes (bird, cat, dog in file order)
    t = LoadProposalPrompts(path, ann_file=ann)
    out = t(resized_results(10, (100, 200), scale=(200, 200)))
    assert out['proposal_labels'].tolist() == [0, 2]
    np.testing.assert_allclose(out['proposal_bboxes'], [[5, 5, 9, 9], [1, 2, 30, 40]])
    # the detector's own class list, mapped by name; 'fish' is unknown
    t = LoadProposalPrompts(path, ann_file=ann, detector_classes=('dog', 'fish', 'cat'))
    out = t(resized_results(10, (100, 200), scale=(200, 200)))
    assert out['proposal_labels'].tolist() == [2, 1]
    # labels beyond the dataset's classes are unknown categories
    entries[0]['pred_instances']['labels'] = torch.tensor([5, 0])
    t = LoadProposalPrompts(mmdet_pickle(tmp_path, entries, 'b.pkl'), classes=('bird', 'cat', 'dog'))
    assert t.counts['unknown_category'] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch EVIL',))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump([dict(img_id=1, pred_instances=dict(bboxes=_Evil(), scores=[], labels=[]))], f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ProposalFileError, match='not allowed'):
            LoadProposalPrompts(str(path), classes=('a', ))
    finally:
        os.chdir(cwd)
    assert not (tmp_path / 'EVIL').exists()
