"""Bad and edge inputs for files read from disk: checkpoints, detector
proposal files, COCO annotations, SA-1B split lists and the feature dump.
Each case asserts the exact outcome: a correct result, or an exception naming
the file, the record and the fix."""
import importlib.util
import json
import os
import os.path as osp
import pickle
import zipfile

import numpy as np
import pytest
import torch

from ovsam.checkpoint import (CheckpointError, load_clip_state_dict, load_module_from_checkpoint,
                              load_state_dict_strict, safe_load, sniff_format, unwrap_state_dict)
from ovsam.datasets.ann_index import load_annotation_index
from ovsam.datasets.checked_coco import AnnotationError, rle_string_counts, validate_coco
from ovsam.datasets.proposals import LoadProposalPrompts, ProposalFileError, read_detections
from ovsam.datasets.sa1b import SA1BDataset, split_entry_key

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ----------------------------------------------------------------- checkpoints
@pytest.fixture
def ckpts(tmp_path):
    sd = {'w': torch.randn(4, 4), 'b': torch.zeros(4)}
    good = tmp_path / 'good.pth'
    torch.save(sd, good)
    data = good.read_bytes()
    files = dict(good=good)
    files['empty'] = tmp_path / 'empty.pth'
    files['empty'].write_bytes(b'')
    files['truncated'] = tmp_path / 'truncated.pth'
    files['truncated'].write_bytes(data[:len(data) // 2])
    files['random'] = tmp_path / 'random.pth'
    files['random'].write_bytes(np.random.RandomState(0).bytes(4096))
    files['zip'] = tmp_path / 'other.pth'
    with zipfile.ZipFile(files['zip'], 'w') as z:
        z.writestr('readme.txt', 'hello')
    files['html'] = tmp_path / 'html.pth'
    files['html'].write_text('<!DOCTYPE html><html><body>Access denied</body></html>')
    files['npy'] = tmp_path / 'arr.pth'
    with open(files['npy'], 'wb') as f:
        np.save(f, np.zeros(3))
    files['legacy'] = tmp_path / 'legacy.pth'
    torch.save(sd, files['legacy'], _use_new_zipfile_serialization=False)
    legacy = files['legacy'].read_bytes()
    files['legacy_truncated'] = tmp_path / 'legacy_trunc.pth'
    files['legacy_truncated'].write_bytes(legacy[:len(legacy) // 2])
    from safetensors.torch import save_file
    files['safetensors_as_pth'] = tmp_path / 'st.pth'
    save_file(sd, str(files['safetensors_as_pth']))
    st = files['safetensors_as_pth'].read_bytes()
    files['safetensors_truncated'] = tmp_path / 'st_trunc.safetensors'
    files['safetensors_truncated'].write_bytes(st[:len(st) - 20])
    files['pth_as_safetensors'] = tmp_path / 'real.safetensors'
    files['pth_as_safetensors'].write_bytes(data)
    files['gzip'] = tmp_path / 'g.pth'
    files['gzip'].write_bytes(b'\x1f\x8b\x08\x00' + b'\x00' * 20)
    return sd, files


@pytest.mark.parametrize('name, text', [
    ('empty', 'is empty (0 bytes'),
    ('truncated', 'truncated or corrupt'),
    ('random', 'not a format PyTorch writes'),
    ('zip', 'zip archive but not a PyTorch checkpoint'),
    ('html', 'an HTML page (a failed download'),
    ('npy', 'NumPy .npy array'),
    ('legacy_truncated', 'corrupt or truncated'),
    ('safetensors_truncated', 'damaged safetensors file'),
    ('gzip', 'gzip archive'),
])
def test_damaged_and_mislabelled_checkpoints_say_what_they_are(ckpts, name, text):
    _, files = ckpts
    with pytest.raises(CheckpointError) as e:
        safe_load(str(files[name]))
    msg = str(e.value)
    assert text in msg and osp.basename(files[name]) in msg, msg
    assert 'could run code' not in msg  # not blamed on pickled objects


def test_readable_checkpoints_load_whatever_their_name(ckpts):
    sd, files = ckpts
    for name in ('good', 'legacy', 'safetensors_as_pth', 'pth_as_safetensors'):
        out = safe_load(str(files[name]))
        assert set(out) == set(sd) and torch.equal(out['w'], sd['w']), name
    assert sniff_format(str(files['safetensors_as_pth'])) == 'safetensors'


def test_pickle_payload_is_still_refused_as_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    p = tmp_path / 'evil.pth'
    torch.save({'w': Payload()}, p)
    with pytest.raises(CheckpointError, match='could run code'):
        safe_load(str(p))


def test_directory_missing_and_non_path(tmp_path):
    (tmp_path / 'model.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file.*'model.pth'"):
        safe_load(str(tmp_path))
    with pytest.raises(CheckpointError, match='does not exist'):
        safe_load(str(tmp_path / 'nope.pth'))
    with pytest.raises(CheckpointError, match='must be a string, got NoneType'):
        safe_load(None)
    with pytest.raises(CheckpointError, match='is a directory'):
        load_clip_state_dict(str(tmp_path))


def test_torchscript_only_where_a_clip_was_asked_for(tmp_path):
    m = torch.jit.script(torch.nn.Linear(2, 2))
    p = tmp_path / 'ts.pth'
    m.save(str(p))
    with pytest.raises(CheckpointError, match='TorchScript archive, which runs code when loaded'):
        safe_load(str(p))
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match='TorchScript'):
        load_module_from_checkpoint(lin, str(p))
    with pytest.raises(CheckpointError, match='allow_torchscript=False'):
        load_clip_state_dict(str(p), allow_torchscript=False)
    assert set(load_clip_state_dict(str(p))) == {'weight', 'bias'}


@pytest.mark.parametrize('obj, text', [
    ({'w': torch.zeros(2), 'epoch': 3}, "non-tensor values: 'epoch' (int)"),
    ({'state_dict': {'w': torch.zeros(2), 'cfg': 'x'}}, "'cfg' (str)"),
    ({'w': [1.0, 2.0]}, "'w' (list)"),
    ({}, 'holds no state dict (an empty dict)'),
    ([torch.zeros(2)], 'holds no state dict (a list)'),
    (torch.zeros(3, 3), 'a single tensor of shape (3, 3)'),
    ({1: torch.zeros(2)}, 'keys must be strings'),
])
def test_state_dicts_hold_named_tensors(obj, text):
    with pytest.raises(CheckpointError) as e:
        unwrap_state_dict(obj, 'x.pth')
    assert text in str(e.value) and 'x.pth' in str(e.value), str(e.value)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf')])
def test_nonfinite_weights_are_refused_unless_allowed(tmp_path, value):
    lin = torch.nn.Linear(2, 2)
    sd = {k: v.clone() for k, v in lin.state_dict().items()}
    sd['weight'][0, 0] = value
    p = tmp_path / 'diverged.pth'
    torch.save(sd, p)
    before = lin.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"diverged.pth.*NaN or Inf, e.g. \['weight'\].*allow_nonfinite=True"):
        load_module_from_checkpoint(lin, str(p))
    assert torch.equal(lin.weight, before)  # nothing was loaded
    load_module_from_checkpoint(lin, str(p), allow_nonfinite=True)
    assert not torch.isfinite(lin.weight).all()
    with pytest.raises(CheckpointError, match='non-tensor values'):
        load_state_dict_strict(lin, {'weight': 1.0, 'bias': torch.zeros(2)})


# ------------------------------------------------------------- proposal files
CATS = [dict(id=1, name='cat'), dict(id=3, name='dog')]
IMAGES = [dict(id=10, height=100, width=200, file_name='a.png'), dict(id=11, height=50, width=50, file_name='b.png')]


def _ann(tmp_path, images=IMAGES, cats=CATS):
    p = tmp_path / 'ann.json'
    p.write_text(json.dumps(dict(images=images, annotations=[], categories=cats)))
    return str(p)


def _dets(tmp_path, dets, name='dets.json'):
    p = tmp_path / name
    p.write_text(json.dumps(dets))
    return str(p)


def _det(**kw):
    d = dict(image_id=10, category_id=1, bbox=[10, 10, 20, 20], score=0.9)
    d.update(kw)
    return d


@pytest.mark.parametrize('field, value, text', [
    ('image_id', True, 'entry 1 image_id is the boolean True'),
    ('image_id', 10.5, 'entry 1 image_id is 10.5 (float), not a whole number'),
    ('image_id', '10', "entry 1 image_id is '10' (str)"),
    ('image_id', None, 'image_id is None'),
    ('category_id', 1.7, 'entry 1 category_id is 1.7'),
    ('category_id', False, 'category_id is the boolean False'),
    ('category_id', '1', "category_id is '1'"),
    ('score', '0.9', "entry 1 score is '0.9' (str), not a number"),
    ('score', True, 'score is True (bool)'),
    ('score', None, 'score is None'),
    ('bbox', [1, 2, 3], 'bbox [1, 2, 3] is not [x, y, w, h]'),
    ('bbox', [1, 2, '3', 4], "value is '3' (str)"),
    ('bbox', [1, 2, True, 4], 'value is True (bool)'),
    ('bbox', '1,2,3,4', 'is not [x, y, w, h]'),
    ('bbox', {'x': 1}, 'is not [x, y, w, h]'),
])
def test_proposal_json_values_must_be_numbers(tmp_path, field, value, text):
    p = _dets(tmp_path, [_det(), _det(**{field: value})])
    with pytest.raises(ProposalFileError) as e:
        read_detections(p)
    assert text in str(e.value) and 'dets.json' in str(e.value), str(e.value)


def test_integral_float_ids_are_whole_numbers(tmp_path):
    p = _dets(tmp_path, [_det(image_id=10.0, category_id=3.0)])
    t = LoadProposalPrompts(p, ann_file=_ann(tmp_path))
    assert t.counts['kept'] == 1 and 10 in t._by_image and t._by_image[10][2].tolist() == [1]


@pytest.mark.parametrize('kwargs, text', [
    (dict(score_thr=float('nan')), 'score_thr must be a finite number'),
    (dict(score_thr=float('inf')), 'score_thr must be a finite number'),
    (dict(score_thr='0.5'), "got '0.5'"),
    (dict(score_thr=True), 'got True'),
    (dict(topk=0), 'topk must be a whole number >= 1'),
    (dict(topk=2.5), 'got 2.5'),
    (dict(topk=True), 'got True'),
    (dict(category_map={True: 0}), 'boolean'),
    (dict(category_map={1: 0.5}), 'not a whole number'),
    (dict(category_map={1: 'horse'}), "class 'horse' is not a dataset class"),
    (dict(category_map={1: 5}), 'out of range'),
    (dict(category_map=[(1, 0)]), 'must be a dict'),
    (dict(classes='cat'), 'got the string'),
])
def test_proposal_options(tmp_path, kwargs, text):
    p = _dets(tmp_path, [_det()])
    with pytest.raises((ValueError, TypeError)) as e:
        LoadProposalPrompts(p, ann_file=_ann(tmp_path), **kwargs)
    assert text in str(e.value), str(e.value)


def _pickle(tmp_path, entries, name='r.pkl'):
    p = tmp_path / name
    with open(p, 'wb') as f:
        pickle.dump(entries, f)
    return str(p)


def _pred(boxes=((1., 1., 5., 5.),), scores=(0.9,), labels=(0,)):
    return dict(bboxes=torch.tensor(boxes), scores=torch.tensor(scores), labels=torch.tensor(labels))


def test_same_file_name_in_two_folders_is_refused(tmp_path):
    p = _pickle(tmp_path, [dict(img_path='/data/val/0001.jpg', pred_instances=_pred()),
                           dict(img_path='/data/train/0001.jpg', pred_instances=_pred())])
    with pytest.raises(ProposalFileError, match=r"entries 0 \('/data/val/0001.jpg'\) and 1 "
                                                r"\('/data/train/0001.jpg'\) have the same file name"):
        read_detections(p)


@pytest.mark.parametrize('entry, text', [
    (dict(img_id=True, pred_instances=_pred()), 'entry 1 img_id is the boolean True'),
    (dict(img_id=10.5, pred_instances=_pred()), 'img_id is 10.5'),
    (dict(img_id=10, pred_instances=_pred()), 'entries 0 and 1 are both image 10'),
    (dict(img_id=11, pred_instances=_pred(labels=(0.5,))), 'non-integer values [0.5]'),
    (dict(img_id=11, pred_instances=dict(bboxes=np.ones((1, 4)), scores=np.array([True]),
                                         labels=np.zeros(1, int))), 'scores holds booleans'),
    (dict(img_id=11, pred_instances=dict(bboxes=np.array([['1', '2', '3', '4']]), scores=np.ones(1),
                                         labels=np.zeros(1, int))), 'bboxes holds strings'),
])
def test_bad_pickle_entries(tmp_path, entry, text):
    p = _pickle(tmp_path, [dict(img_id=10, pred_instances=_pred()), entry])
    with pytest.raises(ProposalFileError) as e:
        read_detections(p)
    assert text in str(e.value) and 'r.pkl' in str(e.value), str(e.value)


def test_detection_cache_is_bounded(tmp_path):
    from ovsam.datasets import proposals as P
    for i in range(P._TABLES_SIZE + 3):
        read_detections(_dets(tmp_path, [_det()], name=f'd{i}.json'))
    assert len(P._TABLES) <= P._TABLES_SIZE


# ---------------------------------------------------------- COCO annotations
def _coco(**over):
    raw = dict(images=[dict(id=1, height=20, width=30, file_name='a.jpg'),
                       dict(id=2, height=20, width=30, file_name='b.jpg')],
               categories=[dict(id=1, name='cat'), dict(id=2, name='dog')],
               annotations=[dict(id=5, image_id=1, category_id=1, bbox=[1, 1, 10, 10], area=100, iscrowd=0,
                                 segmentation=[[1, 1, 11, 1, 11, 11, 1, 11]])])
    for key, value in over.items():
        if key.startswith('ann_'):
            raw['annotations'][0][key[4:]] = value
        elif key.startswith('img_'):
            raw['images'][0][key[4:]] = value
        elif key.startswith('cat_'):
            raw['categories'][0][key[4:]] = value
        else:
            raw[key] = value
    return raw


def _drop(key, prefix):
    raw = _coco()
    target = dict(ann=raw['annotations'][0], img=raw['images'][0], cat=raw['categories'][0])[prefix]
    del target[key]
    return raw


def _rle(counts, size=(20, 30)):
    return dict(counts=counts, size=list(size))


@pytest.mark.parametrize('raw, text', [
    (_coco(ann_segmentation=[[1, 1, 5, 5, 9, 9]]), 'polygon 0 has zero area'),
    (_coco(ann_segmentation=[[1, 1, 1, 1, 1, 1, 1, 1]]), 'zero area'),
    (_coco(ann_segmentation=[[1, 1, 'a', 1, 11, 11]]), "polygon 0 holds 'a'"),
    (_coco(ann_segmentation=[[1, 1, None, 1, 11, 11]]), 'polygon 0 holds None'),
    (_coco(ann_segmentation=[[1, True, 5, 1, 11, 11]]), 'polygon 0 holds True'),
    (_coco(ann_segmentation=[[1, 1, float('nan'), 1, 11, 11]]), 'NaN or Inf'),
    (_coco(ann_segmentation=[[[1, 1], [5, 1], [5, 5]]]), 'coordinates must be numbers'),
    (_coco(ann_segmentation=[[1, 1, 5, 1]]), 'polygon with 2 points'),
    (_coco(ann_segmentation=['1 1 5 5']), 'polygon 0 is a str'),
    (_coco(ann_segmentation=[]), 'empty segmentation'),
    (_coco(ann_segmentation=_rle('garbage!!~~')), 'RLE counts string is garbage'),
    (_coco(ann_segmentation=_rle('0')), 'add up to 0 pixels'),
    (_coco(ann_segmentation=_rle([100, 50])), 'add up to 150 pixels, the image has 20 x 30 = 600'),
    (_coco(ann_segmentation=_rle([700, -100])), 'negative run length'),
    (_coco(ann_segmentation=_rle([600, 'x'])), "RLE counts hold 'x'"),
    (_coco(ann_segmentation=_rle([600])), 'empty mask'),
    (_coco(ann_segmentation=_rle([300, 300], size=(30, 20))), 'differs from the image size'),
    (_coco(ann_segmentation=_rle([300, 300], size=('20', 30))), 'is not [height, width]'),
    (_coco(ann_segmentation=_rle(12)), 'counts must be a string or a list'),
    (_coco(ann_segmentation=dict(counts=[1])), 'needs "size" and "counts"'),
    (_coco(ann_segmentation='mask'), 'must be polygons or RLE'),
    (_drop('bbox', 'ann'), 'annotation 5 (image 1) has no "bbox"'),
    (_coco(ann_bbox=[1, 1, 'w', 5]), "bbox [1, 1, 'w', 5]"),
    (_coco(ann_bbox=[1, 1, 5]), 'a bbox is [x, y, width, height]'),
    (_coco(ann_bbox=[1, 1, float('inf'), 5]), 'finite numbers'),
    (_drop('area', 'ann'), 'area None (missing)'),
    (_coco(ann_iscrowd=2), 'iscrowd 2'),
    (_coco(ann_id='5'), "annotation entry 0 has the id '5'"),
    (_coco(ann_image_id=99), 'annotation 5 refers to unknown image 99'),
    (_coco(ann_image_id=True), 'unknown image True'),
    (_coco(ann_category_id=9), 'unknown category 9'),
    (_drop('height', 'img'), 'image 1 (entry 0) has height None (missing)'),
    (_coco(img_width=0), 'has width 0'),
    (_coco(img_height=20.5), 'has height 20.5'),
    (_coco(img_id=2), "image id 2 is used twice (entries 0 and 1: 'a.jpg', 'b.jpg')"),
    (_coco(img_id=None), 'image entry 0'),
    (_drop('file_name', 'img'), 'has no "file_name"'),
    (_drop('name', 'cat'), 'category 1 (entry 0) has no "name"'),
    (_coco(cat_name=''), 'has no "name"'),
    (_coco(cat_id=2), 'category id 2 is used twice'),
    (_coco(cat_name='dog'), "category name 'dog' is used twice"),
    (_coco(images={}), '"images" is a dict, not a list'),
    ([], 'holds a JSON list, not a COCO instance file'),
])
def test_bad_coco_annotations(raw, text):
    with pytest.raises(AnnotationError) as e:
        validate_coco(raw, 'ann.json')
    assert text in str(e.value) and 'ann.json' in str(e.value), str(e.value)


def test_duplicate_annotation_ids_and_skipped_boxes_are_counted():
    raw = _coco()
    raw['annotations'].append(dict(raw['annotations'][0]))
    with pytest.raises(AnnotationError, match='annotation id 5 is used twice'):
        validate_coco(raw, 'ann.json')
    raw = _coco()
    extra = [dict(id=6, image_id=1, category_id=1, bbox=[100, 100, 5, 5], area=25, iscrowd=0),
             dict(id=7, image_id=2, category_id=2, bbox=[1, 1, 0.5, 8], area=4, iscrowd=0)]
    raw['annotations'] += extra
    counts = validate_coco(raw, 'ann.json')
    assert counts['box_outside_image'] == 1 and counts['box_outside_image_ids'] == [6]
    assert counts['zero_area_box'] == 1 and counts['zero_area_box_ids'] == [7]


def test_valid_rle_passes_and_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils
    m = np.zeros((20, 30), np.uint8, order='F')
    m[3:9, 4:17] = 1
    rle = mask_utils.encode(m)
    counts = rle['counts'].decode()
    runs = rle_string_counts(counts)
    assert sum(runs) == 600 and sum(runs[1::2]) == int(m.sum())
    validate_coco(_coco(ann_segmentation=dict(counts=counts, size=[20, 30])), 'ann.json')
    validate_coco(_coco(ann_segmentation=dict(counts=rle['counts'], size=[20, 30])), 'ann.json')


@pytest.mark.parametrize('images, cats, text', [
    ([dict(id=1, width=3)], CATS, 'image 1 (entry 0) has height None (missing)'),
    ([dict(id=1, height=2, width=3), dict(id=1, height=2, width=3)], CATS, 'image id 1 is used twice'),
    ([dict(id=True, height=2, width=3)], CATS, 'needs an integer "id"'),
    (IMAGES, [dict(id=1)], 'category 1 (entry 0) has no "name"'),
    (IMAGES, [dict(id=1, name='a'), dict(id=1, name='b')], 'category id 1 is used twice'),
])
def test_annotation_index_checks(tmp_path, images, cats, text):
    with pytest.raises(ValueError) as e:
        load_annotation_index(_ann(tmp_path, images, cats))
    assert text in str(e.value) and 'ann.json' in str(e.value), str(e.value)


def test_annotation_index_cache_is_bounded(tmp_path):
    from ovsam.datasets import ann_index
    for i in range(ann_index._CACHE_SIZE + 3):
        d = tmp_path / str(i)
        d.mkdir()
        load_annotation_index(_ann(d))
    assert len(ann_index._CACHE) <= ann_index._CACHE_SIZE


# ------------------------------------------------------ SA-1B and the dump
@pytest.mark.parametrize('entry, key', [
    ('sa_1.jpg', 'sa_1'), ('sa_1', 'sa_1'), ('sub/sa_1.jpg', 'sub/sa_1'), ('./sub//sa_1.jpg', 'sub/sa_1'),
    ('a.b/sa_1.png', 'a.b/sa_1'),
])
def test_split_entries(entry, key):
    assert split_entry_key(entry)[0] == key


@pytest.mark.parametrize('entry, text', [
    ('../secret.jpg', 'leaves the image folder'), ('sub/../../x.jpg', 'leaves the image folder'),
    ('/etc/passwd', 'is an absolute path'), ('\\\\server\\x.jpg', 'absolute path'),
    ('C:\\x.jpg', 'absolute path'), ('./', 'names no image'),
    ('a\x00b', 'NUL'),
])
def test_split_entries_outside_the_image_folder_are_refused(entry, text):
    with pytest.raises(ValueError, match='train.txt: line 3') as e:
        split_entry_key(entry, 'train.txt', 3)
    assert text in str(e.value)


def _sa1b(tmp_path, lines):
    (tmp_path / 'images').mkdir(exist_ok=True)
    (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
    return SA1BDataset(data_root=str(tmp_path), split_file='train.txt', img_dir='images', feat_dir='feats',
                       pipeline=[], lazy_init=False)


def test_sa1b_features_keyed_by_relative_path(tmp_path):
    ds = _sa1b(tmp_path, ['# SA-1B subset', 'a/sa_1.jpg', '', 'b/sa_1.jpg', 'sa_2'])
    feats = [ds.get_data_info(i)['feat_path'] for i in range(len(ds))]
    assert [osp.relpath(f, tmp_path) for f in feats] == ['feats/a/sa_1.pth', 'feats/b/sa_1.pth', 'feats/sa_2.pth']
    assert ds.get_data_info(0)['img_path'] == osp.join(str(tmp_path), 'images', 'a/sa_1.jpg')


@pytest.mark.parametrize('lines, text', [
    (['sa_1.jpg', 'sa_1.png'], "line 2 ('sa_1.png') and line 1 ('sa_1.jpg') would share one feature file"),
    (['sa_1.jpg', 'sa_2.jpg', 'sa_1.jpg'], 'line 3 (\'sa_1.jpg\') and line 1 (\'sa_1.jpg\') list the same image'),
    (['sa_1.jpg', '../../outside.jpg'], 'line 2'),
    (['# nothing'], 'is empty'),
])
def test_sa1b_bad_split_lists(tmp_path, lines, text):
    with pytest.raises(ValueError) as e:
        _sa1b(tmp_path, lines)
    assert text in str(e.value) and 'train.txt' in str(e.value), str(e.value)


def _dump_tool():
    spec = importlib.util.spec_from_file_location('dump_sam_features', osp.join(ROOT, 'tools', 'dump_sam_features.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('shard, text', [
    ('0/0', 'must be at least 1'), ('3/2', 'must be in 0..1 for 2 shards'), ('-1/2', 'must be in 0..1'),
    ('1', 'is not i/n'), ('a/b', 'is not i/n'), ('1/2/3', 'is not i/n'), ('0.5/2', 'is not i/n'),
])
def test_dump_shard_argument(shard, text, capsys):
    with pytest.raises(SystemExit) as e:
        _dump_tool().parse_args(['cfg.py', f'--shard={shard}'])
    assert e.value.code == 2 and text in capsys.readouterr().err


def test_dump_shard_accepts_valid_and_refuses_escaping_paths(tmp_path):
    tool = _dump_tool()
    assert tool.parse_args(['cfg.py', '--shard', '1/4']).shard == (1, 4)
    assert tool.parse_args(['cfg.py']).shard == (0, 1)
    feats = tmp_path / 'feats'
    feats.mkdir()
    assert tool.feature_path_inside(str(feats / 'a' / 'x.pth'), str(feats)) == str(feats / 'a' / 'x.pth')
    with pytest.raises(SystemExit, match='outside the feature folder'):
        tool.feature_path_inside(str(feats / '..' / 'x.pth'), str(feats))
    (feats / 'link').symlink_to(tmp_path)
    with pytest.raises(SystemExit, match='outside the feature folder'):
        tool.feature_path_inside(str(feats / 'link' / 'x.pth'), str(feats))
    good = feats / 'ok.pth'
    torch.save(torch.zeros(2, 3, 3), good)
    assert tool.valid_feature(str(good), (2, 3, 3))
    torch.save(torch.full((2, 3, 3), float('nan')), good)
    assert not tool.valid_feature(str(good), (2, 3, 3))  # NaN features are dumped again


# ------------------------------------------------------------------ review of issue 17 (second round)
def test_plain_pickle_with_code_is_named_as_code_not_as_corrupt(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    p = tmp_path / 'evil.pth'
    p.write_bytes(pickle.dumps(Payload(), protocol=4))  # a plain pickle, not torch.save
    with pytest.raises(CheckpointError, match=r"plain Python pickle that would import and call \['posix.system'\]"):
        safe_load(str(p))
    from ovsam.vocabulary import load_text_embeddings
    with pytest.raises(ValueError, match='could run code'):
        load_text_embeddings(str(p))


def test_torch_file_named_safetensors_loads_by_content(tmp_path):
    p = tmp_path / 'w.safetensors'
    torch.save({'a': torch.ones(2)}, p)
    assert torch.equal(safe_load(str(p))['a'], torch.ones(2))


def test_pipes_and_broken_links_are_named(tmp_path):
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match='is not a regular file'):
        safe_load(str(fifo))  # and does not hang reading it
    link = tmp_path / 'link.pth'
    os.symlink(tmp_path / 'nowhere.pth', link)
    with pytest.raises(CheckpointError, match='is a broken symbolic link'):
        safe_load(str(link))


def test_load_state_dict_strict_target_must_be_a_module():
    from ovsam.checkpoint import load_state_dict_strict
    with pytest.raises(TypeError, match='the target must be a torch.nn.Module, got str'):
        load_state_dict_strict('model', {'w': torch.ones(1)})
    with pytest.raises(CheckpointError, match='expected a dict of named tensors, got list'):
        load_state_dict_strict(torch.nn.Linear(1, 1), [torch.ones(1)])


def test_atomic_write_paths(tmp_path):
    from ovsam.fileio import atomic_save_bytes, atomic_save_json, atomic_save_text, atomic_save_torch
    (tmp_path / 'f').write_text('x')
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        atomic_save_text(tmp_path / 'f' / 'sub' / 'o.txt', 'x')
    for bad in (None, 3):
        with pytest.raises(TypeError, match='its path must be a string'):
            atomic_save_text(bad, 'x')
    with pytest.raises(TypeError, match='text must be a str, got bytes'):
        atomic_save_text(tmp_path / 't.txt', b'x')
    with pytest.raises(TypeError, match='data must be bytes, got str'):
        atomic_save_bytes(tmp_path / 't.bin', 'x')
    with pytest.raises(ValueError, match="n.json' as JSON.*NaN and Infinity are not JSON"):
        atomic_save_json(tmp_path / 'n.json', {'a': float('nan')})
    with pytest.raises(TypeError, match="u.pth': the object cannot be saved with torch.save"):
        atomic_save_torch(tmp_path / 'u.pth', {'f': lambda: 1})
    assert sorted(os.listdir(tmp_path)) == ['f']  # nothing written, no temporary files left


def test_atomic_write_goes_through_a_symlink(tmp_path):
    from ovsam.fileio import atomic_save_text
    target = tmp_path / 'target.txt'
    atomic_save_text(target, 'old')
    os.symlink(target, tmp_path / 'link.txt')
    atomic_save_text(tmp_path / 'link.txt', 'new')
    assert os.path.islink(tmp_path / 'link.txt') and target.read_text() == 'new'


def test_paths_that_are_directories_are_named(tmp_path):
    with pytest.raises(IsADirectoryError, match='detector results file .* is a directory'):
        read_detections(str(tmp_path))
    with pytest.raises(IsADirectoryError, match='annotation file .* is a directory'):
        load_annotation_index(str(tmp_path))
    with pytest.raises(TypeError, match='ann_file must be a path'):
        load_annotation_index(None)
    with pytest.raises(TypeError, match='proposal_file must be a path'):
        read_detections(None)
    with pytest.raises(TypeError, match='is a int, not an image path'):
        split_entry_key(5)


def test_proposals_need_an_image_id(tmp_path):
    t = LoadProposalPrompts(_dets(tmp_path, [_det()]), ann_file=_ann(tmp_path))
    with pytest.raises(KeyError, match=r"needs results\['img_id'\]"):
        t.transform(dict(ori_shape=(100, 200), img_shape=(100, 200), scale_factor=(1.0, 1.0), img_path="a.png"))


def test_dump_tool_config_errors(tmp_path):
    tool = _dump_tool()
    (tmp_path / 'bad.py').write_text('this is not python(')
    for path, text in ((tmp_path / 'none.py', 'does not exist'), (tmp_path, 'is a directory'),
                       (tmp_path / 'bad.py', 'cannot be read as an mmengine config')):
        with pytest.raises(SystemExit, match=text):
            tool.main([str(path)])


def _hook_runner(classes, model):
    class DS:
        metainfo = {'classes': classes}

    class Loader:
        dataset = DS()

    class Runner:
        test_dataloader = Loader()
    Runner.model = model
    return Runner()


@pytest.mark.parametrize('classes, exc, text', [
    ('cat', TypeError, r"is the string 'cat', not a list .* letter by letter"),
    ((1, 2, 3), TypeError, 'item 0 is int 1'),
    (('cat', 'cat', 'car'), ValueError, r"classes name \['cat'\] more than once"),
])
def test_vocabulary_hook_checks_the_dataset_classes(classes, exc, text):
    from ovsam.hooks import CheckVocabularyHook

    from conftest import TINY_CFG, build_tiny
    from mmengine.config import Config
    model = build_tiny(Config.fromfile(TINY_CFG), num_classes=3)
    with pytest.raises(exc, match=text):
        CheckVocabularyHook().before_test(_hook_runner(classes, model))
    CheckVocabularyHook().before_test(_hook_runner(None, model))  # no classes: nothing to check


def test_onnx_export_arguments(tmp_path):
    pytest.importorskip('onnx')
    from mmengine.config import Config

    from conftest import TINY_CFG, build_tiny
    from ovsam.apis.onnx_export import export_prompt_model
    model = build_tiny(Config.fromfile(TINY_CFG), num_classes=3)
    out = str(tmp_path / 'm.onnx')
    for kwargs, exc, text in [
        (dict(class_names='abc'), TypeError, 'class_names: class names must be a list'),
        (dict(class_names={'a', 'b', 'c'}), TypeError, 'ordered list'),
        (dict(class_names=['a']), ValueError, "class_names has 1 names but the model's vocabulary has 3"),
        (dict(class_names=['a', 'A', 'b']), ValueError, 'duplicate classes'),
        (dict(opset='17'), TypeError, 'opset must be an integer'),
        (dict(opset=11), ValueError, 'opset >= 16 is needed'),
        (dict(opset=99), ValueError, 'writes opsets 16..'),
    ]:
        with pytest.raises(exc, match=text):
            export_prompt_model(model, out, **kwargs)
    with pytest.raises(TypeError, match='model must be an ovsam.models.OVSAM'):
        export_prompt_model(torch.nn.Linear(2, 2), out)
    assert not os.path.exists(out)
