"""Image-level classification data (ImageNet-21k layouts through mmpretrain)
as CLIP2SAM instances: one whole-image box, no mask, labels joint or own."""
import os

import cv2
import numpy as np
import pytest

WNIDS = ('n00000003', 'n00000001', 'n00000002')  # class-file order differs from the sorted folders
NAMES = ('square', 'circle,disc', 'triangle')


@pytest.fixture(scope='module')
def in21k(tmp_path_factory):
    """``train/<wnid>/<k>.png`` (2 images a class) and a class file with ids."""
    root = tmp_path_factory.mktemp('in21k')
    for c, wnid in enumerate(sorted(WNIDS)):
        os.makedirs(root / 'train' / wnid)
        for k in range(2):
            img = np.full((20 + 10 * k, 30, 3), 40 * c, np.uint8)
            cv2.imwrite(str(root / 'train' / wnid / f'{k}.png'), img)
    (root / 'classes.txt').write_text(''.join(f'{w} {n}\n' for w, n in zip(WNIDS, NAMES)))
    return root


def _dataset(root, **kw):
    import ovsam  # noqa: F401
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')  # as in a config (default_scope='mmdet'): mmdet's transforms
    cfg = dict(type='ImageLevelDataset', data_root=str(root), data_prefix=dict(img='train/'),
               classes=str(root / 'classes.txt'), pipeline=[])
    cfg.update(kw)
    return DATASETS.build(cfg)


def test_folder_layout_maps_folders_by_wordnet_id(in21k):
    ds = _dataset(in21k)
    assert len(ds) == 6
    assert ds.metainfo['classes'] == NAMES and ds.metainfo['wnids'] == WNIDS
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        wnid = os.path.basename(os.path.dirname(info['img_path']))
        assert info['image_label'] == WNIDS.index(wnid)


def test_pipeline_gives_one_whole_image_box_without_mask(in21k):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadWholeImageBox'),
                dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='RandomFlip', prob=1.0),
                dict(type='PackDetInputs')]
    ds = _dataset(in21k, pipeline=pipeline)
    for i in (0, 3):
        out = ds[i]
        gt = out['data_samples'].gt_instances
        h, w = out['inputs'].shape[-2:]
        assert gt.bboxes.tensor.tolist() == [[0., 0., float(w), float(h)]]
        assert gt.labels.tolist() == [ds.get_data_info(i)['image_label']]
        assert 'masks' not in gt
        from ovsam.models.prompts import instance_has_mask
        assert not instance_has_mask(gt).any()


def test_annotation_file_layout_through_imagenet21k(in21k, tmp_path):
    ann = tmp_path / 'train.txt'
    ann.write_text(f'{WNIDS[1]}/0.png 1\n{WNIDS[0]}/1.png 0\n')
    ds = _dataset(in21k, ann_file=str(ann), mmpretrain_type='ImageNet21k')
    assert [ds.get_data_info(i)['image_label'] for i in range(2)] == [1, 0]
    assert ds.get_data_info(0)['img_path'].endswith(f'{WNIDS[1]}/0.png')


def test_folder_names_are_the_classes_without_a_class_file(tmp_path):
    for name in ('cat', 'dog'):
        os.makedirs(tmp_path / 'img' / name)
        cv2.imwrite(str(tmp_path / 'img' / name / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    ds = _dataset(tmp_path, data_prefix=dict(img='img/'), classes=None)
    assert ds.metainfo['classes'] == ('cat', 'dog')
    assert [ds.get_data_info(i)['image_label'] for i in range(2)] == [0, 1]


def test_wordnet_folders_need_their_names(in21k):
    with pytest.raises(ValueError, match="WordNet ids .* give their names with classes=FILE"):
        _dataset(in21k, classes=None)


def test_unknown_class_folder_is_an_error(in21k, tmp_path):
    classes = tmp_path / 'two.txt'
    classes.write_text(f'{WNIDS[0]} square\n{WNIDS[1]} circle\n')
    from ovsam.datasets import AnnotationError
    with pytest.raises(AnnotationError, match=r"class folders \['n00000002'\] .* unknown classes"):
        _dataset(in21k, classes=str(classes))


def test_unknown_label_in_the_list_is_an_error(in21k, tmp_path):
    ann = tmp_path / 'train.txt'
    ann.write_text(f'{WNIDS[1]}/0.png 1\n{WNIDS[0]}/1.png 7\n')
    from ovsam.datasets import AnnotationError
    with pytest.raises(AnnotationError, match='entry 1 .* has label 7, but the class list .* has 3 classes'):
        _dataset(in21k, ann_file=str(ann))


def test_missing_data_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='image folder .* does not exist. Put the images in class folders'):
        _dataset(tmp_path, classes=None)
    with pytest.raises(FileNotFoundError, match="annotation list .* does not exist.*'<folder>/<image> <label>'"):
        _dataset(tmp_path, ann_file='meta/train.txt', classes=['a', 'b'])


def test_labels_map_into_the_joint_vocabulary(in21k, tmp_path):
    """circle is shared with the segmentation source (one joint class); square
    and triangle are new joint classes after it."""
    from ovsam.vocabulary.joint import JointVocabulary
    joint = JointVocabulary.build({'seg': ['circle', 'hexagon'], 'in21k': str(in21k / 'classes.txt')})
    path = str(tmp_path / 'joint.json')
    joint.save(path)
    ds = _dataset(in21k, joint_vocabulary=path, source='in21k')
    assert ds.metainfo['classes'] == tuple(joint.class_names)
    ids = joint.source_ids('in21k')
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        assert info['image_label'] == ids[info['source_label']]
    circle = [ds.get_data_info(i)['image_label'] for i in range(len(ds))
              if ds.get_data_info(i)['source_label'] == 1]
    assert set(circle) == {0}  # the segmentation source's circle
    with pytest.raises(ValueError, match="source 'imagenet' is not in the joint vocabulary"):
        _dataset(in21k, joint_vocabulary=path, source='imagenet')
    with pytest.raises(ValueError, match="3 classes but source 'seg' .* has 2"):
        _dataset(in21k, joint_vocabulary=path, source='seg')
