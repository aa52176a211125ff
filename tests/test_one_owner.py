"""One owner per concept: every entry point computes OV-SAM's per-prompt
scores through the model's own methods (decode, recognise, class split,
ensemble), so they agree with ``tools/test.py`` (``OVSAM.predict``) even for a
model that changes one of them; the COCO-OV ensemble normalises as released."""
import importlib.util
import json
import os.path as osp

import numpy as np
import torch

from conftest import ROOT, build_tiny, make_batch

K = 6  # tiny vocabulary; LVIS-like frequencies below


def _lvis_ann(tmp_path, freqs=('f', 'c', 'r', 'f', 'r', 'c')):
    path = str(tmp_path / 'lvis_tiny.json')
    cats = [dict(id=i + 1, name=f'class{i}', frequency=f) for i, f in enumerate(freqs)]
    with open(path, 'w') as f:
        json.dump(dict(images=[], annotations=[], categories=cats), f)
    return path


def _frequency_model(tiny_cfg, tmp_path):
    # frequent classes seen, rare ones novel, common ones excluded (-1000): the
    # split then changes scores whether or not a mask is empty at C5.
    return build_tiny(tiny_cfg, num_classes=K, type='OVSAMFrequencySplit', split_ann_file=_lvis_ann(tmp_path),
                      base_frequencies=('f', ), novel_frequencies=('r', ))


def _load_tool(rel, name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, *rel.split('/')))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BOXES = [[10., 10., 100., 120.], [50., 60., 200., 190.], [0., 0., 239., 199.], [120., 20., 230., 90.]]


def test_frequency_split_is_the_models_everywhere(tiny_cfg, tmp_path):
    """Predictor, ONNX wrapper and benchmark score a frequency-split model as
    ``OVSAM.predict`` (tools/test.py) does — before, the predictor and the
    ONNX export scored every class as unseen and allowed."""
    from ovsam.apis import OVSAMPredictor
    from ovsam.apis.onnx_export import PromptSideModel, onnx_prompt_inputs
    model = _frequency_model(tiny_cfg, tmp_path)
    inputs, samples = make_batch(model, boxes=BOXES)
    with torch.no_grad():
        ref = model.predict(inputs, samples)[0].pred_instances.cls_scores  # (N, K)
    common = [1, 5]
    assert torch.all(ref[:, common] < 1e-30)  # excluded classes: -1000 before the softmax
    seen, allowed = model.class_split(K)
    assert seen.tolist() == [True, False, False, True, False, False, True] and allowed.sum() == 4

    pred = OVSAMPredictor(model, fast=False)
    pred.restore_image_state(_state_from(pred, inputs, samples[0].metainfo))
    sx, sy = samples[0].metainfo['scale_factor']
    out = pred.predict(box=np.array(BOXES) / np.array([sx, sy, sx, sy]))
    np.testing.assert_allclose(out.class_probs, ref.numpy(), rtol=1e-5, atol=1e-7)

    wrapper = PromptSideModel(model).eval()
    feeds = onnx_prompt_inputs(pred, box=np.array(BOXES) / np.array([sx, sy, sx, sy]))
    from ovsam.apis.onnx_export import INPUT_NAMES
    with torch.no_grad():
        _, scores, _ = wrapper(*[torch.from_numpy(feeds[k]) for k in INPUT_NAMES])
    torch.testing.assert_close(scores.softmax(-1)[:, :-1], ref, rtol=1e-5, atol=1e-7)

    bench = _load_tool('tools/analysis/benchmark.py', 'benchmark')
    with torch.no_grad():
        _, bscores = bench.decode_and_recognise(model, model.extract_feat(inputs), samples[0].gt_instances)
    torch.testing.assert_close(bscores.softmax(-1)[:, :-1], ref, rtol=1e-5, atol=1e-7)


def _state_from(pred, inputs, meta):
    """An ImageState for a preprocessed batch (what set_image computes)."""
    from ovsam.apis import ImageState
    with torch.no_grad():
        feats = pred.model.extract_feat(inputs)
    h, w = meta['ori_shape']
    meta = dict(meta, pad_shape=meta['batch_input_shape'])
    return ImageState(image=np.zeros((h, w, 3), np.uint8), meta=meta, inputs=inputs, feats=feats)


def test_predictor_vocabulary_swap_replaces_the_split(tiny_cfg, tmp_path):
    """The split belongs to the vocabulary: other classes drop it (every class
    unseen, as released without a split), the same classes keep it."""
    from ovsam.apis import OVSAMPredictor
    model = _frequency_model(tiny_cfg, tmp_path)
    pred = OVSAMPredictor(model, allow_random_text=True, clip_model_cfg=tiny_cfg.model.backbone.model_cfg)
    names = pred.class_names
    emb = pred.vocabulary_embeddings()
    pred.set_vocabulary(names, embeddings=emb)  # same classes: the file's split stays
    assert model.class_split(K)[1] is not None
    pred.set_vocabulary(['cat', 'dog'], embeddings=emb[:2])
    seen, allowed = model.class_split(2)
    assert allowed is None and seen.tolist() == [False, False, True]
    pred.set_vocabulary(['cat', 'dog'], embeddings=emb[:2], seen_classes=['dog'])
    assert model.class_split(2)[0].tolist() == [False, True, True]


def test_benchmark_decode_keeps_the_empty_mask_rule(tiny_cfg):
    """Where a mask is empty at CLIP's resolution the head alone decides: the
    benchmark's per-prompt path is the model's (it left the rule out before)."""
    model = build_tiny(tiny_cfg, num_classes=K)
    last = model.mask_decoder.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():  # every mask logit exactly 0: empty masks
        last.weight.zero_()
        last.bias.zero_()
    inputs, samples = make_batch(model, boxes=BOXES)
    bench = _load_tool('tools/analysis/benchmark.py', 'benchmark')
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        mask_logits, scores = bench.decode_and_recognise(model, feats, samples[0].gt_instances)
        from ovsam.models.prompts import embed_prompts
        sparse, dense, _ = embed_prompts(model.pe, samples[0].gt_instances)
        _, head_logits, _ = model.decode(feats, sparse, dense)
    assert (mask_logits == 0).all()
    torch.testing.assert_close(scores, head_logits.log_softmax(-1))


def test_benchmark_plain_impl_is_plain(tiny_cfg):
    """``--impl plain`` runs the released modules: no fast path at all (the
    CLIP batch norms were still folded before)."""
    from ovsam.models.fast_inference import FoldedBNConv2d, fast_modules
    bench = _load_tool('tools/analysis/benchmark.py', 'benchmark')
    model = build_tiny(tiny_cfg)
    bench.set_fast_paths(model, False)
    assert fast_modules(model) == []
    bench.set_fast_paths(model, True)
    assert any(type(m) is FoldedBNConv2d for m in model.modules())
    bench.set_fast_paths(model, False)
    assert fast_modules(model) == []


def _hand_fused(q_logits, c_logits, base, novel, alpha=0.1, beta=0.9):
    """The released COCO-OV fusion, written out in numpy: softmax over all
    K + 1 columns, p = q^(1-w) c^w (w = alpha for base classes and background,
    beta otherwise), log, then -1000 for the classes outside base + novel."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    q, c = softmax(q_logits.astype(np.float64)), softmax(c_logits.astype(np.float64))
    k = q.shape[1] - 1
    w = np.full(k + 1, beta)
    w[list(base) + [k]] = alpha
    out = (1 - w) * np.log(q) + w * np.log(c)
    excluded = sorted(set(range(k)) - set(base) - set(novel))
    out[:, excluded] = -1000.
    return out


def test_coco_ov_ensemble_normalises_over_all_80_classes(tiny_cfg):
    """COCO-OV as released: the 80-class vocabulary (+ background) is
    normalised, fused, and only then are the 15 classes outside the 48/17 split
    set to -1000. Checked against values computed by hand; a 65-class
    vocabulary (the old configs) gives other scores."""
    from mmdet.datasets import CocoDataset

    from ovsam.datasets.coco_ov import COCO_BASE_48, COCO_NOVEL_17, COCO_OV_BASE_IDS, COCO_OV_NOVEL_IDS
    classes = list(CocoDataset.METAINFO['classes'])
    base = [classes.index(c) for c in COCO_BASE_48]
    novel = [classes.index(c) for c in COCO_NOVEL_17]
    assert sorted(COCO_OV_BASE_IDS) == sorted(base) and sorted(COCO_OV_NOVEL_IDS) == sorted(novel)
    model = build_tiny(tiny_cfg, num_classes=80, base_classes=COCO_OV_BASE_IDS, novel_classes=COCO_OV_NOVEL_IDS)
    g = torch.Generator().manual_seed(0)
    n = 64
    head = torch.randn(n, 81, generator=g) * 4
    clip = torch.randn(n, 81, generator=g) * 4
    masks = torch.ones(n, 1, 64, 64)  # non-empty at C5: the ensemble applies
    out = model.fuse(head, clip, masks, (8, 8))
    expected = _hand_fused(head.numpy(), clip.numpy(), base, novel)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)
    # the 65-column normalisation differs (enough to flip close decisions)
    keep = sorted(base + novel) + [80]
    base65 = [keep.index(i) for i in base]
    novel65 = [keep.index(i) for i in novel]
    old = _hand_fused(head.numpy()[:, keep], clip.numpy()[:, keep], base65, novel65)
    p_new = torch.from_numpy(expected).softmax(-1).numpy()[:, keep]
    p_old = torch.from_numpy(old).softmax(-1).numpy()
    assert np.abs(p_new - p_old).max() > 1e-3
