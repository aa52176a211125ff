"""Vocabulary recipe, files and the open-vocabulary ensemble."""
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


TINY_CLIP_CFG = dict(embed_dim=16, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8),
                     text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))


def test_split_synonyms():
    from ovsam.vocabulary import split_synonyms
    assert split_synonyms('tv_or_monitor/Screen') == ['tv', 'monitor', 'screen']
    assert split_synonyms('traffic_light, stoplight ') == ['traffic light', 'stoplight']
    assert split_synonyms(' Traffic   Light') == ['traffic light']
    with pytest.raises(ValueError, match='no usable synonym'):
        split_synonyms(' , ')
    with pytest.raises(TypeError, match='must be a string'):
        split_synonyms(3)


def test_duplicate_and_non_string_names_are_rejected():
    from ovsam.vocabulary import check_class_names
    assert check_class_names(('cat', 'cat,kitty', 'dog')) == ['cat', 'cat,kitty', 'dog']  # sharing one synonym is fine
    for dup in (['Cat', 'cat ', ' CAT'], ['cup,mug', 'Mug, cup'], ['traffic light', 'traffic_light']):
        with pytest.raises(ValueError, match='duplicate classes') as e:
            check_class_names(dup)
        assert repr(dup[0]) in str(e.value) and 'index 1' in str(e.value)
    with pytest.raises(TypeError, match='must be strings'):
        check_class_names(['cat', 3])
    with pytest.raises(TypeError, match='one class per item'):
        check_class_names('cat, dog')
    with pytest.raises(ValueError, match='empty vocabulary'):
        check_class_names([])
    with pytest.raises(ValueError, match='no usable synonym'):
        check_class_names(['cat', ' , '])


def test_resolve_vocabulary(tmp_path):
    import json

    from mmdet.datasets import CocoDataset, LVISV1Dataset
    from ovsam.vocabulary import Vocabulary, resolve_vocabulary
    txt = tmp_path / 'classes.txt'
    txt.write_text('# my classes\ncat\n\n  # indented comment\ncup,mug\ndog # not a comment\n')
    assert resolve_vocabulary(str(txt)) == Vocabulary(['cat', 'cup,mug', 'dog # not a comment'], None)
    js = tmp_path / 'ann.json'
    js.write_text(json.dumps(dict(categories=[dict(id=7, name='b'), dict(id=2, name='a')])))
    assert resolve_vocabulary(str(js)).class_names == ['a', 'b']
    assert resolve_vocabulary('coco').class_names == list(CocoDataset.METAINFO['classes'])
    assert resolve_vocabulary(' LVIS ').class_names == list(LVISV1Dataset.METAINFO['classes'])
    ov = resolve_vocabulary('coco-ov').class_names
    assert len(ov) == 80 and 'couch,sofa' in ov and ov[0] == 'person,people,human'  # COCO-OV scores all 80
    assert resolve_vocabulary('shapes').class_names[0] == 'circle,disc'
    assert resolve_vocabulary(['cat', ' cup,mug ', '']).class_names == ['cat', 'cup,mug']
    assert resolve_vocabulary('dog').class_names == ['dog']
    assert resolve_vocabulary('cat\n# skipped\ncup,mug\n').class_names == ['cat', 'cup,mug']
    emb = tmp_path / 'v.pth'
    torch.save(torch.zeros(2, 1, 4), emb)
    assert resolve_vocabulary(str(emb)) == Vocabulary(None, str(emb))
    vocab = resolve_vocabulary([str(emb), 'coco'])
    assert vocab.embedding_file == str(emb) and len(vocab.class_names) == 80
    assert resolve_vocabulary([str(emb), str(txt)]).class_names[1] == 'cup,mug'
    path, names = resolve_vocabulary(str(txt))  # still unpacks as (embedding_file, class_names)
    assert path is None and names[0] == 'cat'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        resolve_vocabulary(str(tmp_path / 'mistyped.txt'))  # not silently one class named 'mistyped.txt'
    with pytest.raises(FileNotFoundError, match='gen_text_embeddings'):
        resolve_vocabulary(str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='duplicate classes'):
        resolve_vocabulary(['cat', 'Cat'])
    with pytest.raises(ValueError, match='empty vocabulary'):
        resolve_vocabulary(['', ' '])
    with pytest.raises(TypeError, match='must be strings'):
        resolve_vocabulary(['cat', None])
    with pytest.raises(ValueError, match='unknown built-in'):
        from ovsam.vocabulary import builtin_class_names
        builtin_class_names('imagenet')
    from ovsam.apis import builtin_class_names as api_builtin, match_class, resolve_vocabulary as api_resolve
    assert api_resolve is resolve_vocabulary and api_builtin('shapes')[1] == 'square'
    assert match_class('Disc', resolve_vocabulary('shapes').class_names) == 0


class FakeText(torch.nn.Module):
    """Embeds a prompt as a one-hot of its synonym: lets the test predict the result."""

    def __init__(self, words):
        super().__init__()
        self.words = words
        self.prompts = []

    def encode_text(self, prompts):
        self.prompts += prompts
        out = torch.zeros(len(prompts), len(self.words))
        for i, p in enumerate(prompts):
            for j, w in enumerate(self.words):
                if f' {w}' in f' {p}'.replace('.', ' '):
                    out[i, j] = 1. + len(p) % 3  # norm differs per template: must be normalised
        return out


def test_encode_class_names_recipe():
    from ovsam.vocabulary import VILD_TEMPLATES, encode_class_names
    model = FakeText(['cat', 'kitty', 'dog'])
    emb = encode_class_names(model, lambda x: x, ['cat,kitty', 'dog'], progress=False)
    assert emb.shape == (2, 2, 3)
    assert len(model.prompts) == 3 * len(VILD_TEMPLATES)
    assert torch.allclose(emb[0, 0], torch.tensor([1., 0, 0]))
    assert torch.allclose(emb[0, 1], torch.tensor([0, 1., 0]))
    assert torch.allclose(emb[1, 0], emb[1, 1])  # padded with the first synonym
    with pytest.raises(ValueError, match='empty vocabulary'):
        encode_class_names(model, lambda x: x, [], progress=False)


def test_file_round_trip_and_checks(tmp_path):
    from ovsam.vocabulary import load_text_embeddings, save_text_embeddings
    p = str(tmp_path / 'v.pth')
    save_text_embeddings(p, torch.randn(3, 2, 8), ['a', 'b', 'c'])
    emb, names = load_text_embeddings(p, class_names=['a', 'b', 'c'])
    assert emb.shape == (3, 2, 8) and names == ['a', 'b', 'c']
    with pytest.raises(ValueError, match='expects 4'):
        load_text_embeddings(p, num_classes=4)
    with pytest.raises(ValueError, match='other class names'):
        load_text_embeddings(p, class_names=['a', 'x', 'c'])
    with pytest.raises(FileNotFoundError, match='gen_text_embeddings.py'):
        load_text_embeddings(str(tmp_path / 'missing.pth'))
    (tmp_path / 'bad.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a valid text-embedding file'):
        load_text_embeddings(str(tmp_path / 'bad.pth'))


def test_file_check_is_order_sensitive(tmp_path):
    from ovsam.vocabulary import builtin_class_names, load_text_embeddings, save_text_embeddings
    p = str(tmp_path / 'v.pth')
    save_text_embeddings(p, torch.randn(3, 1, 4), ['a', 'b', 'c'])
    with pytest.raises(ValueError, match='same classes in another order'):
        load_text_embeddings(p, class_names=['c', 'b', 'a'])
    shapes = builtin_class_names('shapes')
    save_text_embeddings(p, torch.randn(len(shapes), 2, 4), shapes)
    assert load_text_embeddings(p, class_names='shapes')[1] == shapes  # a spec string is resolved
    with pytest.raises(ValueError, match='other class names'):
        load_text_embeddings(p, class_names=shapes[::-1])


def test_official_bare_tensor_files(tmp_path):
    from mmdet.datasets import CocoDataset, LVISV1Dataset
    from ovsam.models import TextClassifier
    from ovsam.vocabulary import load_text_embeddings
    coco = list(CocoDataset.METAINFO['classes'])
    p = str(tmp_path / 'RN50x16_CocoDataset.pth')
    torch.save(torch.randn(80, 3, 8).half(), p)  # the release's layout: no names inside
    emb, names = load_text_embeddings(p, class_names=coco)
    assert emb.shape == (80, 3, 8) and emb.dtype == torch.float32 and names == coco
    assert load_text_embeddings(p, class_names='coco')[1] == coco
    assert load_text_embeddings(p, class_names='coco', num_classes=80)[0].shape[0] == 80
    with pytest.raises(ValueError, match="no class names inside.*class_names='coco' fits") as e:
        load_text_embeddings(p)
    assert "classifier=dict(vocabulary=" in str(e.value)
    with pytest.raises(ValueError, match='holds 80 classes.*has 1203'):
        load_text_embeddings(p, class_names='lvis')
    with pytest.raises(ValueError, match='holds 80 classes.*has 2'):
        load_text_embeddings(p, class_names=['cat', 'dog'])
    lvis = str(tmp_path / 'RN50x16_LVISV1Dataset.pth')
    torch.save(torch.randn(1203, 1, 4), lvis)
    clf = TextClassifier(vocabulary=lvis, class_names='lvis')  # what a config says
    assert clf.num_classes == 1203 and clf.class_names == list(LVISV1Dataset.METAINFO['classes'])
    assert clf(torch.randn(2, 4)).shape == (2, 1204)
    with pytest.raises(ValueError, match='no class names inside'):
        TextClassifier(vocabulary=lvis)
    txt = tmp_path / 'two.txt'
    txt.write_text('# two classes\ncat\ncup,mug\n')
    two = str(tmp_path / 'two.pth')
    torch.save(torch.randn(2, 2, 4), two)
    assert load_text_embeddings(two, class_names=str(txt))[1] == ['cat', 'cup,mug']
    torch.save(torch.randn(2, 4, 4, 1), two)
    with pytest.raises(ValueError, match='synonyms, dim'):
        load_text_embeddings(two, class_names=['a', 'b'])


def test_vocabulary_hook_checks_order():
    """Regression: the hook checked membership, so a file with the right
    classes in another order passed and every label was silently wrong."""
    from types import SimpleNamespace

    from ovsam.hooks import CheckVocabularyHook
    from ovsam.models import TextClassifier
    clf = TextClassifier()
    clf.set_vocabulary(torch.randn(3, 2, 4), ['circle,disc', 'square', 'triangle'])
    ds = SimpleNamespace(metainfo=dict(classes=('circle', 'Square', 'triangle ')))
    runner = SimpleNamespace(model=SimpleNamespace(mask_decoder=SimpleNamespace(classifier=clf)),
                             val_dataloader=SimpleNamespace(dataset=ds))
    CheckVocabularyHook().before_val(runner)  # same order; case and spaces ignored
    ds.metainfo = dict(classes=('square', 'circle', 'triangle'))
    with pytest.raises(ValueError, match='position by position') as e:
        CheckVocabularyHook().before_val(runner)
    msg = str(e.value)
    assert "another order" in msg and "(0, 'square', 'circle,disc')" in msg and "(1, 'circle', 'square')" in msg
    assert '2 in all' in msg and 'gen_text_embeddings.py' in msg
    ds.metainfo = dict(classes=('circle', 'square', 'hexagon'))
    with pytest.raises(ValueError, match=r"missing from the vocabulary file: \['hexagon'\]"):
        CheckVocabularyHook().before_val(runner)
    clf.class_names = None  # a vocabulary without names: only the count can be checked
    CheckVocabularyHook().before_val(runner)


def test_classifier_logits():
    from ovsam.models import TextClassifier
    clf = TextClassifier()
    t = torch.tensor([[[1., 0.], [0., 1.]], [[-1., 0.], [-1., 0.]]])  # 2 classes, 2 synonyms
    clf.set_vocabulary(t, ['a', 'b'])
    logits = clf(torch.tensor([[0., 2.], [-3., 0.]]))
    scale = torch.tensor(4.6052).exp()
    assert torch.allclose(logits, scale * torch.tensor([[1., 0., 0.], [0., 1., 0.]]), atol=1e-4)


def test_tool_writes_embeddings_for_names(tmp_path):
    import json
    cfg = dict(embed_dim=16, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8),
               text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg))
    out = tmp_path / 'emb.pth'
    r = subprocess.run([sys.executable, 'tools/gen_text_embeddings.py', '--names', 'cup,mug', 'dog',
                        '--clip-model', 'tiny', '--clip-cfg', str(tmp_path / 'cfg.json'),
                        '--allow-random-weights', '--out', str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = torch.load(out, weights_only=True)
    assert data['class_names'] == ['cup,mug', 'dog']
    assert data['embeddings'].shape == (2, 2, 16)
    assert torch.allclose(data['embeddings'].norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    r = subprocess.run([sys.executable, 'tools/gen_text_embeddings.py', '--names', 'x', '--out', str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and '--clip-checkpoint is required' in r.stderr


def test_ensemble_matches_geometric_mean():
    from ovsam.models import open_vocab_ensemble
    torch.manual_seed(0)
    q, c = torch.randn(4, 6), torch.randn(4, 6)
    seen = torch.tensor([True, True, False, False, False, True])
    out = open_vocab_ensemble(q, c, seen, alpha=0.1, beta=0.9)
    pq, pc = q.softmax(-1), c.softmax(-1)
    w = torch.where(seen, torch.tensor(0.1), torch.tensor(0.9))
    assert torch.allclose(out, (pq**(1 - w) * pc**w).log(), atol=1e-5)
    # empty masks: head only
    out = open_vocab_ensemble(q, c, seen, valid=torch.tensor([False, True, True, True]))
    assert torch.allclose(out[0], pq[0].log(), atol=1e-5)
    # classes outside the split
    out = open_vocab_ensemble(q, c, seen, allowed=torch.tensor([True, False, True, True, True]))
    assert torch.all(out[:, 1] == -1000.)
    # log space never yields NaN where probabilities underflow
    q2 = torch.tensor([[200., -200., 0., 0., 0., 0.]])
    out = open_vocab_ensemble(q2, torch.zeros(1, 6), seen)
    assert torch.isfinite(out).all()


def counting_encoder(**kw):
    from ovsam.vocabulary import TextEncoder
    model = FakeText(['cat', 'kitty', 'dog', 'mug', 'cup'])
    return TextEncoder(clip_model='fake', text_model=(model, lambda x: x), **kw), model


def test_text_encoder_memory_cache_and_lru():
    from ovsam.vocabulary import VILD_TEMPLATES, encode_class_names
    enc, model = counting_encoder()
    t = len(VILD_TEMPLATES)
    emb = enc.encode(['cat,kitty', 'dog'])
    assert emb.shape == (2, 2, 5) and len(model.prompts) == 3 * t
    assert torch.allclose(emb, encode_class_names(FakeText(model.words), lambda x: x, ['cat,kitty', 'dog'],
                                                  progress=False))
    again = enc.encode(['Dog', 'kitty, CAT', 'cat'])  # every synonym is cached: the tower is not called
    assert len(model.prompts) == 3 * t
    assert torch.allclose(again[0, 0], emb[1, 0]) and torch.allclose(again[1, 1], emb[0, 0])
    assert torch.allclose(again[2, 1], again[2, 0])  # padded with the first synonym
    assert enc.cache_info()['hits'] == 3 and enc.cache_info()['misses'] == 3
    enc.encode(['mug'])
    assert len(model.prompts) == 4 * t  # only the new synonym
    with pytest.raises(ValueError, match='duplicate classes'):
        enc.encode(['Cat', 'cat ', ' CAT'])
    with pytest.raises(TypeError, match='must be strings'):
        enc.encode(['cat', 7])
    assert len(model.prompts) == 4 * t

    small, model = counting_encoder(cache_size=2)
    small.encode(['cat', 'kitty', 'dog'])
    assert small.cache_info()['size'] == 2 and len(model.prompts) == 3 * t
    small.encode(['dog'])  # most recent: kept
    assert len(model.prompts) == 3 * t
    small.encode(['cat'])  # least recently used: evicted, embedded again
    assert len(model.prompts) == 4 * t and small.cache_info()['size'] == 2


def test_text_encoder_disk_cache(tmp_path):
    import os
    import warnings

    from ovsam.vocabulary import VILD_TEMPLATES, load_text_embeddings
    names = ['cup,mug', 'dog']
    enc, model = counting_encoder(cache_dir=str(tmp_path))
    emb = enc.encode(names)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith('vocab_') and files[0].endswith('.pth')
    path = str(tmp_path / files[0])
    assert load_text_embeddings(path, class_names=names)[0].shape == (2, 2, 5)
    fresh, model2 = counting_encoder(cache_dir=str(tmp_path))  # a new process, in effect
    assert torch.equal(fresh.encode(names), emb) and model2.prompts == []
    for corrupt in (b'not a checkpoint', None):
        if corrupt is None:  # readable, but not what its name promises
            torch.save(dict(embeddings=torch.zeros(2, 2, 5), class_names=['x', 'y'], meta={}), path)
        else:
            with open(path, 'wb') as f:
                f.write(corrupt)
        again, model3 = counting_encoder(cache_dir=str(tmp_path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            out = again.encode(names)
        assert any('corrupt' in str(w.message) and path in str(w.message) for w in caught), caught
        assert torch.allclose(out, emb) and len(model3.prompts) == 3 * len(VILD_TEMPLATES)
        assert load_text_embeddings(path, class_names=names)[1] == names  # re-written
    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]


def test_text_encoder_builds_tiny_tower():
    from ovsam.vocabulary import TextEncoder, build_text_model, encode_class_names, pad_synonyms
    with pytest.raises(RuntimeError, match='no CLIP text weights'):
        TextEncoder('tiny', TINY_CLIP_CFG).encode(['cat'])
    enc = TextEncoder('tiny', TINY_CLIP_CFG, allow_random=True, random_seed=3)
    emb = enc.encode(['cat', 'dog,puppy'])
    assert emb.shape == (2, 2, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    torch.manual_seed(3)
    model, tok = build_text_model('tiny', TINY_CLIP_CFG)
    assert torch.allclose(emb, encode_class_names(model, tok, ['cat', 'dog,puppy'], progress=False), atol=1e-5)
    other = TextEncoder('tiny', TINY_CLIP_CFG, allow_random=True, random_seed=4)
    assert other.identity() != enc.identity()
    assert not torch.allclose(other.encode(['cat']), emb[:1, :1])
    stacked = pad_synonyms([emb[0, :1], emb[1]])
    assert stacked.shape == (2, 2, 16) and torch.equal(stacked[0, 1], emb[0, 0])
