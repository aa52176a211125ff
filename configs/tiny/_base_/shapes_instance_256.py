# The generated shapes data set (tools/generate_shapes.py) in COCO format,
# resized to 256 px on the long side (the tiny model's input).
dataset_type = 'CheckedCocoDataset'
data_root = 'data/shapes/'
img_scale = 256
# Category names as written by the generator (synonyms after commas).
classes = ('circle,disc', 'square', 'triangle', 'star', 'ring,annulus', 'cross,plus sign', 'ellipse,oval',
           'hexagon', 'crescent,moon', 'heart')
base_classes = [0, 1, 2, 4, 5, 6, 7]
novel_classes = [3, 8, 9]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='CheckImageSize'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(img_scale, img_scale), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(img_scale, img_scale), crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2), min_gt_mask_area=32, by_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='CheckImageSize'),
    dict(type='Resize', scale=(img_scale, img_scale), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='PromptSegMetric', base_classes=base_classes, novel_classes=novel_classes),
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric=['segm'],
         proposal_nums=(1, 10, 100), format_only=False),
]
test_evaluator = val_evaluator

custom_hooks = [dict(type='CheckVocabularyHook')]
