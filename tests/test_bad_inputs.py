"""Bad prompts and vocabularies give errors that say what is wrong."""
import math

import pytest
import torch

from conftest import make_batch


def _predict(model, **kw):
    inputs, samples = make_batch(model, **kw)
    with torch.no_grad():
        return model.predict(inputs, samples)


@pytest.mark.parametrize('boxes,match', [
    ([[10., 10., 5., 50.]], 'degenerate boxes'),
    ([[10., 10., 10., 50.]], 'degenerate boxes'),
    ([[10., 10., 400., 50.]], 'outside the image'),
    ([[-30., 10., 40., 50.]], 'outside the image'),
    ([[10., math.nan, 40., 50.]], 'NaN'),
    ([[10., 10., 40.]], r'shape \(N, 4\)'),
])
def test_bad_boxes(tiny_model, boxes, match):
    from ovsam.models import PromptError
    with pytest.raises(PromptError, match=match):
        _predict(tiny_model, boxes=boxes)


@pytest.mark.parametrize('points,match', [
    ([[[10., 400.]]], 'outside the image'),
    ([[[math.inf, 4.]]], 'NaN or Inf'),
    ([[10., 20.]], r'shape \(N, P, 2\)'),
])
def test_bad_points(tiny_model, points, match):
    from ovsam.models import PromptError
    with pytest.raises(PromptError, match=match):
        _predict(tiny_model, points=points)


def test_no_prompt_fields(tiny_model):
    from mmengine.structures import InstanceData
    from ovsam.models import PromptError
    inputs, samples = make_batch(tiny_model)
    samples[0].gt_instances = InstanceData(labels=torch.tensor([1]))
    with pytest.raises(PromptError, match='no prompts'):
        tiny_model.predict(inputs, samples)


def test_empty_vocabulary_is_rejected(tiny_model):
    with pytest.raises(ValueError, match=r'classes>0'):
        tiny_model.mask_decoder.classifier.set_vocabulary(torch.zeros(0, 1, 64))


def test_vocabulary_of_wrong_width(tiny_model):
    tiny_model.mask_decoder.classifier.set_vocabulary(torch.randn(3, 1, 32))
    with pytest.raises(ValueError, match='another CLIP model'):
        _predict(tiny_model, boxes=[[10., 10., 40., 50.]])


def test_model_without_vocabulary(tiny_cfg):
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    model = MODELS.build(tiny_cfg.model).eval()
    with pytest.raises(RuntimeError, match='gen_text_embeddings.py'):
        _predict(model, boxes=[[10., 10., 40., 50.]])


def test_base_novel_split_out_of_range(tiny_cfg):
    from conftest import build_tiny
    model = build_tiny(tiny_cfg, base_classes=[0, 1], novel_classes=[9])
    with pytest.raises(ValueError, match='novel class index 9'):
        _predict(model, boxes=[[10., 10., 40., 50.]])
