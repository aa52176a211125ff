# Large-vocabulary co-training data at 1024 px (the paper's Table 5 mix):
# LVIS v1 without rare classes (segmentation: masks and labels), V3Det
# (detection: boxes and labels, no masks) and ImageNet-21k (image-level: one
# label per image, prompted by the whole-image box, no mask), one
# ConcatDataset sampled by mmdet's MultiSourceSampler with a fixed number of
# images of each source in every batch. Every source maps its labels into the
# joint vocabulary (`joint_vocabulary`, made by tools/build_vocabulary.py), so
# every instance is scored against all joint classes (docs/large_vocabulary.md).
# Paths are read when the dataloader is built, not when the config is parsed;
# a missing file or folder stops with an error that says how to make it.
backend_args = None
img_scale = (1024, 1024)
joint_vocabulary = 'data/embeddings/lvis_v3det_in21k.json'
build_vocabulary_cmd = (
    'python tools/build_vocabulary.py --source lvis=data/lvis/annotations/lvis_v1_train.json '
    '--source v3det=data/V3Det/annotations/v3det_2023_v1_train.json --source in21k=data/imagenet21k/classes.txt '
    '--vocab-out data/embeddings/lvis_v3det_in21k.json --clip-model RN50x16 --clip-checkpoint checkpoints/RN50x16.pt '
    '--out data/embeddings/rn50x16_lvis_v3det_in21k.pth')

lsj = [
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.9, 2.0), keep_ratio=True),
]
seg_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    *lsj,
    dict(type='RandomCrop', crop_size=img_scale, crop_type='absolute', recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2), min_gt_mask_area=32, by_mask=True),
    dict(type='PackDetInputs'),
]
det_pipeline = [  # no masks: boxes are cropped with the image, not recomputed
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=False),
    *lsj,
    dict(type='RandomCrop', crop_size=img_scale, crop_type='absolute', allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(4, 4)),
    dict(type='PackDetInputs'),
]
image_level_pipeline = [  # the whole image is the object: resized, never cropped away
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadWholeImageBox'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]

lvis_source = dict(
    type='CoTrainLVISDataset',
    data_root='data/lvis/',
    ann_file='annotations/lvis_v1_train.json',
    data_prefix=dict(img=''),
    filter_cfg=dict(filter_empty_gt=True, min_size=32),
    joint_vocabulary=joint_vocabulary,
    source='lvis',
    missing_hint='Put LVIS v1 under data/lvis/ (annotations/lvis_v1_train.json, train2017/, val2017/).',
    pipeline=seg_pipeline,
    backend_args=backend_args)
v3det_source = dict(
    type='CoTrainCocoDataset',
    data_root='data/V3Det/',
    ann_file='annotations/v3det_2023_v1_train.json',
    data_prefix=dict(img=''),
    filter_cfg=dict(filter_empty_gt=True, min_size=32),
    joint_vocabulary=joint_vocabulary,
    source='v3det',
    missing_hint='Put V3Det under data/V3Det/ (annotations/v3det_2023_v1_train.json in COCO format, as released, '
    'and the images/ folder it names).',
    pipeline=det_pipeline,
    backend_args=backend_args)
in21k_source = dict(
    type='ImageLevelDataset',
    mmpretrain_type='ImageNet21k',
    data_root='data/imagenet21k/',
    data_prefix=dict(img='train/'),
    ann_file='meta/train.txt',
    classes='data/imagenet21k/classes.txt',
    joint_vocabulary=joint_vocabulary,
    source='in21k',
    missing_hint='Put ImageNet-21k under data/imagenet21k/: train/<wnid>/*.JPEG, classes.txt with one '
    "'<wnid> <name>[,<synonym>...]' line per class, and meta/train.txt with one '<wnid>/<file> <label>' line per "
    'image (label = line of classes.txt, from 0), or set ann_file=\'\' to scan the folders (slow for 13 M images).',
    pipeline=image_level_pipeline)

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    # 1 LVIS, 1 V3Det and 2 ImageNet-21k images in every batch of 4
    sampler=dict(type='MultiSourceSampler', batch_size=4, source_ratio=[1, 1, 2]),
    batch_sampler=None,
    dataset=dict(type='ConcatDataset', datasets=[lvis_source, v3det_source, in21k_source]))

# evaluation: LVIS v1 val, box prompts, every class (the joint vocabulary's
# LVIS classes are scored among all joint classes)
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CoTrainLVISDataset',
        data_root='data/lvis/',
        ann_file='annotations/lvis_v1_val.json',
        data_prefix=dict(img=''),
        joint_vocabulary=joint_vocabulary,
        source='lvis',
        drop_rare=False,
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(type='PromptSegMetric')
test_evaluator = val_evaluator
