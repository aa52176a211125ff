"""Int8 scoring of large vocabularies (ovsam.models.quantized_vocabulary)
against the plain float32 classifier."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny

pytestmark = pytest.mark.skipif(
    not __import__('ovsam.models.quantized_vocabulary', fromlist=['x']).int8_available(),
    reason='this torch build has no fbgemm / x86 quantized engine')


def _table(num_classes=3000, dim=64, seed=0, clustered=True):
    """A synonym table with structure: classes in families of similar
    embeddings (as related names are in CLIP's text space) and 1-6 synonyms
    each, synonyms close to their class."""
    from ovsam.vocabulary import SynonymTable
    g = torch.Generator().manual_seed(seed)
    families = F.normalize(torch.randn(num_classes // 20 + 1, dim, generator=g), dim=-1)
    rows, index = [], []
    for c in range(num_classes):
        base = torch.randn(dim, generator=g)
        if clustered:
            base = families[c // 20] * 4 + base * 0.35 * dim ** 0.5 / 4
        n = int(torch.randint(1, 7, (1,), generator=g))
        syn = F.normalize(base + 0.3 * torch.randn(n, dim, generator=g) * base.norm() / dim ** 0.5, dim=-1)
        rows.append(syn)
        index += [c] * n
    return SynonymTable.from_flat(torch.cat(rows), torch.tensor(index), num_classes)


def _classifiers(table):
    from ovsam.models import TextClassifier, quantize_vocabulary
    plain = TextClassifier(layout='flat').eval()
    plain.set_vocabulary(table)
    fast = copy.deepcopy(plain)
    assert quantize_vocabulary(fast) == 1
    return plain, fast


def _queries(table, n, seed, near=True):
    """Unit queries: near a random class's synonym (cosine ~0.3, like a region
    against its name) or random directions (no clear winner)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, table.embeddings.shape[1], generator=g), dim=-1)
    if near:
        target = table.embeddings[torch.randint(0, table.num_rows, (n,), generator=g)]
        x = F.normalize(0.3 * target + 0.95 * x, dim=-1)
    return x


@pytest.mark.parametrize('near,clustered', [(True, True), (False, True), (True, False)])
def test_int8_top_classes_are_exact_and_the_tail_close(near, clustered):
    table = _table(clustered=clustered)
    plain, fast = _classifiers(table)
    x = _queries(table, 8, seed=int(near) + 2 * int(clustered), near=near)
    with torch.no_grad():
        ref, got = plain(x), fast(x)
    assert fast.uses_int8(F.normalize(x, dim=-1), fast.cls_embed)
    assert got.shape == ref.shape == (8, table.num_classes + 1)
    scale = float(plain.logit_scale.exp())
    # every class scored within int8 error (cosine 0.01), background exactly 0
    assert (got - ref).abs().max() / scale < 0.01
    assert torch.equal(got[:, -1], ref[:, -1])
    # the top classes carry the float32 scores and the float32 order
    top_ref, top_got = ref.topk(10, dim=1), got.topk(10, dim=1)
    assert torch.equal(top_ref.indices, top_got.indices)
    assert torch.allclose(top_ref.values, top_got.values, atol=1e-4 * scale)
    # so do the probabilities the predictor reports (softmax over all classes)
    p_ref, p_got = ref.softmax(-1), got.softmax(-1)
    assert torch.allclose(p_ref, p_got, atol=2e-3)
    # and the int8 pass did something: the tail is not the float32 one bit for bit
    assert not torch.equal(got, ref)


def test_int8_falls_back_to_float32_where_it_does_not_pay_or_is_unsafe():
    table = _table(num_classes=600)
    plain, fast = _classifiers(table)
    x = _queries(table, 40, seed=3)
    with torch.no_grad():
        # more prompts than max_prompts: one float32 read serves them all
        assert torch.equal(fast(x), plain(x))
        assert not fast.uses_int8(x, fast.cls_embed)
    # autograd: gradients flow through the plain computation
    xg = x[:2].clone().requires_grad_(True)
    out = fast(xg)
    assert torch.equal(out, plain(xg))
    out[:, 0].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # padded (small) vocabularies are always exact
    from ovsam.models import TextClassifier, quantize_vocabulary
    small = TextClassifier(layout='padded').eval()
    small.set_vocabulary(table)
    small_fast = copy.deepcopy(small)
    quantize_vocabulary(small_fast)
    with torch.no_grad():
        assert torch.equal(small_fast(x[:2]), small(x[:2]))


def test_int8_cache_follows_the_vocabulary():
    """A new vocabulary, or one changed in place, is repacked: never scored
    with a stale int8 copy."""
    a, b = _table(seed=1), _table(seed=2)
    plain, fast = _classifiers(a)
    x = _queries(a, 3, seed=4)
    with torch.no_grad():
        first = fast(x)
        fast.set_vocabulary(b)
        plain.set_vocabulary(b)
        ref = plain(x)
        got = fast(x)
        assert torch.equal(got.topk(5).indices, ref.topk(5).indices) and (got - ref).abs().max() < 1.0
        assert not torch.allclose(got, first)
        # in place: the same buffer object, a new version
        fast.cls_embed[:b.num_classes, :-1] = -fast.cls_embed[:b.num_classes, :-1]
        plain.cls_embed[:b.num_classes, :-1] = -plain.cls_embed[:b.num_classes, :-1]
        assert torch.equal(fast(x).topk(5).indices, plain(x).topk(5).indices)
    assert len(fast.__dict__['_int8_packed']) <= fast.cache_size


def test_swap_is_reversible_and_keeps_the_state_dict(tiny_cfg):
    from ovsam.models import Int8TextClassifier, TextClassifier, quantize_vocabulary
    model = build_tiny(tiny_cfg)
    keys = set(model.state_dict())
    assert quantize_vocabulary(model) >= 1
    assert any(type(m) is Int8TextClassifier for m in model.modules())
    assert set(model.state_dict()) == keys
    assert quantize_vocabulary(model, enabled=False) >= 1
    assert not any(type(m) is Int8TextClassifier for m in model.modules())
    assert any(type(m) is TextClassifier for m in model.modules())
    with pytest.raises(ValueError, match='rescore_rows'):
        quantize_vocabulary(model, rescore_rows=0)


def test_predictor_answers_like_float32_on_a_large_vocabulary(tiny_cfg, tmp_path):
    """The predictor's default (int8 + rescoring) against quantized_vocabulary=False
    on a 6k-class flat vocabulary: same labels and top-k, close probabilities."""
    from ovsam.apis import OVSAMPredictor
    from ovsam.vocabulary import save_text_embeddings
    cfg = tiny_cfg
    model = build_tiny(cfg)
    dim = model.mask_decoder.classifier.buffer_dim(model.mask_decoder.classifier.cls_embed)
    table = _table(num_classes=6000, dim=dim, seed=5)
    path = str(tmp_path / 'vocab.pth')
    save_text_embeddings(path, table, [f'class {i}' for i in range(6000)])
    preds = []
    for quantized in (False, True):
        m = copy.deepcopy(model)
        m.mask_decoder.classifier.layout = 'flat'
        p = OVSAMPredictor(m, clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True,
                           quantized_vocabulary=quantized)
        p.set_vocabulary_file(path)
        p.set_image((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
        preds.append(p.predict(box=np.array([[10, 12, 70, 80], [40, 5, 120, 90], [0, 0, 127, 95]], np.float32),
                               top_k=5))
    ref, got = preds
    assert type(p.model.mask_decoder.classifier).__name__ == 'Int8TextClassifier'
    assert p.model.mask_decoder.classifier.__dict__.get('_int8_packed')  # the int8 pass ran
    assert np.array_equal(ref.labels, got.labels) and np.array_equal(ref.topk_labels, got.topk_labels)
    assert np.allclose(ref.topk_scores, got.topk_scores, rtol=0.02, atol=1e-6)
    assert np.array_equal(ref.masks, got.masks)


def test_inference_mode_tables_are_scored_exactly():
    """A vocabulary installed under ``torch.inference_mode`` has no version
    counter, so a change to it could not be noticed: scored in float32."""
    table = _table(num_classes=600, seed=7)
    plain, fast = _classifiers(table)
    x = _queries(table, 2, seed=8)
    with torch.inference_mode():
        fast.set_vocabulary(table)
        plain.set_vocabulary(table)
        assert not fast.uses_int8(F.normalize(x, dim=-1), fast.cls_embed)
        assert torch.equal(fast(x), plain(x))
