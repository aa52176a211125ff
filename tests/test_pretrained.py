"""One-folder models (ovsam.pretrained): round trips give identical outputs, bad
folders are refused with the reason, the official files convert in one command."""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, TINY_CFG, build_tiny
from ovsam.checkpoint import CheckpointError
from ovsam.pretrained import (CONFIG_FILE, MANIFEST_FILE, VOCABULARY_FILE, WEIGHTS_FILE, PretrainedFolderError,
                              from_pretrained, load_weights, parameters_on_meta, predictor_from_pretrained,
                              read_config, save_pretrained, save_weights)

BOXES = [[10, 10, 100, 90], [5, 40, 60, 110]]


def _image(seed=0, hw=(120, 160)):
    return (np.random.RandomState(seed).rand(*hw, 3) * 255).astype(np.uint8)


@pytest.fixture(scope='module')
def _template(tmp_path_factory):
    """A tiny predictor with a 4-class vocabulary and a class split, saved once."""
    from ovsam.apis import OVSAMPredictor
    pred = OVSAMPredictor.from_tiny(seed=3)
    pred.set_vocabulary(['disc', 'bee,wasp', 'cup,mug', 'star'], seen_classes=[0, 2])
    folder = tmp_path_factory.mktemp('template') / 'model'
    save_pretrained(pred, folder, config=TINY_CFG)
    return pred, folder


@pytest.fixture
def tiny_predictor(_template):
    return _template[0]


@pytest.fixture
def saved(_template, tmp_path):
    """A copy of the saved folder that the test may damage."""
    shutil.copytree(_template[1], tmp_path / 'model')
    return tmp_path / 'model'


def _outputs(pred, image):
    pred.set_image(image)
    out = pred.predict(box=BOXES, return_logits=True)
    pts = pred.predict(point_coords=[[[50, 60]], [[20, 30]]], point_labels=[[1], [1]])
    return out, pts


def _rewrite_manifest(folder, **changes):
    """Recompute sizes/hashes of the files (after a test changed one) and apply ``changes``."""
    path = folder / MANIFEST_FILE
    man = json.loads(path.read_text())
    for name, info in man['files'].items():
        data = (folder / name).read_bytes()
        info['bytes'], info['sha256'] = len(data), hashlib.sha256(data).hexdigest()
    man.update(changes)
    path.write_text(json.dumps(man))


def test_round_trip_gives_identical_outputs(tiny_predictor, saved):
    assert sorted(os.listdir(saved)) == sorted([CONFIG_FILE, MANIFEST_FILE, VOCABULARY_FILE, WEIGHTS_FILE])
    loaded = predictor_from_pretrained(saved, allow_random_text=True)
    assert loaded.vocabulary.class_names == tiny_predictor.vocabulary.class_names
    assert dict(loaded.vocabulary.split)['base_classes'] == (0, 2)
    img = _image()
    (a, ap), (b, bp) = _outputs(tiny_predictor, img), _outputs(loaded, img)
    for x, y in ((a, b), (ap, bp)):
        assert np.array_equal(x.masks, y.masks)
        assert np.array_equal(x.class_probs, y.class_probs)
        assert np.array_equal(x.boxes, y.boxes)
    assert np.array_equal(a.logits, b.logits)
    # every tensor of the model is the saved one (fast paths have the plain modules' keys)
    sd_a, sd_b = tiny_predictor.model.state_dict(), loaded.model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_predictor_subclass_and_apis_export(saved):
    from ovsam.apis import OVSAMPredictor
    from ovsam.apis import predictor_from_pretrained as exported

    class MyPredictor(OVSAMPredictor):
        pass

    pred = exported(saved, predictor_cls=MyPredictor, fast=False)
    assert type(pred) is MyPredictor and pred.class_names == ['disc', 'bee,wasp', 'cup,mug', 'star']


def test_from_pretrained_returns_model_vocabulary_config(saved, tiny_predictor):
    model, vocab, cfg, manifest = from_pretrained(saved)
    assert not model.training and model.cfg is cfg
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert vocab.class_names == list(tiny_predictor.vocabulary.class_names)
    assert torch.equal(vocab.cls_embed, tiny_predictor.vocabulary.cls_embed)  # the buffer, bit for bit
    assert torch.equal(vocab.embeddings(), tiny_predictor.vocabulary.embeddings())
    assert (vocab.base_classes, vocab.novel_classes) == ([0, 2], None)
    assert manifest['vocabulary']['num_classes'] == 4 and manifest['format_version'] == 1
    assert cfg.model.mask_decoder.classifier.vocabulary is None  # the folder holds the vocabulary
    # the safetensors file is standard: the library reads it to the same tensors
    from safetensors.torch import load_file
    st = load_file(str(saved / WEIGHTS_FILE))
    assert st.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in st.items())


def test_save_model_directly_and_again_from_its_cfg(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg, seed=4)
    src.set_class_split([0, 1], [2, 3])
    save_pretrained(src, tmp_path / 'a', config=tiny_cfg)
    loaded = from_pretrained(tmp_path / 'a')
    assert (loaded.vocabulary.base_classes, loaded.vocabulary.novel_classes) == ([0, 1], [2, 3])
    # model.cfg is set, so a loaded model saves without config=; an existing folder needs overwrite=True
    save_pretrained(loaded.model, tmp_path / 'b')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        save_pretrained(loaded.model, tmp_path / 'b')
    save_pretrained(loaded.model, tmp_path / 'b', overwrite=True)
    from safetensors.torch import load_file
    wa, wb = load_file(str(tmp_path / 'a' / WEIGHTS_FILE)), load_file(str(tmp_path / 'b' / WEIGHTS_FILE))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    again = from_pretrained(tmp_path / 'b').model
    from conftest import make_batch
    inputs, s1 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    _, s2 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    with torch.no_grad():
        a, b = src.predict(inputs, s1)[0].pred_instances, again.predict(inputs, s2)[0].pred_instances
    assert torch.equal(a.masks, b.masks) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)


def test_save_refuses_a_config_of_another_model_and_missing_config(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg)
    other = tiny_cfg.copy()
    other.model = tiny_cfg.model.copy()
    other.model.neck = dict(tiny_cfg.model.neck, depth=1)
    with pytest.raises(ValueError, match='does not describe this model.*unexpected keys: neck.blocks.1'):
        save_pretrained(src, tmp_path / 'x', config=other)
    with pytest.raises(ValueError, match='needs the config'):
        save_pretrained(src, tmp_path / 'y')
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()  # nothing written


def test_bad_folders_are_named(saved, tmp_path):
    with pytest.raises(PretrainedFolderError, match='does not exist'):
        from_pretrained(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(PretrainedFolderError, match='not an ovsam model folder'):
        from_pretrained(tmp_path / 'empty')
    work = tmp_path / 'work_dir'
    work.mkdir()
    (work / 'epoch_12.pth').write_bytes(b'x')
    with pytest.raises(PretrainedFolderError, match='checkpoint files.*from_config'):
        from_pretrained(work)
    with pytest.raises(PretrainedFolderError, match='is a file'):
        from_pretrained(saved / WEIGHTS_FILE)
    assert issubclass(PretrainedFolderError, CheckpointError)


def test_interrupted_missing_truncated_and_changed_files(saved):
    man = (saved / MANIFEST_FILE).read_text()
    (saved / MANIFEST_FILE).unlink()
    with pytest.raises(PretrainedFolderError, match='interrupted'):
        from_pretrained(saved)
    (saved / MANIFEST_FILE).write_text(man)
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(PretrainedFolderError, match=f'missing {WEIGHTS_FILE}'):
        from_pretrained(saved)
    (saved / WEIGHTS_FILE).write_bytes(data[:-100])
    with pytest.raises(PretrainedFolderError, match='bytes, its manifest says'):
        from_pretrained(saved)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (saved / WEIGHTS_FILE).write_bytes(bytes(flipped))
    with pytest.raises(PretrainedFolderError, match='does not match its manifest'):
        from_pretrained(saved)
    (saved / WEIGHTS_FILE).write_bytes(data)
    (saved / CONFIG_FILE).write_text((saved / CONFIG_FILE).read_text().replace('image_size = 256', 'image_size = 255'))
    with pytest.raises(PretrainedFolderError, match='does not match its manifest'):
        from_pretrained(saved)


def test_truncated_weights_with_a_matching_manifest(saved):
    (saved / WEIGHTS_FILE).write_bytes((saved / WEIGHTS_FILE).read_bytes()[:-64])
    _rewrite_manifest(saved)
    with pytest.raises(PretrainedFolderError, match='not a valid safetensors file.*describes'):
        from_pretrained(saved)


def test_newer_format_and_foreign_manifest(saved):
    _rewrite_manifest(saved, format_version=99, ovsam_version='9.0.0')
    with pytest.raises(PretrainedFolderError, match='format 99 .*9.0.0.*upgrade ovsam'):
        from_pretrained(saved)
    _rewrite_manifest(saved, format='something-else', format_version=1)
    with pytest.raises(PretrainedFolderError, match='not an ovsam model manifest'):
        from_pretrained(saved)


def test_config_is_read_as_data_never_run(saved, tmp_path):
    from mmengine.config import Config
    cfg = read_config(str(saved / CONFIG_FILE))  # what save_pretrained writes is data
    assert cfg.model.neck.to_dict() == Config.fromfile(TINY_CFG).model.neck.to_dict()
    marker = tmp_path / 'ran'
    text = (saved / CONFIG_FILE).read_text()
    (saved / CONFIG_FILE).write_text(f"import os\nos.makedirs({str(marker)!r})\n" + text)
    _rewrite_manifest(saved)
    with pytest.raises(PretrainedFolderError, match='not an assignment of a literal'):
        from_pretrained(saved)
    assert 'image_size = 256' in text
    (saved / CONFIG_FILE).write_text(text.replace('image_size = 256', f'image_size = __import__("os").makedirs('
                                                                        f'{str(marker)!r})'))
    _rewrite_manifest(saved)
    with pytest.raises(PretrainedFolderError, match='is code, not data'):
        from_pretrained(saved)
    assert not marker.exists()


def test_strict_loading_lists_missing_and_unexpected_keys(saved):
    from safetensors.torch import load_file
    sd = load_file(str(saved / WEIGHTS_FILE))
    sd.pop('neck.blocks.0.attn.qkv.weight')
    sd['neck.extra'] = torch.zeros(2)
    save_weights(sd, str(saved / WEIGHTS_FILE))
    _rewrite_manifest(saved)
    with pytest.raises(CheckpointError, match=r'missing keys: neck.blocks.0.attn.qkv.weight.*unexpected keys: '
                                              r'neck.extra'):
        from_pretrained(saved)


def test_tied_tensors_are_stored_once_and_tied_again(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied
            self.register_buffer('row', torch.arange(8.).view(2, 4)[0])  # a view of a larger storage

    src = Tied()
    info = save_weights(src, str(tmp_path / 'w.safetensors'))
    assert info['aliases'] == {'b.weight': 'a.weight'}
    from safetensors import safe_open
    with safe_open(str(tmp_path / 'w.safetensors'), 'pt') as f:
        assert 'b.weight' not in f.keys()
    with parameters_on_meta():
        dst = Tied()
    assert dst.a.weight.is_meta and not dst.row.is_meta  # buffers stay real
    load_weights(dst, str(tmp_path / 'w.safetensors'))
    assert dst.a.weight.data_ptr() == dst.b.weight.data_ptr()
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    real = Tied()  # real parameters are copied into
    load_weights(real, str(tmp_path / 'w.safetensors'))
    assert torch.equal(real.a.weight, src.a.weight)
    assert nn.Module.register_parameter is not None and not Tied().a.weight.is_meta  # patch removed


def test_no_vocabulary_model(tiny_cfg, tmp_path):
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    model = MODELS.build(tiny_cfg.model).eval()
    save_pretrained(model, tmp_path / 'm', config=tiny_cfg)
    assert not (tmp_path / 'm' / VOCABULARY_FILE).exists()
    loaded = from_pretrained(tmp_path / 'm')
    assert loaded.vocabulary is None and loaded.model.mask_decoder.classifier.num_classes == 0


# ------------------------------------------------------------------ the converter
def _converter(name='official_to_pretrained'):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', 'model_converters', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('with_sam', [True, False])
def test_official_files_convert_to_one_folder(tiny_cfg, tmp_path, with_sam, capsys):
    from test_checkpoints import _tiny_clip, _write_official_files

    from ovsam.checkpoint import load_clip_visual
    from ovsam.vocabulary import save_text_embeddings
    src = build_tiny(tiny_cfg, seed=1)
    clip = _tiny_clip(tiny_cfg)
    torch.save(clip.state_dict(), tmp_path / 'c.pt')
    load_clip_visual(src.backbone, str(tmp_path / 'c.pt'))
    files = _write_official_files(src, clip, tmp_path)
    emb = src.mask_decoder.classifier.cls_embed.permute(1, 2, 0)[:-1].clone()
    save_text_embeddings(str(tmp_path / 'vocab.pth'), emb, ['a', 'b', 'c', 'd', 'e'])
    out = tmp_path / 'folder'
    argv = [str(out), '--config', TINY_CFG, '--clip', files['clip'], '--sam2clip', files['sam2clip'],
            '--clip2sam', files['clip2sam'], '--vocabulary', str(tmp_path / 'vocab.pth'),
            '--sam', files['sam'] if with_sam else 'none']
    assert _converter().main(argv) == 0
    assert 'wrote' in capsys.readouterr().out
    loaded = from_pretrained(out)
    assert loaded.vocabulary.class_names == ['a', 'b', 'c', 'd', 'e']
    sd = loaded.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in src.state_dict().items())
    man = loaded.manifest
    assert man['metadata']['converted_from']['clip2sam'] == 'clip2sam_tiny.pth'
    assert ('pe' in man['metadata']['converted_from']) != with_sam
    from conftest import make_batch
    inputs, s1 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    _, s2 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    with torch.no_grad():
        a, b = src.predict(inputs, s1)[0].pred_instances, loaded.model.predict(inputs, s2)[0].pred_instances
    assert torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)


def test_converter_errors_without_traceback(tmp_path, capsys):
    conv = _converter()
    assert conv.main([str(tmp_path / 'o'), '--config', TINY_CFG]) == 1
    assert 'no file for' in capsys.readouterr().err
    args = [str(tmp_path / 'o'), '--config', TINY_CFG, '--clip', str(tmp_path / 'missing.pt'), '--sam2clip', 'x',
            '--clip2sam', 'y', '--vocabulary', 'v.pth']
    assert conv.main(args) == 1
    err = capsys.readouterr().err
    assert 'official_to_pretrained:' in err and 'Traceback' not in err
    assert not (tmp_path / 'o').exists()


def test_nonfinite_weights_are_refused_when_saving_and_named_when_loading(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg)
    with torch.no_grad():
        src.neck.blocks[0].attn.qkv.weight[0, 0] = float('nan')
    with pytest.raises(CheckpointError, match='NaN or Inf'):
        save_pretrained(src, tmp_path / 'm', config=tiny_cfg)
    assert not (tmp_path / 'm').exists()
    save_pretrained(src, tmp_path / 'm', config=tiny_cfg, allow_nonfinite=True)
    with pytest.raises(PretrainedFolderError, match='NaN or Inf.*allow_nonfinite=True'):
        from_pretrained(tmp_path / 'm')
    loaded = from_pretrained(tmp_path / 'm', allow_nonfinite=True).model
    assert torch.isnan(loaded.neck.blocks[0].attn.qkv.weight[0, 0])


def test_trained_checkpoint_converts_to_one_folder(tiny_cfg, tmp_path, capsys):
    from ovsam.vocabulary import save_text_embeddings
    src = build_tiny(tiny_cfg, seed=6)
    src.set_class_split([1, 2])
    torch.save(dict(state_dict=src.state_dict(), meta=dict(epoch=12)), tmp_path / 'epoch_12.pth')
    emb = src.mask_decoder.classifier.cls_embed.permute(1, 2, 0)[:-1].clone()
    save_text_embeddings(str(tmp_path / 'vocab.pth'), emb, ['a', 'b', 'c', 'd', 'e'])
    cfg = tiny_cfg.copy()
    cfg.model = dict(tiny_cfg.model, base_classes=[1, 2])
    conv = _converter('checkpoint_to_pretrained')
    cfg_path = tmp_path / 'cfg.py'
    cfg_path.write_text(cfg.pretty_text)
    argv = [str(cfg_path), str(tmp_path / 'epoch_12.pth'), str(tmp_path / 'out'), '--vocabulary',
            str(tmp_path / 'vocab.pth')]
    assert conv.main(argv) == 0 and 'wrote' in capsys.readouterr().out
    loaded = from_pretrained(tmp_path / 'out')
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in src.state_dict().items())
    assert loaded.vocabulary.class_names == ['a', 'b', 'c', 'd', 'e'] and loaded.vocabulary.base_classes == [1, 2]
    sd = src.state_dict()
    sd.pop('pe.no_mask_embed.weight')
    torch.save(sd, tmp_path / 'partial.pth')
    argv[1], argv[2] = str(tmp_path / 'partial.pth'), str(tmp_path / 'out2')
    assert conv.main(argv) == 1
    assert 'missing keys: pe.no_mask_embed.weight' in capsys.readouterr().err
    assert not (tmp_path / 'out2').exists()


def test_without_sam_the_release_clip2sam_file_holds_the_whole_prompt_encoder():
    """The converter's --sam none path reads pe.* of the CLIP2SAM release: checked on its
    published layout against the real-size model, built on the meta device."""
    from conftest import REAL_CFG, REFERENCE
    from mmdet.registry import MODELS
    from mmengine.config import Config
    layout = json.loads(open(osp.join(REFERENCE, 'clip2sam_coco_rn50x16.json')).read())['state_dict']
    pe = {k[3:]: v['shape'] for k, v in layout.items() if k.startswith('pe.')}
    with parameters_on_meta():
        model = MODELS.build(Config.fromfile(REAL_CFG).model)
    assert pe == {k: list(v.shape) for k, v in model.pe.state_dict().items()}


def test_lvis_frequency_split_is_saved_and_the_annotation_file_is_not_needed(tiny_cfg, tmp_path):
    ann = tmp_path / 'lvis_mini.json'
    cats = [dict(id=i + 1, name=f'c{i}', frequency=f) for i, f in enumerate('fcrcf')]
    ann.write_text(json.dumps(dict(images=[], annotations=[], categories=cats)))
    src = build_tiny(tiny_cfg, type='OVSAMFrequencySplit', split_ann_file=str(ann))
    save_pretrained(src, tmp_path / 'm', config=dict(model=dict(tiny_cfg.model, type='OVSAMFrequencySplit',
                                                                 split_ann_file=str(ann))))
    assert src._split_resolved is False  # read on a copy: saving changes nothing in the model
    ann.unlink()  # offline: the split travels in the folder
    loaded = from_pretrained(tmp_path / 'm')
    assert (loaded.vocabulary.base_classes, loaded.vocabulary.novel_classes) == ([0, 1, 3, 4], [2])
    assert type(loaded.model).__name__ == 'OVSAMFrequencySplit'
    seen, allowed = loaded.model.class_split(5)
    assert seen.tolist() == [True, True, False, True, True, True] and allowed.tolist() == [True] * 5


def test_flat_vocabulary_layout_round_trip(tiny_cfg, tmp_path):
    """A vocabulary held flat (one row per synonym, no padding) comes back flat and exact."""
    clf_cfg = dict(tiny_cfg.model.mask_decoder.classifier, layout='flat')
    src = build_tiny(tiny_cfg, mask_decoder=dict(tiny_cfg.model.mask_decoder, classifier=clf_cfg))
    assert src.mask_decoder.classifier.flat
    save_pretrained(src, tmp_path / 'm', config=dict(model=dict(
        tiny_cfg.model, mask_decoder=dict(tiny_cfg.model.mask_decoder, classifier=clf_cfg))))
    loaded = from_pretrained(tmp_path / 'm')
    assert loaded.manifest['vocabulary']['layout'] == 'flat'
    assert torch.equal(loaded.model.mask_decoder.classifier.cls_embed, src.mask_decoder.classifier.cls_embed)
    from conftest import make_batch
    inputs, s1 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    _, s2 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    with torch.no_grad():
        a, b = src.predict(inputs, s1)[0].pred_instances, loaded.model.predict(inputs, s2)[0].pred_instances
    assert torch.equal(a.masks, b.masks) and torch.equal(a.scores, b.scores)


def test_vocabulary_that_does_not_fit_the_model(saved):
    from safetensors.torch import load_file
    buf = load_file(str(saved / VOCABULARY_FILE))['cls_embed']
    save_weights(dict(cls_embed=buf[:32]), str(saved / VOCABULARY_FILE),
                 metadata=dict(class_names=json.dumps(['disc', 'bee,wasp', 'cup,mug', 'star'])))
    _rewrite_manifest(saved)
    with pytest.raises(PretrainedFolderError, match='does not fit this model'):
        from_pretrained(saved)
