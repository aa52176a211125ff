"""Vocabulary recipe, files and the open-vocabulary ensemble."""
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def test_split_synonyms():
    from ovsam.vocabulary import split_synonyms
    assert split_synonyms('tv_or_monitor/Screen') == ['tv', 'monitor', 'screen']
    assert split_synonyms('traffic_light, stoplight ') == ['traffic light', 'stoplight']
    with pytest.raises(ValueError, match='no usable synonym'):
        split_synonyms(' , ')


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
