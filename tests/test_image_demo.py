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
