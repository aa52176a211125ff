# Toy co-training (the paper's Tables 5 and 10 at toy scale): CLIP2SAM on
# three sources of generated shapes (tools/toy/cotrain.py makes the data with
# generate_shapes_dataset(cotrain=...)):
#   segmentation  train/ + instances_train.json: 6 classes with masks
#   detection     boxes/ + instances_boxes.json: those 6 and hexagon, crescent, boxes only
#   image-level   image_level/<class>/: star, heart, one large object per image, no box, no mask
# mapped into one joint vocabulary, 4 : 1 : 1 images per batch of 6
# (mmdet's MultiSourceSampler). Validation: held-out scenes of all 10 classes.
_base_ = ['./clip2sam_tiny_1400it_shapes.py']

data_root = 'data/shapes_cotrain/'
joint_vocabulary = data_root + 'joint_vocabulary.json'
vocabulary = data_root + 'joint_vocabulary.pth'
# class groups of the generated data (indices into the 10 shape classes)
box_only_classes = [7, 8]  # hexagon, crescent
image_level_classes = [3, 9]  # star, heart
segmentation_classes = [0, 1, 2, 4, 5, 6]
img_scale = 256

seg_pipeline = [
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
det_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='CheckImageSize'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(img_scale, img_scale), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(img_scale, img_scale), crop_type='absolute', allow_negative_crop=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(4, 4)),
    dict(type='PackDetInputs'),
]
image_level_pipeline = [  # the whole-image box is cropped with the image (a random resized crop)
    dict(type='LoadImageFromFile'),
    dict(type='LoadWholeImageBox'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(img_scale, img_scale), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(img_scale, img_scale), crop_type='absolute', allow_negative_crop=False),
    dict(type='PackDetInputs'),
]
# 4 segmentation scenes, 1 box scene and 1 image-level image per batch (4 : 2 : 4
# was measured too: no better, 1.6x slower; docs/large_vocabulary.md)
train_dataloader = dict(
    batch_size=6,
    sampler=dict(_delete_=True, type='MultiSourceSampler', batch_size=6, source_ratio=[4, 1, 1]),
    batch_sampler=None,
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            dict(type='CoTrainCocoDataset', data_root=data_root, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True, min_size=8),
                 joint_vocabulary=joint_vocabulary, source='segmentation', pipeline=seg_pipeline),
            dict(type='CoTrainCocoDataset', data_root=data_root, ann_file='annotations/instances_boxes.json',
                 data_prefix=dict(img='boxes/'), filter_cfg=dict(filter_empty_gt=True, min_size=8),
                 joint_vocabulary=joint_vocabulary, source='detection', pipeline=det_pipeline),
            dict(type='ImageLevelDataset', data_root=data_root + 'image_level/', data_prefix=dict(img=''),
                 classes=data_root + 'image_level/classes.txt', joint_vocabulary=joint_vocabulary,
                 source='image_level', pipeline=image_level_pipeline),
        ]))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='PromptSegMetric', class_groups=dict(seg=segmentation_classes, box=box_only_classes,
                                                   image=image_level_classes)),
]
test_evaluator = val_evaluator
model = dict(mask_decoder=dict(classifier=dict(vocabulary=vocabulary)))

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
