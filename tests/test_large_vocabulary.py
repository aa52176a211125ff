"""Large vocabularies: embeddings without padding (SynonymTable), their files,
the classifier's flat layout, and the predictor / generator at 26k classes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_CFG, build_tiny


def _rows(num_classes, dim, max_synonyms, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_synonyms + 1, (num_classes,), generator=g)
    return [F.normalize(torch.randn(int(n), dim, generator=g), dim=-1) for n in counts]


def _names(rows):
    return [','.join([f'class {i}'] + [f'class {i} alias {j}' for j in range(1, len(r))]) for i, r in enumerate(rows)]


def test_table_round_trips_the_released_padded_layout():
    from ovsam.vocabulary import SynonymTable, pad_synonyms
    rows = _rows(30, 8, 5)
    padded = pad_synonyms(rows)  # the released layout: short classes repeat their first synonym
    table = SynonymTable.from_padded(padded)
    assert table.num_rows == sum(len(r) for r in rows) and table.max_synonyms == padded.shape[1]
    assert torch.equal(table.to_padded(), padded)
    assert all(torch.equal(a, b) for a, b in zip(table.to_rows(), rows))
    # canonical order: first synonyms in class order, then the others by (rank, class)
    assert table.class_index[:30].tolist() == list(range(30))
    assert torch.equal(table.embeddings[:30], padded[:, 0])
    # any row order gives the same table
    perm = torch.randperm(table.num_rows, generator=torch.Generator().manual_seed(1))
    shuffled = SynonymTable.from_flat(torch.cat(rows)[perm], torch.repeat_interleave(
        torch.arange(30), torch.tensor([len(r) for r in rows]))[perm], 30)
    key = lambda r: r[torch.argsort(r[:, 0])]  # noqa: E731  (a class's rows as a set)
    assert all(torch.equal(key(a), key(b)) for a, b in zip(shuffled.to_rows(), rows))
    with pytest.raises(ValueError, match=r'classes \[1\] have no synonym row'):
        SynonymTable.from_flat(torch.randn(2, 4), [0, 2])
    with pytest.raises(ValueError, match='canonical order'):
        SynonymTable(torch.randn(2, 4), torch.tensor([1, 0]), 2)


def test_table_files_load_in_every_layout(tmp_path):
    from ovsam.vocabulary import SynonymTable, load_text_embeddings, resolve_vocabulary, save_text_embeddings
    rows = _rows(40, 16, 6)
    names = _names(rows)
    table = SynonymTable.from_rows(rows)
    path = str(tmp_path / 'big.pth')
    save_text_embeddings(path, table, names)
    got, got_names = load_text_embeddings(path, layout='table')
    assert got_names == names and torch.equal(got.embeddings, table.embeddings)
    assert torch.equal(got.class_index, table.class_index)
    padded, _ = load_text_embeddings(path)  # the default stays the released (K, P, D) layout
    assert torch.equal(padded, table.to_padded())
    auto, _ = load_text_embeddings(path, class_names=names, num_classes=40, layout='auto')
    assert isinstance(auto, SynonymTable)
    assert resolve_vocabulary(path).embedding_file == path
    with pytest.raises(ValueError, match='made for other class names'):
        load_text_embeddings(path, class_names=names[::-1])
    with pytest.raises(ValueError, match='model expects 41'):
        load_text_embeddings(path, num_classes=41)
    half = str(tmp_path / 'half.pth')
    save_text_embeddings(half, table, names, dtype=torch.float16)
    assert torch.load(half, weights_only=True)['synonym_embeddings'].dtype == torch.float16  # half the bytes
    h, _ = load_text_embeddings(half, layout='table')
    assert h.embeddings.dtype == torch.float32 and torch.allclose(h.embeddings, table.embeddings, atol=1e-3)
    # damaged tables are refused with the fix
    data = torch.load(path, weights_only=True)
    data['synonym_embeddings'][45, 3] = float('nan')
    torch.save(data, tmp_path / 'nan.pth')
    with pytest.raises(ValueError, match=r'classes \[\d+\] hold NaN'):
        load_text_embeddings(str(tmp_path / 'nan.pth'))
    data = torch.load(path, weights_only=True)
    data['synonym_class'][:] = 0
    torch.save(data, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match='(?s)have no synonym row.*build_vocabulary'):
        load_text_embeddings(str(tmp_path / 'bad.pth'))
    with pytest.raises(ValueError, match='cannot write.*3 class names'):
        save_text_embeddings(str(tmp_path / 'x.pth'), table, names[:3])


def test_flat_classifier_matches_padded(tmp_path):
    from ovsam.models import TextClassifier
    from ovsam.models.classifier import use_flat_layout
    from ovsam.vocabulary import SynonymTable, save_text_embeddings
    rows = _rows(60, 16, 7, seed=2)
    table = SynonymTable.from_rows(rows)
    padded, flat = TextClassifier(layout='padded'), TextClassifier(layout='flat')
    padded.set_vocabulary(table.to_padded())
    flat.set_vocabulary(table)
    assert not padded.flat and flat.flat and flat.num_classes == padded.num_classes == 60
    x = torch.randn(9, 16)
    cos = torch.stack([(F.normalize(x, dim=-1) @ r.t()).max(-1).values for r in rows], 1)
    ref = padded.logit_scale.exp() * cos
    assert torch.allclose(padded(x)[:, :-1], ref, atol=1e-4)
    assert torch.allclose(flat(x), padded(x), atol=1e-4)
    assert (flat(x)[:, -1] == 0).all()  # background
    assert torch.allclose(TextClassifier.buffer_embeddings(flat.cls_embed), table.to_padded(), atol=1e-6)
    # training through the flat layout: the same gradients as the padded one
    labels = torch.arange(9) % 61
    grads = []
    for clf in (flat, padded):
        xg = x.clone().requires_grad_()
        F.cross_entropy(clf(xg), labels).backward()
        grads.append(xg.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    # auto: padded unless padding would waste much (26k classes, a few long synsets)
    assert not use_flat_layout(1203, 20, 2000) and use_flat_layout(26000, 40, 58000)
    auto = TextClassifier()
    auto.set_vocabulary(table.to_padded())
    assert not auto.flat
    # a config naming a table file builds the classifier from it
    save_text_embeddings(str(tmp_path / 't.pth'), table, _names(rows))
    clf = TextClassifier(vocabulary=str(tmp_path / 't.pth'), num_classes=60, layout='flat')
    assert clf.class_names == _names(rows) and torch.allclose(clf(x), padded(x), atol=1e-4)
    with pytest.raises(ValueError, match='width 16'):
        clf(torch.randn(1, 8))


@pytest.fixture(scope='module')
def vocab_26k(tmp_path_factory):
    """A random 26k-class vocabulary at the tiny model's width, as a table file."""
    from ovsam.models.classifier import use_flat_layout
    from ovsam.vocabulary import SynonymTable, save_text_embeddings
    g = torch.Generator().manual_seed(3)
    counts = torch.ones(26000, dtype=torch.long)
    counts[::10] = torch.randint(2, 5, (2600,), generator=g)  # most classes one name, some up to 4
    rows = [F.normalize(torch.randn(int(n), 64, generator=g), dim=-1) for n in counts]
    table = SynonymTable.from_rows(rows)
    assert use_flat_layout(table.num_classes, table.max_synonyms, table.num_rows)
    path = str(tmp_path_factory.mktemp('vocab') / 'joint_26k.pth')
    save_text_embeddings(path, table, _names(rows))
    return path


def _predictor(cfg, layout):
    from ovsam.apis import OVSAMPredictor
    model = build_tiny(cfg)
    model.mask_decoder.classifier.layout = layout
    return OVSAMPredictor(model, clip_model_cfg=cfg.model.backbone.model_cfg, allow_random_text=True)


@pytest.fixture(scope='module')
def cfg():
    from mmengine.config import Config
    return Config.fromfile(TINY_CFG)


def _image():
    return (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)


def test_predictor_top_k_over_26k_classes(cfg, vocab_26k):
    """Top-k names and scores over a 26k-class table file; the flat layout
    answers exactly as the padded one."""
    flat, padded = _predictor(cfg, 'auto'), _predictor(cfg, 'padded')
    for p in (flat, padded):
        p.set_vocabulary_file(vocab_26k)
        p.set_image(_image())
    assert flat.model.mask_decoder.classifier.flat and not padded.model.mask_decoder.classifier.flat
    assert flat.num_classes == 26000 and flat.class_names[10].startswith('class 10,')
    boxes = np.array([[10, 12, 70, 80], [40, 5, 120, 90]], dtype=np.float32)
    a = flat.predict(box=boxes, top_k=5)
    b = padded.predict(box=boxes, top_k=5)
    assert a.class_probs.shape == (2, 26000)
    assert np.array_equal(a.topk_labels, b.topk_labels) and np.allclose(a.topk_scores, b.topk_scores, atol=1e-5)
    order = np.argsort(-a.class_probs, axis=1)[:, :5]
    assert np.array_equal(a.topk_labels, order)
    assert a.topk_names[0] == [flat.class_names[i] for i in a.topk_labels[0]]
    assert np.all(np.diff(a.topk_scores, axis=1) <= 0) and np.all(a.topk_scores > 0)


def test_automatic_generator_over_26k_classes(cfg, vocab_26k):
    """Segment everything with 26k classes (held padded: the generator pins the
    predictor's vocabulary, which the predictor checks as a padded buffer)."""
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    p = _predictor(cfg, 'padded')
    p.set_vocabulary_file(vocab_26k)
    p.set_image(_image())
    anns = OVSAMAutomaticMaskGenerator(p, points_per_side=3, stability_score_thresh=0.0, box_nms_thresh=0.99,
                                       top_k=3).generate()
    assert len(anns) >= 1
    for a in anns:
        assert a['class_name'] == p.class_names[a['label']] and 0 < a['score'] <= 1
        assert len(a['topk']) == 3


def test_automatic_generator_with_the_flat_layout(cfg, vocab_26k):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    p = _predictor(cfg, 'auto')
    p.set_vocabulary_file(vocab_26k)
    p.set_image(_image())
    assert p.model.mask_decoder.classifier.flat
    OVSAMAutomaticMaskGenerator(p, points_per_side=2, stability_score_thresh=0.0).generate()


def test_benchmark_script_runs_small(tmp_path):
    """tools/analysis/benchmark_vocabulary.py end to end at a small size (figures, not timings)."""
    import importlib.util
    import json
    import os
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location('benchmark_vocabulary', os.path.join(
        ROOT, 'tools', 'analysis', 'benchmark_vocabulary.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = str(tmp_path / 'bench.json')
    assert bench.main(['--classes', '300', '--dim', '16', '--threads', '1', '--repeats', '2', '--load-repeats', '1',
                       '--batch', '4', '--agreement-queries', '5', '--out', out]) == 0
    r = json.load(open(out))
    assert r['classes'] == 300 and r['synonym_rows'] >= 300 and r['max_synonyms'] <= 40
    assert r['file_mb'] > 0 and r['recognise_ms'] > 0 and r['layout'] in ('flat', 'padded')
    counts = bench.synonym_counts(5000, 0)
    assert counts.min() >= 1 and counts.max() <= 40 and 1.8 < counts.float().mean() < 2.7
