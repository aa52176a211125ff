"""Tests of PromptSegMetric on hand-made masks with hand-computed expectations."""
import math
import pickle
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from ovsam.evaluation import PromptSegMetric
from ovsam.evaluation import prompt_metric as pm
from ovsam.registry import METRICS


def box_mask(h, w, y0, y1, x0, x1):
    """(h, w) bool mask, True on rows y0:y1 and columns x0:x1."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def make_sample(gt_masks, gt_labels, pred_masks, pred_labels, name='img.jpg', ori_shape=None, img_shape=None,
                pad_shape=None, as_dict=True):
    """A data sample in the form mmengine's Evaluator hands to metrics
    (``DetDataSample.to_dict()``) or as the DetDataSample itself.

    ``gt_masks`` / ``pred_masks``: (N, H, W) arrays; the gt goes in as
    BitmapMasks (what mmdet's pipeline produces), the prediction as a bool
    tensor (what the model produces).
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    pred_masks = torch.as_tensor(np.asarray(pred_masks, dtype=bool))
    ori_shape = ori_shape or tuple(pred_masks.shape[-2:])
    img_shape = img_shape or tuple(gt_masks.shape[-2:])
    pad_shape = pad_shape or tuple(gt_masks.shape[-2:])
    sample = DetDataSample(metainfo=dict(img_path=name, img_id=name, ori_shape=ori_shape, img_shape=img_shape,
                                         pad_shape=pad_shape, batch_input_shape=pad_shape))
    gt = InstanceData()
    gt.masks = BitmapMasks(gt_masks, *gt_masks.shape[-2:])
    gt.labels = torch.as_tensor(gt_labels, dtype=torch.long)
    pred = InstanceData()
    pred.masks = pred_masks
    pred.labels = torch.as_tensor(pred_labels, dtype=torch.long)
    sample.gt_instances = gt
    sample.pred_instances = pred
    return sample.to_dict() if as_dict else sample


def run(metric, samples):
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


# Four prompts on 4x4 images with IoUs 1/2, 2/3, 0 and 1 (both empty).
H = W = 4
HALF_GT, HALF_PRED = box_mask(H, W, 0, 4, 0, 4), box_mask(H, W, 0, 2, 0, 4)  # 8 / 16 -> 1/2
TWO3_GT, TWO3_PRED = box_mask(H, W, 0, 2, 0, 2), box_mask(H, W, 0, 2, 0, 3)  # 4 / 6 -> 2/3
ZERO_GT, ZERO_PRED = box_mask(H, W, 0, 1, 0, 1), box_mask(H, W, 3, 4, 3, 4)  # disjoint -> 0
EMPTY = np.zeros((H, W), dtype=bool)  # empty vs empty -> 1 by definition
PARTIAL_GT = np.stack([HALF_GT, TWO3_GT, ZERO_GT, EMPTY])
PARTIAL_PRED = np.stack([HALF_PRED, TWO3_PRED, ZERO_PRED, EMPTY])
PARTIAL_IOUS = [Fraction(1, 2), Fraction(2, 3), Fraction(0), Fraction(1)]


def test_perfect_prediction():
    gt1 = np.stack([box_mask(H, W, 0, 2, 0, 2), box_mask(H, W, 1, 4, 1, 3)])
    gt2 = np.stack([box_mask(H, W, 0, 4, 3, 4)])
    m = PromptSegMetric()
    res = run(m, [make_sample(gt1, [3, 5], gt1, [3, 5], 'a.jpg'), make_sample(gt2, [0], gt2, [0], 'b.jpg')])
    assert res == {'miou': 1.0, 'accuracy': 1.0, 'num_prompts': 3}


def test_partial_overlaps_known_iou():
    labels = [0, 1, 2, 3]
    res = run(PromptSegMetric(), [make_sample(PARTIAL_GT, labels, PARTIAL_PRED, labels)])
    expected = sum(PARTIAL_IOUS) / 4  # (1/2 + 2/3 + 0 + 1) / 4 = 13/24
    assert expected == Fraction(13, 24)
    assert res['miou'] == pytest.approx(float(expected), abs=1e-12)
    assert res['accuracy'] == 1.0
    assert res['num_prompts'] == 4


def test_miou_is_mean_over_prompts_not_over_images():
    # image a: 1 prompt with IoU 1/2; image b: 3 prompts with IoU 1.
    # Per prompt: (1/2 + 3) / 4 = 7/8; a per-image mean would give 3/4.
    a = make_sample(HALF_GT[None], [0], HALF_PRED[None], [0], 'a.jpg')
    full = np.stack([box_mask(H, W, 0, 1, 0, 1)] * 3)
    b = make_sample(full, [0, 0, 0], full, [0, 0, 0], 'b.jpg')
    res = run(PromptSegMetric(), [a, b])
    assert res['miou'] == pytest.approx(7 / 8)


def test_wrong_labels():
    gt = np.stack([box_mask(H, W, 0, 2, 0, 2)] * 3)
    res = run(PromptSegMetric(), [make_sample(gt, [0, 1, 2], gt, [0, 2, 2])])
    assert res['accuracy'] == pytest.approx(2 / 3)
    assert res['miou'] == 1.0  # labels do not touch the masks' score


def test_base_novel_split():
    # prompt:     0      1      2      3
    # gt label:   0      1      2      3     (base = {0, 1}, novel = {2, 3})
    # IoU:        1/2    2/3    0      1
    # pred label: 0      7      2      9     (correct: yes, no, yes, no)
    labels, preds = [0, 1, 2, 3], [0, 7, 2, 9]
    m = PromptSegMetric(base_classes=[0, 1], novel_classes=[2, 3])
    res = run(m, [make_sample(PARTIAL_GT, labels, PARTIAL_PRED, preds)])
    assert res['miou_base'] == pytest.approx((1 / 2 + 2 / 3) / 2)  # 7/12
    assert res['acc_base'] == pytest.approx(1 / 2)
    assert res['miou_novel'] == pytest.approx((0 + 1) / 2)
    assert res['acc_novel'] == pytest.approx(1 / 2)
    assert res['miou'] == pytest.approx(13 / 24)
    assert res['accuracy'] == pytest.approx(1 / 2)


def test_class_groups_and_empty_group_is_nan(monkeypatch):
    logged = []
    monkeypatch.setattr(pm, 'print_log', lambda msg, **kw: logged.append(msg))
    # gt labels 0, 1, 2, 3 with IoUs 1/2, 2/3, 0, 1; label 3 is in no group.
    labels = [0, 1, 2, 3]
    m = PromptSegMetric(class_groups=dict(frequent=[0, 2], common=[1], rare=[50, 51]))
    res = run(m, [make_sample(PARTIAL_GT, labels, PARTIAL_PRED, [0, 1, 5, 3])])
    assert res['miou_frequent'] == pytest.approx((1 / 2 + 0) / 2)
    assert res['acc_frequent'] == pytest.approx(1 / 2)
    assert res['miou_common'] == pytest.approx(2 / 3)
    assert res['acc_common'] == 1.0
    assert math.isnan(res['miou_rare']) and math.isnan(res['acc_rare'])
    assert len(logged) == 1 and "'rare'" in logged[0]
    assert res['num_prompts'] == 4  # ungrouped prompts still count overall
    assert res['miou'] == pytest.approx(13 / 24)


def test_gt_resized_and_padded_frame():
    # Original image 2x4. The pipeline resized it x2 to img_shape 4x8 and
    # padded to 8x16. The object covers original row 1, columns 2-3, i.e.
    # input rows 2-3, columns 4-7. Junk in the padding must be cropped away.
    gt_in = np.zeros((2, 8, 16), dtype=bool)
    gt_in[:, 2:4, 4:8] = True
    gt_in[:, 4:, :] = True  # padding area (never real in mmdet; here it catches a missing crop)
    gt_in[:, :, 8:] = True
    expected_gt = box_mask(2, 4, 1, 2, 2, 4)  # 2 pixels
    pred = np.stack([expected_gt, box_mask(2, 4, 1, 2, 2, 3)])  # IoU 1 and 1/2
    s = make_sample(gt_in, [1, 1], pred, [1, 1], ori_shape=(2, 4), img_shape=(4, 8), pad_shape=(8, 16))
    res = run(PromptSegMetric(), [s])
    assert res['miou'] == pytest.approx((1 + 1 / 2) / 2)


def test_gt_downscaled_input_frame():
    # Original 6x6 shrunk to 3x3 (no padding): each input pixel is a 2x2 block.
    gt_in = box_mask(3, 3, 0, 1, 0, 2)[None]  # input rows 0, cols 0-1
    pred = box_mask(6, 6, 0, 2, 0, 4)[None]  # -> original rows 0-1, cols 0-3
    res = run(PromptSegMetric(), [make_sample(gt_in, [0], pred, [0], ori_shape=(6, 6))])
    assert res['miou'] == 1.0
    pred_shifted = box_mask(6, 6, 0, 2, 2, 6)[None]  # overlap 4 of union 12 -> 1/3
    res = run(PromptSegMetric(), [make_sample(gt_in, [0], pred_shifted, [0], ori_shape=(6, 6))])
    assert res['miou'] == pytest.approx(1 / 3)


def test_gt_already_at_ori_shape_is_used_directly():
    # img_shape and pad_shape differ from ori_shape, but the gt masks are at
    # ori_shape (e.g. original annotations): no crop / resize.
    gt = box_mask(6, 6, 3, 6, 3, 6)[None]
    s = make_sample(gt, [0], gt, [0], ori_shape=(6, 6), img_shape=(3, 3), pad_shape=(4, 4))
    assert run(PromptSegMetric(), [s])['miou'] == 1.0


def test_resize_nearest_matches_opencv():
    # mmdet resizes masks with OpenCV's INTER_NEAREST; the metric's inverse
    # must use the same sampling rule.
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 11)) > 0.5
    for size in [(3, 5), (14, 22), (10, 4), (7, 11)]:
        ours = pm.resize_nearest(torch.from_numpy(masks), size).numpy()
        ref = np.stack([cv2.resize(m.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST)
                        for m in masks]).astype(bool)
        np.testing.assert_array_equal(ours, ref)


def test_count_mismatch_raises():
    gt = np.stack([box_mask(H, W, 0, 2, 0, 2)] * 3)
    s = make_sample(gt, [0, 1, 2], gt[:2], [0, 1], name='data/coco/000123.jpg')
    with pytest.raises(ValueError, match=r'000123\.jpg.*2 predicted.*3 ground-truth'):
        PromptSegMetric().process({}, [s])


def test_pred_shape_mismatch_raises():
    gt = box_mask(H, W, 0, 2, 0, 2)[None]
    s = make_sample(gt, [0], np.zeros((1, 5, 5), dtype=bool), [0], ori_shape=(4, 4))
    with pytest.raises(ValueError, match='ori_shape'):
        PromptSegMetric().process({}, [s])


def test_gt_smaller_than_img_shape_raises():
    gt = box_mask(3, 3, 0, 1, 0, 1)[None]
    s = make_sample(gt, [0], np.zeros((1, 8, 8), dtype=bool), [0], ori_shape=(8, 8), img_shape=(4, 4))
    with pytest.raises(ValueError, match='smaller than img_shape'):
        PromptSegMetric().process({}, [s])


def test_overlapping_split_rejected():
    with pytest.raises(ValueError, match=r'\[2\]'):
        PromptSegMetric(base_classes=[0, 1, 2], novel_classes=[2, 3])


def test_datasample_objects_and_empty_images():
    # DetDataSample objects (not dicts) and an image with no instance.
    labels = [0, 1, 2, 3]
    full = make_sample(PARTIAL_GT, labels, PARTIAL_PRED, labels, as_dict=False)
    empty = make_sample(np.zeros((0, H, W)), [], np.zeros((0, H, W)), [], 'empty.jpg', as_dict=False)
    res = run(PromptSegMetric(), [full, empty])
    assert res['num_prompts'] == 4
    assert res['miou'] == pytest.approx(13 / 24)


def test_no_prompts_at_all_is_nan(monkeypatch):
    logged = []
    monkeypatch.setattr(pm, 'print_log', lambda msg, **kw: logged.append(msg))
    res = PromptSegMetric().compute_metrics([])
    assert math.isnan(res['miou']) and math.isnan(res['accuracy']) and res['num_prompts'] == 0
    assert logged


def _samples_for_split():
    labels = [0, 1, 2, 3]
    a = make_sample(PARTIAL_GT, labels, PARTIAL_PRED, [0, 7, 2, 9], 'a.jpg')  # 4 prompts
    b = make_sample(HALF_GT[None], [2], HALF_PRED[None], [2], 'b.jpg')  # 1 prompt, IoU 1/2
    c = make_sample(TWO3_GT[None], [1], TWO3_PRED[None], [4], 'c.jpg')  # 1 prompt, IoU 2/3
    return [a, b, c]


def test_split_across_ranks_equals_single_process():
    kw = dict(base_classes=[0, 1], novel_classes=[2, 3], class_groups=dict(odd=[1, 3]))
    a, b, c = _samples_for_split()
    single = PromptSegMetric(**kw)
    single.process({}, [a, b, c])
    expected = single.compute_metrics(single.results)

    rank0, rank1 = PromptSegMetric(**kw), PromptSegMetric(**kw)
    rank0.process({}, [a])
    rank1.process({}, [b, c])
    # collect_results pickles each rank's list and concatenates (interleaved
    # by sample, which only reorders); mimic both.
    gathered = pickle.loads(pickle.dumps(rank1.results)) + pickle.loads(pickle.dumps(rank0.results))
    assert PromptSegMetric(**kw).compute_metrics(gathered) == pytest.approx(expected, rel=1e-12)
    # and the numbers are the hand-computed ones:
    # IoUs 1/2, 2/3, 0, 1 | 1/2 | 2/3 ; correct T F T F | T | F
    assert expected['miou'] == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 + 1 / 2 + 2 / 3) / 6)
    assert expected['accuracy'] == pytest.approx(3 / 6)
    assert expected['miou_base'] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)  # labels 0, 1, 1
    assert expected['acc_base'] == pytest.approx(1 / 3)
    assert expected['miou_novel'] == pytest.approx((0 + 1 + 1 / 2) / 3)  # labels 2, 3, 2
    assert expected['acc_novel'] == pytest.approx(2 / 3)
    assert expected['miou_odd'] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)  # labels 1, 3, 1
    assert expected['acc_odd'] == 0.0
    # averaging the ranks' own means would be wrong (rank0: 4 prompts, rank1: 2)
    r0, r1 = rank0.compute_metrics(rank0.results), rank1.compute_metrics(rank1.results)
    assert (r0['miou'] + r1['miou']) / 2 != pytest.approx(expected['miou'])


def test_mmengine_evaluate_single_process():
    metric = METRICS.build(dict(type='PromptSegMetric', base_classes=[0, 1], novel_classes=[2, 3]))
    assert isinstance(metric, PromptSegMetric)
    evaluator = Evaluator(metric)
    labels = [0, 1, 2, 3]
    # the Evaluator converts DetDataSample objects with to_dict() itself
    evaluator.process(data_samples=[make_sample(PARTIAL_GT, labels, PARTIAL_PRED, [0, 7, 2, 9], as_dict=False)],
                      data_batch={})
    evaluator.process(data_samples=[make_sample(HALF_GT[None], [2], HALF_PRED[None], [2], 'b.jpg', as_dict=False)],
                      data_batch={})
    res = evaluator.evaluate(size=2)
    assert set(res) == {'prompt/miou', 'prompt/accuracy', 'prompt/num_prompts', 'prompt/miou_base',
                        'prompt/acc_base', 'prompt/miou_novel', 'prompt/acc_novel'}
    assert res['prompt/miou'] == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 + 1 / 2) / 5)
    assert res['prompt/accuracy'] == pytest.approx(3 / 5)
    assert res['prompt/num_prompts'] == 5
    assert res['prompt/miou_novel'] == pytest.approx((0 + 1 + 1 / 2) / 3)
    assert metric.results == []  # evaluate() resets the per-run buffer


def test_custom_prefix():
    metric = PromptSegMetric(prefix='lvis_box')
    metric.process({}, [make_sample(HALF_GT[None], [0], HALF_PRED[None], [0])])
    res = metric.evaluate(size=1)
    assert res == {'lvis_box/miou': pytest.approx(0.5), 'lvis_box/accuracy': 1.0, 'lvis_box/num_prompts': 1}


def test_evaluate_drops_sampler_padding():
    # A distributed sampler repeats samples to even out the ranks and
    # evaluate(size) cuts the gathered results back to the data set size.
    # One results entry per image makes that cut drop exactly the repeat.
    a = make_sample(HALF_GT[None], [0], HALF_PRED[None], [0], 'a.jpg')  # IoU 1/2
    b = make_sample(PARTIAL_GT, [0, 1, 2, 3], PARTIAL_PRED, [0, 1, 2, 3], 'b.jpg')
    metric = PromptSegMetric()
    metric.process({}, [b, a, b])  # the last b is the sampler's padding
    res = metric.evaluate(size=2)
    assert res['prompt/num_prompts'] == 5
    assert res['prompt/miou'] == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 + 1 / 2) / 5)


def test_padded_frame_that_happens_to_equal_ori_shape():
    # Original 4x4 shrunk to img_shape 2x2 and padded back to 4x4: the gt is
    # ori-sized but in the padded input frame, so it must still be cropped
    # and resized. Input rows 0-1, column 0 -> original rows 0-3, columns 0-1.
    gt_in = box_mask(4, 4, 0, 2, 0, 1)[None]
    pred = box_mask(4, 4, 0, 4, 0, 2)[None]
    s = make_sample(gt_in, [0], pred, [0], ori_shape=(4, 4), img_shape=(2, 2), pad_shape=(4, 4))
    # taken as-is it would score 2 / 8 = 1/4
    assert run(PromptSegMetric(), [s])['miou'] == 1.0
