"""Web demo: the backend without a browser, then the real app in headless
Chromium (Playwright driving Debian's /usr/bin/chromium; never downloads a
browser). The browser test is marked slow and skips cleanly when gradio,
playwright or chromium are missing."""
import importlib.util
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import ROOT

WEB_DEMO = osp.join(ROOT, 'tools', 'demo', 'web_demo.py')
CHROMIUM = os.environ.get('OVSAM_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def _load_demo_module():
    spec = importlib.util.spec_from_file_location('ovsam_web_demo', WEB_DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def scene():
    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    bgr, instances = render_scene(np.random.default_rng(7), SHAPE_CLASSES, image_size=256, min_objects=2,
                                  min_visible_area=800)
    return np.ascontiguousarray(bgr[:, :, ::-1]), instances


def _centre(mask):
    import cv2
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(x), int(y)


def test_backend_without_browser(scene):
    from ovsam.apis import OVSAMPredictor
    from ovsam.datasets.shapes import SHAPE_CLASSES
    demo = _load_demo_module()
    rgb, instances = scene
    backend = demo.DemoBackend(OVSAMPredictor.from_tiny(vocabulary=None), points_per_side=4, stability_thresh=0.0)
    assert backend.choices == demo.VOCAB_CHOICES  # the tiny model brings no vocabulary
    x, y = _centre(instances[0][1])
    drawn, label, status = backend.prompt(rgb, [[x, y, 1]], '', 'Shapes', '')
    assert drawn.shape == rgb.shape and drawn.dtype == np.uint8 and not np.array_equal(drawn, rgb)
    short = {s.split(',')[0] for s in SHAPE_CLASSES}
    assert len(label) == 5 and set(label) <= short
    assert f'last at ({x}, {y})' in status and 'top-5 of 10:' in status
    drawn, label, status = backend.prompt(rgb, [], '10, 20, 120, 140', 'Custom', 'cat\n# a comment\ndog\ncup,mug\n')
    assert set(label) == {'cat', 'dog', 'cup'} and backend.predictor.class_names == ['cat', 'dog', 'cup,mug']
    assert 'box (10, 20, 120, 140)' in status
    drawn, label, status = backend.everything(rgb, 'COCO', '')
    assert backend.predictor.num_classes == 80 and drawn.shape == rgb.shape
    for bad in (dict(points=[], box='1,2,3'), dict(points=[], box=''), dict(points=[[999, 5, 1]], box='')):
        with pytest.raises(ValueError):
            backend.prompt(rgb, bad['points'], bad['box'], 'Shapes', '')
    with pytest.raises(ValueError, match='upload'):
        backend.prompt(None, [[1, 1, 1]], '', 'Shapes', '')


def test_limits_errors_and_vocabulary_cache(scene):
    from ovsam.apis import OVSAMPredictor
    demo = _load_demo_module()
    rgb, instances = scene
    backend = demo.DemoBackend(OVSAMPredictor.from_tiny(vocabulary=None), max_megapixels=0.07,
                               max_custom_classes=3, vocab_cache=2)
    with pytest.raises(ValueError, match='at most 0.07 megapixels'):
        backend.prompt(np.zeros((300, 300, 3), np.uint8), [], '1,1,20,20', 'Shapes', '')
    with pytest.raises(ValueError, match='at most 3'):
        backend.prompt(rgb, [], '1,1,20,20', 'Custom', 'a\nb\nc\nd')
    with pytest.raises(ValueError, match='longer than'):
        backend.prompt(rgb, [], '1,1,20,20', 'Custom', 'x' * 300)
    for choice, custom in (('Shapes', ''), ('Custom', 'cat\ndog'), ('COCO', ''), ('Custom', 'cat\ndog')):
        backend.prompt(rgb, [], '1,1,20,20', choice, custom)
    assert backend.cache.keys() == [('COCO', None), ('Custom', 'cat\ndog')]  # Shapes dropped (least recent)
    assert backend.predictor.class_names == ['cat', 'dog']
    # visitors see messages, never tracebacks; unexpected errors are summarised
    drawn, label, msg = demo.safe_call(backend.prompt, rgb, [], '1,2,3', 'Shapes', '')
    assert drawn is None and msg.startswith('Error: box must be')

    def bug():
        raise KeyError('secret internals')
    msg = demo.safe_call(bug)[2]
    assert 'KeyError' in msg and 'secret' not in msg and 'Traceback' not in msg
    with pytest.raises(ValueError, match='unknown vocabulary'):
        backend.prompt(rgb, [], '1,1,20,20', 'Klingon', '')


def test_vocabulary_file_choice_shows_top_k(scene, tmp_path):
    import torch

    from ovsam.apis import OVSAMPredictor
    from ovsam.vocabulary import save_text_embeddings
    demo = _load_demo_module()
    rgb, _ = scene
    names = [f'thing{i}' for i in range(40)]
    path = str(tmp_path / 'big_vocab.pth')
    save_text_embeddings(path, torch.randn(40, 1, 64, generator=torch.Generator().manual_seed(0)), names)
    backend = demo.DemoBackend(OVSAMPredictor.from_tiny(vocabulary=None), vocabulary_file=[path], top_k=7)
    assert 'File: big_vocab.pth' in backend.choices
    _, label, status = backend.prompt(rgb, [], '10, 20, 120, 140', 'File: big_vocab.pth', '')
    assert len(label) == 7 and set(label) <= set(names) and 'top-7 of 40:' in status
    assert all(0 <= v <= 1 for v in label.values())
    assert sorted(label.values(), reverse=True)[0] == pytest.approx(max(label.values()))


def _toy_work_dir(root):
    """A work dir laid out as tools/tiny_pipeline.py leaves it, holding a
    random tiny model and a 10-class shapes vocabulary."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ovsam  # noqa: F401
    from conftest import TINY_CFG
    from ovsam.datasets.shapes import SHAPE_CLASSES
    from ovsam.fileio import atomic_save_text, atomic_save_torch
    from ovsam.vocabulary import save_text_embeddings
    demo = _load_demo_module()
    files = demo.TrainedToyModel(*(osp.join(root, f) for f in demo.TOY_FILES))
    save_text_embeddings(files.vocabulary, torch.randn(len(SHAPE_CLASSES), 2, 64), list(SHAPE_CLASSES))
    cfg = Config.fromfile(TINY_CFG)
    cfg.model.mask_decoder.classifier.vocabulary = files.vocabulary
    atomic_save_text(files.config, cfg.dump())
    torch.manual_seed(3)
    model = MODELS.build(cfg.model)
    model.init_weights()
    atomic_save_torch(files.checkpoint, dict(state_dict=model.state_dict()))
    return files


def test_trained_toy_model_is_the_default(tmp_path, monkeypatch):
    import sys as _sys
    from ovsam.datasets.shapes import SHAPE_CLASSES
    demo = _load_demo_module()
    # the demo looks where the pipeline writes
    monkeypatch.syspath_prepend(osp.join(ROOT, 'tools'))
    from toy.pipeline import Pipeline
    pipe = Pipeline(demo.parse_args(['--work-dir', str(tmp_path / 'wd')]))
    assert osp.join(pipe.wd, demo.TOY_FILES.checkpoint) == pipe.ovsam_ckpt
    assert osp.join(pipe.wd, demo.TOY_FILES.vocabulary) == pipe.vocab
    assert 'clip2sam_tiny_1400it_shapes.py' == osp.basename(demo.TOY_FILES.config)
    _sys.modules.pop('toy.pipeline', None)
    _sys.modules.pop('toy', None)

    assert demo.find_trained_model(str(tmp_path / 'missing')) is None
    wd = str(tmp_path / 'wd')
    files = _toy_work_dir(wd)
    assert demo.find_trained_model(wd) == files
    pred, kind, note = demo.load_predictor(demo.parse_args(['--work-dir', wd]))
    assert kind == 'toy' and 'tiny_pipeline' in note and '10 classes' in note
    assert pred.class_names == list(SHAPE_CLASSES)
    backend = demo.DemoBackend(pred)
    assert backend.choices[0] == 'Model'
    pred, kind, note = demo.load_predictor(demo.parse_args(['--work-dir', wd, '--random-model']))
    assert kind == 'random' and 'RANDOM' in note and pred.num_classes == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_for_server(proc, url, log_path, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise AssertionError(f'web demo exited with {proc.returncode}:\n{f.read()[-3000:]}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    with open(log_path) as f:
        raise AssertionError(f'web demo did not start within {timeout}s:\n{f.read()[-3000:]}')


@pytest.mark.slow
def test_web_demo_in_headless_chromium(scene, tmp_path):
    pytest.importorskip('gradio')
    sync_api = pytest.importorskip('playwright.sync_api')
    if not (osp.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f'{CHROMIUM} not found (apt-get install -y chromium)')
    import cv2
    rgb, instances = scene
    image_path = str(tmp_path / 'scene.png')
    cv2.imwrite(image_path, rgb[:, :, ::-1])
    port = _free_port()
    url = f'http://127.0.0.1:{port}/'
    log_path = str(tmp_path / 'web_demo.log')
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED='False', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1',
               NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, WEB_DEMO, '--host', '127.0.0.1', '--port', str(port),
                                 '--points-per-side', '4', '--stability-thresh', '0', '--random-model'],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    browser = None
    try:
        _wait_for_server(proc, url, log_path)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                         timeout=60000)
            page = browser.new_page(viewport={'width': 1280, 'height': 1000})
            page.set_default_timeout(60000)
            page.goto(url, wait_until='domcontentloaded')
            page.wait_for_selector('#input_image')
            assert 'RANDOM' in page.locator('#random-model-note').inner_text()  # --random-model

            page.locator('#input_image input[type=file]').set_input_files(image_path)
            shown = page.locator('#input_image img')
            shown.wait_for()
            page.wait_for_function("document.querySelector('#status') !== null && "
                                   "document.querySelector('#status').innerText.includes('image loaded')")
            bb = shown.bounding_box()
            x, y = _centre(instances[0][1])
            shown.click(position={'x': (x + 0.5) * bb['width'] / 256, 'y': (y + 0.5) * bb['height'] / 256})
            page.wait_for_function("document.querySelector('#status').innerText.includes('last at')")
            status = page.locator('#status').inner_text()
            cx, cy = [float(v) for v in status.split('last at (')[1].split(')')[0].split(',')]
            assert abs(cx - x) <= 3 and abs(cy - y) <= 3, status  # the click reached the right pixel
            out = page.locator('#output_image img')
            out.wait_for()
            label = page.locator('#output_label').inner_text()
            from ovsam.datasets.shapes import SHAPE_CLASSES
            assert any(s.split(',')[0] in label for s in SHAPE_CLASSES), label
            # the drawn result is a real image of the input's size, not the input itself
            src = out.get_attribute('src')
            if src.startswith('data:'):
                import base64
                body = base64.b64decode(src.split(',', 1)[1])
            else:
                body = page.request.get(src if src.startswith('http') else url.rstrip('/') + src).body()
            drawn = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert drawn is not None and drawn.shape == rgb.shape
            assert np.abs(drawn[:, :, ::-1].astype(int) - rgb).mean() > 1  # masks were drawn

            # a box dragged with the mouse: the prompt is the point above + this box
            ys, xs = np.nonzero(instances[1][1])
            want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            sx, sy = bb['width'] / 256, bb['height'] / 256
            page.mouse.move(bb['x'] + want[0] * sx, bb['y'] + want[1] * sy)
            page.mouse.down()
            page.mouse.move(bb['x'] + want[2] * sx, bb['y'] + want[3] * sy, steps=8)
            page.mouse.up()
            page.wait_for_function("document.querySelector('#status').innerText.includes('box (')")
            status = page.locator('#status').inner_text()
            assert '1 point(s)' in status, status  # the drag added no point
            got = [float(v) for v in status.split('box (')[1].split(')')[0].split(',')]
            assert np.abs(np.array(got) - want).max() <= 3, (got, want)
            typed = page.locator('#box_text textarea, #box_text input').first.input_value()
            assert [float(v) for v in typed.split(',')] == got  # the box field shows the dragged box

            # a typed box
            page.locator('#box_text textarea, #box_text input').first.fill('20, 30, 150, 160')
            page.locator('#segment_btn').click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('box (20, 30, 150, 160)')")
            # segment everything
            page.locator('#everything_btn').click()
            page.wait_for_function("/\\d+ masks|no mask/.test(document.querySelector('#status').innerText)")
            browser.close()
            browser = None
    finally:
        if browser is not None:
            try:
                browser.close()
            except Exception:
                pass
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
