"""Tests of the synthetic shapes generator (ovsam/datasets/shapes.py)."""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


from ovsam.datasets import shapes  # noqa: E402

SIZE = 128
KW = dict(num_train=6, num_val=3, num_sa1b=4, image_size=SIZE, max_objects=5)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp('shapes')
    return shapes.generate_shapes_dataset(str(out), seed=0, **KW)


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def test_class_lists():
    assert len(shapes.SHAPE_CLASSES) == 10
    assert len(set(shapes.SHAPE_CLASSES)) == 10
    assert len(shapes.SHAPE_BASE_CLASSES) == 7 and len(shapes.SHAPE_NOVEL_CLASSES) == 3
    assert sorted(shapes.SHAPE_BASE_CLASSES + shapes.SHAPE_NOVEL_CLASSES) == list(range(10))


def test_result_dict(dataset):
    assert dataset['classes'] == shapes.SHAPE_CLASSES
    assert dataset['novel_classes'] == shapes.SHAPE_NOVEL_CLASSES
    assert dataset['base_classes'] == shapes.SHAPE_BASE_CLASSES
    assert dataset['train']['num_images'] == 6 and dataset['val']['num_images'] == 3
    assert dataset['sa1b']['num_images'] == 4
    assert dataset['train']['num_instances'] > 0


def test_determinism(dataset, tmp_path):
    again = shapes.generate_shapes_dataset(str(tmp_path / 'same'), seed=0, **KW)
    other = shapes.generate_shapes_dataset(str(tmp_path / 'other'), seed=1, **KW)
    for split in ('train', 'val'):
        ref = _read(dataset[split]['ann_file'])
        assert _read(again[split]['ann_file']) == ref
        assert _read(other[split]['ann_file']) != ref
    first = osp.join(dataset['train']['img_dir'], '000000000001.jpg')
    assert _read(first) == _read(osp.join(again['train']['img_dir'], '000000000001.jpg'))
    sa = osp.join(dataset['sa1b']['img_dir'], 'sa_1.json')
    assert _read(sa) == _read(osp.join(again['sa1b']['img_dir'], 'sa_1.json'))


def test_image_independent_of_split_sizes(dataset, tmp_path):
    # Adding images to a split must not change the ones already there.
    more = shapes.generate_shapes_dataset(str(tmp_path / 'more'), seed=0, num_train=7, num_val=1,
                                          image_size=SIZE, sa1b=False)
    assert more['sa1b'] is None
    for name in ('000000000001.jpg', '000000000006.jpg'):
        assert _read(osp.join(more['train']['img_dir'], name)) == _read(
            osp.join(dataset['train']['img_dir'], name))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations(dataset, split):
    info = dataset[split]
    coco = COCO(info['ann_file'])
    cat_ids = set(coco.getCatIds())
    assert cat_ids == set(range(1, 11))
    assert [c['name'] for c in coco.loadCats(sorted(cat_ids))] == list(shapes.SHAPE_CLASSES)
    assert len(coco.getImgIds()) == info['num_images']
    assert len(coco.getAnnIds()) == info['num_instances']

    for img in coco.loadImgs(coco.getImgIds()):
        path = osp.join(info['img_dir'], img['file_name'])
        assert img['file_name'].endswith('.jpg' if split == 'train' else '.png')
        arr = cv2.imread(path)
        assert arr is not None, path
        assert arr.shape[:2] == (img['height'], img['width']) == (SIZE, SIZE)

    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann['category_id'] in cat_ids
        assert ann['iscrowd'] == 0
        assert isinstance(ann['segmentation']['counts'], str)
        img = coco.imgs[ann['image_id']]
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (img['height'], img['width'])
        area = int(mask.sum())
        assert area >= 32  # visible-area filter
        assert abs(ann['area'] - area) <= 0.01 * area
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert np.allclose(mask_util.toBbox(ann['segmentation']), ann['bbox'])


def test_visible_masks_do_not_overlap(dataset):
    coco = COCO(dataset['train']['ann_file'])
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if anns:
            total = sum(coco.annToMask(a).astype(np.int32) for a in anns)
            assert total.max() <= 1


def test_sa1b_layout(dataset):
    info = dataset['sa1b']
    with open(info['list_file']) as f:
        names = [line.strip() for line in f if line.strip()]
    assert len(names) == info['num_images']
    num_masks = 0
    for name in names:
        assert osp.isfile(osp.join(info['img_dir'], name + '.jpg'))
        with open(osp.join(info['img_dir'], name + '.json')) as f:
            data = json.load(f)
        img = data['image']
        assert img['file_name'] == name + '.jpg'
        assert cv2.imread(osp.join(info['img_dir'], img['file_name'])).shape[:2] == (
            img['height'], img['width'])
        for ann in data['annotations']:
            assert isinstance(ann['segmentation']['counts'], str)
            mask = mask_util.decode(ann['segmentation'])
            assert mask.shape == (img['height'], img['width'])
            assert int(mask.sum()) == ann['area'] >= 32
            assert np.allclose(mask_util.toBbox(ann['segmentation']), ann['bbox'])
            px, py = ann['point_coords'][0]
            assert mask[int(py), int(px)]
        num_masks += len(data['annotations'])
    assert num_masks == info['num_masks']


def test_render_scene_filters_small_instances():
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, instances = shapes.render_scene(rng, shapes.SHAPE_CLASSES, image_size=96,
                                               min_visible_area=200)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        for cls, mask in instances:
            assert 0 <= cls < 10 and mask.sum() >= 200


def test_class_subset(tmp_path):
    res = shapes.generate_shapes_dataset(str(tmp_path), num_train=3, num_val=1, image_size=64,
                                         classes=['star', 'circle,round', 1], sa1b=False)
    assert res['classes'] == ('star', 'circle,round', 'square')
    assert res['novel_classes'] == (0,) and res['base_classes'] == (1, 2)
    coco = COCO(res['train']['ann_file'])
    assert {a['category_id'] for a in coco.dataset['annotations']} <= {1, 2, 3}
    with pytest.raises(ValueError):
        shapes.generate_shapes_dataset(str(tmp_path / 'bad'), classes=['pentagon'])


def _dominant_hue(image, mask):
    """Most common hue (degrees, 10-degree bins) of the saturated pixels in ``mask``."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL)[mask].astype(np.float32)
    hue = hsv[hsv[:, 1] > 90, 0] * 360.0 / 256.0
    if len(hue) == 0:
        return None
    return (np.argmax(np.bincount((hue // 10).astype(int), minlength=36)) + 0.5) * 10.0


def _hue_match_rate(colour_mode):
    rng = np.random.default_rng(11)
    hues = np.array([shapes.class_hue(n) for n in shapes.SHAPE_CLASSES])
    hits = total = 0
    for _ in range(25):
        image, instances = shapes.render_scene(rng, shapes.SHAPE_CLASSES, image_size=128,
                                               colour_mode=colour_mode)
        for cls, mask in instances:
            hue = _dominant_hue(image, mask)
            if hue is None:
                continue
            dist = np.abs((hues - hue + 180.0) % 360.0 - 180.0)
            hits += int(np.argmin(dist) == cls)
            total += 1
    assert total >= 40
    return hits / total


def test_colour_mode_class_ties_hue_to_class():
    # Each class's hue band is 16 degrees wide and 36 apart: the dominant hue
    # of an instance names its class (textures, blur and noise allowing).
    assert _hue_match_rate('class') >= 0.85


def test_colour_mode_random_leaves_only_the_outline():
    # 10 classes: hue names the class about as often as chance.
    assert _hue_match_rate('random') <= 0.3


def test_colour_mode_recorded_and_checked(tmp_path):
    res = shapes.generate_shapes_dataset(str(tmp_path), num_train=1, num_val=1, image_size=64, sa1b=False,
                                         colour_mode='random')
    with open(res['train']['ann_file']) as f:
        assert json.load(f)['info']['colour_mode'] == 'random'
    with pytest.raises(ValueError, match='colour_mode'):
        shapes.render_scene(np.random.default_rng(0), shapes.SHAPE_CLASSES, colour_mode='by-class')


def test_sa1b_class_agnostic_coco_file(dataset):
    """Stage -1 trains the tiny SAM on this file: one category, the SA-1B masks."""
    info = dataset['sa1b']
    coco = COCO(info['ann_file'])
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['object']
    assert len(coco.getImgIds()) == info['num_images']
    per_image = 0
    for i in range(1, info['num_images'] + 1):
        with open(osp.join(info['img_dir'], f'sa_{i}.json')) as f:
            sa = json.load(f)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
        assert [a['segmentation'] for a in anns] == [a['segmentation'] for a in sa['annotations']]
        per_image += len(anns)
    assert per_image == info['num_masks'] > 0


def test_sa1b_draws_outlines_outside_the_class_list(tmp_path):
    out = shapes.generate_shapes_dataset(str(tmp_path / 'x'), num_train=2, num_val=1, num_sa1b=2, image_size=SIZE)
    with open(out['sa1b']['ann_file']) as f:
        drawn = json.load(f)['info']['shapes']
    assert set(shapes.EXTRA_SHAPES) <= set(drawn)
    with open(out['train']['ann_file']) as f:  # the labelled splits keep the class list
        assert len(json.load(f)['categories']) == len(shapes.SHAPE_CLASSES)
    plain = shapes.generate_shapes_dataset(str(tmp_path / 'y'), num_train=2, num_val=1, num_sa1b=2, image_size=SIZE,
                                           sa1b_extra_shapes=False)
    with open(plain['sa1b']['ann_file']) as f:
        assert not set(shapes.EXTRA_SHAPES) & set(json.load(f)['info']['shapes'])


@pytest.mark.parametrize('name', shapes.EXTRA_SHAPES)
def test_extra_outlines_render_and_have_no_class_hue(name):
    rng = np.random.default_rng(0)
    image, inst = shapes.render_scene(rng, [name], image_size=SIZE, min_objects=2, max_objects=2, colour_mode='class')
    assert image.shape == (SIZE, SIZE, 3) and len(inst) >= 1 and all(m.sum() > 32 for _, m in inst)
    with pytest.raises(ValueError, match='no class hue'):
        shapes.class_hue(name)


def test_default_setting_is_the_plain_renderer():
    """Naming the default setting draws the very same images (no RNG drift)."""
    a = shapes.render_scene(np.random.default_rng(5), shapes.SHAPE_CLASSES, image_size=SIZE)
    b = shapes.render_scene(np.random.default_rng(5), shapes.SHAPE_CLASSES, image_size=SIZE,
                            **shapes.generator_setting('default'))
    assert np.array_equal(a[0], b[0]) and len(a[1]) == len(b[1])


def test_shifted_setting_changes_sizes_counts_and_appearance(tmp_path):
    kw = dict(num_train=0, num_val=12, image_size=256, sa1b=False)
    d = shapes.generate_shapes_dataset(str(tmp_path / 'd'), **kw)
    s = shapes.generate_shapes_dataset(str(tmp_path / 's'), setting='shifted', **kw)
    def stats(out):
        with open(out['val']['ann_file']) as f:
            coco = json.load(f)
        sides = [max(a['bbox'][2:]) for a in coco['annotations']]
        return len(coco['annotations']) / 12, max(sides), coco['info']['setting']
    (nd, maxd, sd), (ns, maxs, ss) = stats(d), stats(s)
    assert ss['textures'] == list(shapes.GENERATOR_SETTINGS['shifted']['textures'])
    assert sd['backgrounds'] == list(shapes.GENERATOR_SETTINGS['default']['backgrounds'])
    assert ns > nd  # 2-7 objects against 1-5
    assert maxs > 120 >= maxd - 2  # diameters up to 144 px against 120


@pytest.mark.parametrize('bad, match', [
    (dict(setting='nope'), 'unknown generator setting'),
    (dict(setting=dict(colours=1)), 'unknown generator options'),
    (dict(setting=dict(textures=('plaid',))), 'textures must be'),
    (dict(setting=dict(backgrounds='flat')), 'backgrounds must be'),
    (dict(setting=dict(diameter_range=(0, 10))), 'diameter_range'),
])
def test_bad_settings_are_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        shapes.generate_shapes_dataset(str(tmp_path / 'z'), num_train=1, num_val=1, image_size=64, sa1b=False, **bad)


def test_shifted_patterns_are_never_in_the_training_setting():
    """'shifted' measures generalisation: its patterned fills and backgrounds
    are kinds the default (training) setting never draws."""
    default, shifted = shapes.GENERATOR_SETTINGS['default'], shapes.GENERATOR_SETTINGS['shifted']
    for key in ('textures', 'backgrounds'):
        assert {'checker', 'dots'} <= set(shifted[key])
        assert not {'checker', 'dots'} & set(default[key])
        assert set(default[key]) <= set(shapes.TEXTURES if key == 'textures' else shapes.BACKGROUNDS)


def _high_freq(img):
    """Mean absolute difference of neighbouring pixels (along rows and columns)."""
    g = np.asarray(img, np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


@pytest.mark.parametrize('kind', ['stripes', 'speckle'])
def test_busy_backgrounds_are_high_frequency(kind):
    flat = shapes._background(np.random.default_rng(1), 64, 64, ('gradient',))
    busy = shapes._background(np.random.default_rng(1), 64, 64, (kind,))
    assert busy.shape == (64, 64, 3) and busy.min() >= 0 and busy.max() <= 255
    assert _high_freq(busy) > 5 * max(_high_freq(flat), 0.5)


@pytest.mark.parametrize('kind', shapes.TEXTURES)
def test_every_texture_fills_the_mask_and_varies_as_named(kind):
    rng = np.random.default_rng(2)
    ys, xs = (v.ravel().astype(np.float32) for v in np.mgrid[0:40, 0:40])
    colour = np.array([120.0, 60.0, 200.0], np.float32)
    fill = shapes._texture(rng, colour, ys, xs, (kind,))
    assert fill.shape == (1600, 3) and np.isfinite(fill).all()
    spread = float(fill.std(0).mean())
    assert (spread == 0) == (kind == 'flat')
    if kind == 'gradient':  # smooth: neighbours differ little, ends differ a lot
        img = np.asarray(fill).reshape(40, 40, 3)
        assert _high_freq(img) < 5 and np.abs(img.max((0, 1)) - img.min((0, 1))).max() > 10
