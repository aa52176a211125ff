"""Auto-annotation of image collections (ovsam.apis.annotate, tools/annotate.py,
tools/dist_annotate.sh) with the tiny random-weight model: a folder of generated
scenes, a real photograph and a corrupt file; every prompt source; interrupt and
resume; two processes against one."""
import json
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

GEN = dict(points_per_side=4, stability_score_thresh=0.0)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """One intra-op thread, as each process of the sharded run (float sums, hence
    the last digits of scores, depend on the thread count)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def predictor():
    from ovsam.apis import OVSAMPredictor
    return OVSAMPredictor.from_tiny(seed=0, vocabulary='shapes')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """imgs/: 3 generated scenes (two in a subfolder), skimage's coffee photo and
    a corrupt JPEG; coco.json: the scenes with their ground-truth boxes."""
    import skimage.data
    from PIL import Image

    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    root = tmp_path_factory.mktemp('annotate')
    imgs = root / 'imgs'
    (imgs / 'sub').mkdir(parents=True)
    images, anns = [], []
    for i, name in enumerate(['scene0.png', 'sub/scene1.png', 'sub/scene2.png']):
        bgr, inst = render_scene(np.random.default_rng(i), SHAPE_CLASSES, image_size=128, min_objects=2,
                                 max_objects=3, min_visible_area=200)
        Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(imgs / name)
        images.append(dict(id=10 + i, file_name=name, width=128, height=128))
        for c, m in inst:
            ys, xs = np.nonzero(m)
            anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=c + 1, iscrowd=0, area=int(m.sum()),
                             bbox=[float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)]))
    photo = skimage.data.coffee()[::2, ::2]  # a real photograph, 200 x 300
    Image.fromarray(np.ascontiguousarray(photo)).save(imgs / 'coffee.jpg')
    (imgs / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg at all')
    (imgs / 'notes.txt').write_text('not an image')
    coco = dict(images=images, annotations=anns, categories=[dict(id=i + 1, name=n) for i, n in
                                                             enumerate(SHAPE_CLASSES)])
    (root / 'coco.json').write_text(json.dumps(coco))
    return root


@pytest.fixture(scope='module')
def baseline(predictor, data):
    """One uninterrupted everything-mode run of the folder."""
    from ovsam.apis import annotate_images
    out = data / 'base' / 'out.json'
    report = annotate_images(predictor, str(data / 'imgs'), 'everything', vocabulary='shapes', out_file=str(out),
                             generator_options=GEN, vis_dir=str(data / 'base' / 'vis'), progress=False)
    return out, report


def load_coco(path):
    from pycocotools.coco import COCO
    return COCO(str(path))


def test_folder_everything_loads_in_pycocotools(baseline, predictor):
    from pycocotools import mask as mask_utils

    from ovsam.apis.annotate import SAM_RECORD_KEYS
    out, report = baseline
    coco = load_coco(out)
    names = sorted(im['file_name'] for im in coco.dataset['images'])
    assert names == ['coffee.jpg', 'scene0.png', 'sub/scene1.png', 'sub/scene2.png']
    assert {im['file_name']: (im['width'], im['height']) for im in coco.dataset['images']}['coffee.jpg'] == (300, 200)
    # the corrupt file is skipped and reported, the .txt is not an image
    assert [s['file_name'] for s in report['skipped']] == ['broken.jpg']
    assert report['skipped'][0]['stage'] == 'read' and report['missing'] == []
    assert json.loads(out.with_suffix('.report.json').read_text())['skipped'][0]['file_name'] == 'broken.jpg'
    assert [c['name'] for c in coco.dataset['categories']][:2] == ['circle', 'square']
    assert len(coco.dataset['categories']) == predictor.num_classes
    anns = coco.dataset['annotations']
    assert anns and [a['id'] for a in anns] == list(range(1, len(anns) + 1))
    sizes = {im['id']: (im['height'], im['width']) for im in coco.dataset['images']}
    for a in anns:
        assert set(SAM_RECORD_KEYS) <= set(a) and {'category_id', 'score', 'label', 'class_name'} <= set(a)
        assert a['category_id'] == a['label'] + 1 and 0 <= a['score'] <= 1
        m = coco.annToMask(a)
        assert m.shape == sizes[a['image_id']] and int(m.sum()) == a['area']
        assert np.allclose(mask_utils.toBbox(a['segmentation']), a['bbox'], atol=1)
    assert sorted(os.listdir(out.parent / 'vis')) == ['coffee.jpg', 'scene0.jpg', 'sub']


def test_interrupt_and_resume_give_the_same_file(predictor, data, baseline):
    from ovsam.apis import annotate_images
    out = data / 'resume' / 'out.json'
    kw = dict(vocabulary='shapes', out_file=str(out), generator_options=GEN, progress=False)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_two(entry, status):
        seen.append(status)
        if seen.count('done') == 2:
            raise Stop

    with pytest.raises(Stop):
        annotate_images(predictor, str(data / 'imgs'), callback=stop_after_two, **kw)
    assert not out.exists()  # nothing half-written
    statuses = []
    report = annotate_images(predictor, str(data / 'imgs'), callback=lambda e, s: statuses.append(s), **kw)
    assert statuses.count('done') == 2  # 4 readable images, 2 finished before the interruption
    assert report['reused'] == 2
    assert out.read_bytes() == baseline[0].read_bytes()
    # a third run computes nothing (the corrupt file is retried and reported again)
    statuses.clear()
    annotate_images(predictor, str(data / 'imgs'), callback=lambda e, s: statuses.append(s), **kw)
    assert statuses == ['skipped']
    assert out.read_bytes() == baseline[0].read_bytes()


def test_other_options_are_never_mixed(predictor, data, baseline):
    from ovsam.apis import annotate_images
    from ovsam.apis.annotate import AnnotationOptionsError
    out, _ = baseline
    with pytest.raises(AnnotationOptionsError, match='points_per_side|point_grids'):
        annotate_images(predictor, str(data / 'imgs'), vocabulary='shapes', out_file=str(out),
                        generator_options=dict(GEN, points_per_side=3), progress=False)
    statuses = []
    annotate_images(predictor, str(data / 'imgs'), vocabulary='shapes', out_file=str(data / 'base' / 'o3.json'),
                    work_dir=str(out.parent / 'out_work'), generator_options=dict(GEN, points_per_side=3),
                    overwrite=True, progress=False, callback=lambda e, s: statuses.append(s))
    assert statuses.count('done') == 4  # recomputed, not reused


def test_detection_results_json_and_pickle(predictor, data):
    from ovsam.apis import annotate_images
    coco = json.loads((data / 'coco.json').read_text())
    dets = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=0.9 - 0.1 * k)
            for k, a in enumerate(coco['annotations'])]
    dets.append(dict(image_id=999, category_id=1, bbox=[0, 0, 5, 5], score=0.5))  # not an input image
    (data / 'dets.json').write_text(json.dumps(dets))
    out = data / 'det' / 'out.json'
    report = annotate_images(predictor, str(data / 'coco.json'), str(data / 'dets.json'), vocabulary='shapes',
                             out_file=str(out), image_root=str(data / 'imgs'), progress=False)
    got = load_coco(out).dataset
    assert report['prompt_stats']['unmatched_detections'] == 1
    assert len(got['annotations']) == len(coco['annotations'])
    for a in got['annotations']:
        assert a['image_id'] in (10, 11, 12) and 'det_score' in a and 'det_category_id' in a
    by_score = {a['det_score']: a for a in got['annotations']}
    for d in dets[:-1]:
        assert np.allclose(by_score[d['score']]['bbox'], d['bbox'], atol=1e-4)
    # an mmdet pickle (xyxy boxes, image found by file name) gives the same prompts on image 'scene0.png'
    first = [a for a in coco['annotations'] if a['image_id'] == 10]
    boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]]
                      for a in first], np.float32)
    res = [dict(img_path='/elsewhere/scene0.png', pred_instances=dict(
        bboxes=boxes, scores=np.linspace(0.9, 0.5, len(first)).astype(np.float32),
        labels=np.zeros(len(first), np.int64)))]
    with open(data / 'dets.pkl', 'wb') as f:
        pickle.dump(res, f)
    annotate_images(predictor, str(data / 'imgs'), dict(detections=str(data / 'dets.pkl')), vocabulary='shapes',
                    out_file=str(data / 'det' / 'pkl.json'), progress=False)
    got2 = load_coco(data / 'det' / 'pkl.json').dataset
    img = {im['file_name']: im['id'] for im in got2['images']}['scene0.png']
    assert len(got2['annotations']) == len(first) and all(a['image_id'] == img for a in got2['annotations'])


def test_text_queries(predictor, data):
    from ovsam.apis import annotate_images
    out = data / 'text' / 'out.json'
    annotate_images(predictor, str(data / 'imgs'), dict(text=['circle', 'zebra crossing']), vocabulary='shapes',
                    out_file=str(out), generator_options=GEN, progress=False)
    got = load_coco(out).dataset
    names = [c['name'] for c in got['categories']]
    assert names[0] == 'circle' and names[-1] == 'zebra crossing'  # a new query joins the vocabulary
    for a in got['annotations']:
        assert a['query'] in ('circle', 'zebra crossing') and names[a['category_id'] - 1] == a['query']
    # the same masks as segment-everything, keeping the query classes only (as OVSAMAutomaticMaskGenerator.find)
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    from ovsam.apis.annotate import read_image
    gen = OVSAMAutomaticMaskGenerator(predictor, output_mode='coco_rle', top_k=3, **GEN)
    hits = gen.find('circle', read_image(str(data / 'imgs' / 'scene0.png')))
    scene0 = {im['file_name']: im['id'] for im in got['images']}['scene0.png']
    mine = [a for a in got['annotations'] if a['image_id'] == scene0 and a['query'] == 'circle']
    assert [h['segmentation'] for h in hits] == [a['segmentation'] for a in mine]


def test_coco_boxes_relabelled_with_masks(predictor, data):
    from ovsam.apis import annotate_images
    out = data / 'cocobox' / 'out.json'
    report = annotate_images(predictor, str(data / 'coco.json'), 'coco', vocabulary='shapes', out_file=str(out),
                             image_root=str(data / 'imgs'), progress=False)
    src = json.loads((data / 'coco.json').read_text())
    got = load_coco(out).dataset
    assert report['skipped'] == [] and len(got['annotations']) == len(src['annotations'])
    by_src = {a['source_ann_id']: a for a in got['annotations']}
    for s in src['annotations']:
        a = by_src[s['id']]
        assert a['image_id'] == s['image_id'] and a['source_category_id'] == s['category_id']
        assert np.allclose(a['bbox'], s['bbox']) and a['segmentation']['size'] == [128, 128]


def test_list_file_reports_missing_files(predictor, data):
    from ovsam.apis import annotate_images
    (data / 'list.txt').write_text('# two images\nimgs/scene0.png\nimgs/gone.png\n')
    report = annotate_images(predictor, str(data / 'list.txt'), 'everything', vocabulary='shapes',
                             out_file=str(data / 'list' / 'out.json'), generator_options=GEN, progress=False)
    assert report['annotated_images'] == 1
    assert [(s['file_name'], s['stage']) for s in report['skipped']] == [('imgs/gone.png', 'read')]


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(data, baseline):
    """tools/dist_annotate.sh with 2 CPU processes (gloo) writes the same file as one process."""
    out = data / 'dist' / 'out.json'
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1')
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_annotate.sh'), '2', str(data / 'imgs'), '--out', str(out),
           '--everything', '--vocabulary', 'shapes', '--points-per-side', '4', '--stability-thresh', '0',
           '--top-k', '3', '--no-progress']
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.with_suffix('.report.json').read_text())
    assert report['rank0']['world_size'] == 2 and report['rank0']['images'] == 3  # 5 files dealt to 2 ranks
    assert [s['file_name'] for s in report['skipped']] == ['broken.jpg']
    assert out.read_bytes() == baseline[0].read_bytes()
