"""OVSAMInferencer: mmdet's DetInferencer habits over the predictor's maths (tiny random model)."""
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ovsam.apis import OVSAMInferencer, OVSAMPredictor, PromptError

GEN = dict(points_per_side=4, stability_score_thresh=0.0)  # a few prompts per image: fast


def _rgb(seed, hw):
    rng = np.random.RandomState(seed)
    img = (rng.rand(*hw, 3) * 60 + 40).astype(np.uint8)
    h, w = hw
    cv2.circle(img, (w // 3, h // 2), min(h, w) // 5, (220, 40, 40), -1)  # a disc and a block to segment
    cv2.rectangle(img, (w // 2, h // 4), (w - 10, h - 10), (30, 200, 60), -1)
    return img


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder of generated PNGs of several sizes (and a file that is not an image)."""
    folder = tmp_path_factory.mktemp('images')
    for i, hw in enumerate([(96, 128), (120, 90), (80, 80)]):
        cv2.imwrite(str(folder / f'scene{i}.png'), cv2.cvtColor(_rgb(i, hw), cv2.COLOR_RGB2BGR))
    (folder / 'notes.txt').write_text('not an image')
    return folder


@pytest.fixture(scope='module')
def predictor():
    pred = OVSAMPredictor.from_tiny(seed=1)
    pred.set_vocabulary(['disc', 'block', 'star', 'ring'])
    return pred


@pytest.fixture
def inferencer(predictor):
    return OVSAMInferencer(predictor, show_progress=False, generator_options=GEN)


def _decode(rle):
    return mask_utils.decode(dict(rle, counts=rle['counts'].encode())).astype(bool)


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_folder_to_vis_and_preds_that_pycocotools_decodes(inferencer, predictor, images, tmp_path):
    boxes = [dict(boxes=[[10, 10, 60, 70], [50, 20, 120, 90]]), dict(boxes=[[5, 5, 80, 100]]),
             dict(points=[[30, 40], [60, 20]])]
    out = tmp_path / 'out'
    res = inferencer(str(images), prompts=boxes, out_dir=str(out), no_save_pred=False)
    names = ['scene0', 'scene1', 'scene2']
    assert sorted(os.listdir(out / 'vis')) == [n + '.png' for n in names]
    assert sorted(os.listdir(out / 'preds')) == [n + '.json' for n in names]
    for name, spec, returned in zip(names, boxes, res['predictions']):
        saved = json.loads((out / 'preds' / f'{name}.json').read_text())
        assert saved == returned
        rgb = _read_rgb(images / f'{name}.png')
        assert (saved['height'], saved['width']) == rgb.shape[:2]
        vis = _read_rgb(out / 'vis' / f'{name}.png')
        assert vis.shape == rgb.shape and not np.array_equal(vis, rgb)  # something was drawn
        # the masks and labels are the predictor's own, decoded from COCO RLE
        predictor.set_image(rgb)
        if 'boxes' in spec:
            ref = predictor.predict(box=spec['boxes'])
        else:
            ref = predictor.predict(point_coords=np.array(spec['points'], np.float32)[:, None],
                                    point_labels=np.ones((2, 1)))
        masks = np.stack([_decode(r) for r in saved['masks']])
        assert np.array_equal(masks, ref.masks)
        assert saved['labels'] == ref.labels.tolist() and saved['class_names'] == ref.class_names
        assert np.allclose(saved['scores'], ref.scores) and np.allclose(saved['bboxes'], ref.boxes, atol=1e-4)
        assert len(saved['topk'][0]) == 4 and saved['prompt'] == 'prompts'


def test_everything_matches_the_automatic_generator(inferencer, predictor, images):
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    res = inferencer(str(images / 'scene0.png'))['predictions'][0]
    ref = OVSAMAutomaticMaskGenerator(predictor, **GEN).generate(_read_rgb(images / 'scene0.png'))
    assert res['prompt'] == 'everything' and len(res['masks']) == len(ref) > 0
    for rle, r in zip(res['masks'], ref):
        assert np.array_equal(_decode(rle), r['segmentation'])
    assert res['labels'] == [r['label'] for r in ref]
    x, y, w, h = ref[0]['bbox']
    assert res['bboxes'][0] == [x, y, x + w, y + h]


def test_batches_give_the_answers_of_single_images(inferencer, images):
    spec = dict(boxes=[[10, 10, 60, 70], [20, 5, 75, 75]])
    one = inferencer(str(images), prompts=spec, batch_size=1)['predictions']
    two = inferencer(str(images), prompts=spec, batch_size=2)['predictions']
    three = inferencer(str(images), prompts=spec, batch_size=3)['predictions']
    for a, b, c in zip(one, two, three):
        assert a['labels'] == b['labels'] == c['labels']
        for x, y, z in zip(a['masks'], b['masks'], c['masks']):
            m = _decode(x)
            for other in (_decode(y), _decode(z)):
                iou = (m & other).sum() / max((m | other).sum(), 1)
                assert iou >= 0.99
        assert np.allclose(a['scores'], b['scores'], atol=1e-4) and np.allclose(a['scores'], c['scores'], atol=1e-4)


def test_arrays_in_return_vis_and_nothing_written(inferencer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rgb = _rgb(5, (70, 100))
    res = inferencer([rgb, rgb[:, :, ::-1].copy()], prompts=[dict(boxes=[[10, 10, 50, 60]]),
                                                            dict(boxes=[[10, 10, 50, 60]])],
                     return_vis=True)
    assert len(res['visualization']) == 2 and res['visualization'][0].shape == (70, 100, 3)
    assert res['visualization'][0].dtype == np.uint8 and not np.array_equal(res['visualization'][0], rgb)
    assert os.listdir(tmp_path) == []
    bgr = inferencer(rgb[:, :, ::-1].copy(), prompts=dict(boxes=[[10, 10, 50, 60]]), image_format='BGR')
    assert bgr['predictions'][0]['masks'] == res['predictions'][0]['masks']
    assert bgr['visualization'] == []
    # arrays are named by a running number in out_dir
    out = tmp_path / 'o'
    inferencer([rgb], prompts=dict(boxes=[[10, 10, 50, 60]]), out_dir=str(out), no_save_pred=False)
    assert len(os.listdir(out / 'vis')) == 1 and os.listdir(out / 'vis')[0].endswith('.jpg')
    assert len(os.listdir(out / 'preds')) == 1


def test_mmdet_defaults_datasamples_and_score_threshold(inferencer, images, tmp_path):
    out = tmp_path / 'out'
    res = inferencer(str(images / 'scene1.png'), prompts=dict(boxes=[[5, 5, 80, 100]]), out_dir=str(out),
                     return_datasamples=True)
    assert sorted(os.listdir(out)) == ['vis']  # no_save_pred=True by default, as DetInferencer
    sample = res['predictions'][0]
    from mmdet.structures import DetDataSample
    assert isinstance(sample, DetDataSample) and tuple(sample.pred_instances.masks.shape) == (1, 120, 90)
    assert sample.img_path.endswith('scene1.png')
    res = inferencer(str(images / 'scene1.png'), prompts=dict(boxes=[[5, 5, 80, 100]]), return_vis=True,
                     pred_score_thr=2.0)  # nothing reaches it: the plain image comes back
    assert np.array_equal(res['visualization'][0], _read_rgb(images / 'scene1.png'))


def test_text_queries_keep_only_their_classes(inferencer, predictor, images):
    res = inferencer(str(images / 'scene0.png'), texts=['block', 'kite'])['predictions'][0]
    assert 'kite' in predictor.class_names  # a query outside the vocabulary joins it
    assert set(res['class_names']) <= {'block', 'kite'} and res['queries'] == ['block', 'kite']
    assert res['scores'] == sorted(res['scores'], reverse=True) and res['prompt'] == 'text'
    every = inferencer(str(images / 'scene0.png'))['predictions'][0]
    kept = [lab for lab in every['class_names'] if lab in ('block', 'kite')]
    assert len(res['masks']) == len(kept)


def test_built_from_a_model_folder_and_a_config_name(predictor, images, tmp_path):
    from ovsam.pretrained import save_pretrained
    save_pretrained(predictor, tmp_path / 'model', config='ovsam_tiny')
    a = OVSAMInferencer(predictor, show_progress=False)
    b = OVSAMInferencer(str(tmp_path / 'model'), show_progress=False)
    assert b.predictor.class_names == predictor.class_names
    spec = dict(boxes=[[10, 10, 60, 70]])
    assert a(str(images), prompts=spec)['predictions'] == b(str(images), prompts=spec)['predictions']
    with pytest.warns(UserWarning, match='random weights'):
        c = OVSAMInferencer('ovsam_tiny', vocabulary=['disc', 'block'], allow_random_text=True, show_progress=False)
    assert c.predictor.class_names == ['disc', 'block'] and c.cfg.model.type == 'OVSAM'
    with pytest.raises(ValueError, match='holds its weights'):
        OVSAMInferencer(str(tmp_path / 'model'), weights='x.pth')
    with pytest.raises(ValueError, match='no ovsam config named'):
        OVSAMInferencer('ovsam_no_such_model')


def test_bad_inputs_are_named(inferencer, images, tmp_path):
    with pytest.raises(ValueError, match='list of 2 prompt specs but there are 3 input images'):
        inferencer(str(images), prompts=[dict(boxes=[[1, 1, 5, 5]])] * 2)
    with pytest.raises(PromptError, match="prompt keys must be among"):
        inferencer(str(images / 'scene0.png'), prompts=dict(box=[[1, 1, 5, 5]]))
    with pytest.raises(PromptError, match='scene0.png'):  # the predictor's check, with the image named
        inferencer(str(images / 'scene0.png'), prompts=dict(boxes=[[1, 1, 500, 5]]))
    with pytest.raises(FileNotFoundError, match='no such image file or folder'):
        inferencer(str(tmp_path / 'missing.png'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images in folder'):
        inferencer(str(tmp_path / 'empty'))
    (tmp_path / 'a').mkdir()
    cv2.imwrite(str(tmp_path / 'a' / 'scene0.png'), _rgb(0, (40, 40)))
    with pytest.raises(ValueError, match='would both write scene0'):
        inferencer([str(images / 'scene0.png'), str(tmp_path / 'a' / 'scene0.png')], out_dir=str(tmp_path / 'o'))
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'0' * 20)
    with pytest.raises(ValueError, match='cannot read image .*broken.png'):
        inferencer(str(tmp_path / 'broken.png'))
    with pytest.raises(ValueError, match='unknown argument'):
        inferencer(str(images / 'scene0.png'), colour='red')
    with pytest.raises(ValueError, match='batch_size'):
        inferencer(str(images / 'scene0.png'), batch_size=0)


def _tool():
    import importlib.util
    import os.path as osp
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    spec = importlib.util.spec_from_file_location('ovsam_infer_tool', osp.join(root, 'tools', 'infer.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_writes_vis_and_preds_like_mmdet_demo(predictor, images, tmp_path, capsys):
    from ovsam.pretrained import save_pretrained
    save_pretrained(predictor, tmp_path / 'model', config='ovsam_tiny')
    out = tmp_path / 'out'
    tool = _tool()
    assert tool.main([str(images), str(tmp_path / 'model'), '--boxes', '10,10,60,70', '--out-dir', str(out),
                      '--batch-size', '2']) == 0
    assert '3 images, 3 masks' in capsys.readouterr().out
    assert len(os.listdir(out / 'vis')) == 3 and len(os.listdir(out / 'preds')) == 3  # preds saved by default
    rec = json.loads((out / 'preds' / 'scene2.json').read_text())
    assert _decode(rec['masks'][0]).shape == (80, 80)
    assert tool.main([str(images), str(tmp_path / 'model'), '--boxes', '10,10,60']) == 1
    assert 'a box is x1,y1,x2,y2' in capsys.readouterr().err
    assert tool.main([str(tmp_path / 'nothing'), str(tmp_path / 'model')]) == 1
    assert 'no such image file or folder' in capsys.readouterr().err
