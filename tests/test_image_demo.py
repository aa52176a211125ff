"""tools/demo/image_demo.py on the tiny random model."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest

from conftest import ROOT


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('ovsam_image_demo', osp.join(ROOT, 'tools', 'demo', 'image_demo.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def image_file(tmp_path_factory):
    import cv2

    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    bgr, _ = render_scene(np.random.default_rng(2), SHAPE_CLASSES, image_size=256)
    path = str(tmp_path_factory.mktemp('img') / 'scene.jpg')
    cv2.imwrite(path, bgr[:180])  # 180 x 256
    return path


@pytest.mark.parametrize('prompt', [
    ['--boxes', '10,20,120,140', '60,60,200,170'],
    ['--points', '50,60;70,80,0', '100,100;10,10'],
    ['--everything', '--points-per-side', '4', '--stability-thresh', '0'],
])
def test_image_demo_draws_predictions(tool, image_file, tmp_path, prompt):
    import cv2
    out, js = str(tmp_path / 'out.png'), str(tmp_path / 'out.json')
    assert tool.main([image_file, *prompt, '--vocabulary', 'cat', 'dog,puppy', '--out', out, '--json', js]) == 0
    drawn = cv2.imread(out)
    src = cv2.imread(image_file)
    assert drawn.shape == src.shape
    assert np.abs(drawn.astype(int) - src).mean() > 1  # something was drawn
    with open(js) as f:
        records = json.load(f)
    assert records and all(r['class_name'] in ('cat', 'dog,puppy') for r in records)
    if prompt[0] != '--everything':
        assert len(records) == 2


def test_image_demo_errors(tool, image_file, tmp_path):
    out = str(tmp_path / 'o.png')
    with pytest.raises(SystemExit):
        tool.main([image_file, '--boxes', '1,2,3', '--out', out])
    with pytest.raises(SystemExit):
        tool.main([image_file, '--checkpoint', 'x.pth', '--boxes', '1,2,30,40', '--out', out])
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / 'missing.png'), '--boxes', '1,2,30,40', '--out', out])
    from ovsam.apis import PromptError
    with pytest.raises(PromptError, match='outside'):
        tool.main([image_file, '--boxes', '1,2,300,40', '--out', out])


@pytest.mark.parametrize('prompt', [
    ['--boxes', '10,20,120,140', '60,60,200,170'],
    ['--points', '50,60;70,80,0', '100,100;10,10'],
    ['--everything', '--points-per-side', '4', '--stability-thresh', '0'],
])
def test_image_demo_json_masks_are_the_predictors_as_coco_rle(tool, image_file, tmp_path, prompt):
    """The JSON's ``segmentation`` is COCO compressed RLE that pycocotools
    decodes to exactly the masks the predictor returns for the same prompts."""
    import mmcv
    from pycocotools import mask as mask_utils

    from ovsam.apis import OVSAMAutomaticMaskGenerator, OVSAMPredictor
    out, js = str(tmp_path / 'out.png'), str(tmp_path / 'out.json')
    vocab = ['cat', 'dog,puppy']
    assert tool.main([image_file, *prompt, '--vocabulary', *vocab, '--out', out, '--json', js]) == 0
    with open(js) as f:
        records = json.load(f)

    image = mmcv.imread(image_file, channel_order='rgb')
    h, w = image.shape[:2]
    pred = OVSAMPredictor.from_tiny(vocabulary=vocab)
    pred.set_image(image)
    if prompt[0] == '--boxes':
        res = pred.predict(box=np.array([tool.parse_box(b) for b in prompt[1:]], np.float32), top_k=3)
        expected, names = np.asarray(res.masks).astype(bool), list(res.class_names)
    elif prompt[0] == '--points':
        parsed = [tool.parse_points(p) for p in prompt[1:]]
        res = pred.predict(point_coords=np.array([p[0] for p in parsed], np.float32),
                           point_labels=np.array([p[1] for p in parsed], np.int64), top_k=3)
        expected, names = np.asarray(res.masks).astype(bool), list(res.class_names)
    else:
        anns = OVSAMAutomaticMaskGenerator(pred, points_per_side=4, stability_score_thresh=0,
                                           class_score_thresh=0, top_k=3).generate()
        expected = np.stack([a['segmentation'] for a in anns]).astype(bool)
        names = [a['class_name'] for a in anns]

    assert len(records) == len(expected) > 0
    assert expected.shape[1:] == (h, w) and expected.any()
    for r, mask in zip(records, expected):
        rle = r['segmentation']
        assert set(rle) == {'size', 'counts'} and rle['size'] == [h, w] and isinstance(rle['counts'], str)
        decoded = mask_utils.decode(dict(size=rle['size'], counts=rle['counts'].encode('ascii'))).astype(bool)
        assert decoded.shape == (h, w)
        np.testing.assert_array_equal(decoded, mask)
        assert r['area'] == int(decoded.sum())
    assert [r['class_name'] for r in records] == names


def test_image_demo_help_documents_the_rle(tool, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(['--help'])
    text = capsys.readouterr().out
    assert 'segmentation' in text and 'RLE' in text and '"counts"' in text
