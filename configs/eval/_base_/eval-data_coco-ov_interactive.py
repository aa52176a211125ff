# COCO val2017, open-vocabulary split (48 base / 17 novel), interactive
# protocol: every ground-truth instance of the 65 split classes is one prompt
# (its box, or a point from its mask), scored by PromptSegMetric.
#
# Labels and the vocabulary are COCO's 80 classes, as in the released model:
# its scores are softmaxed over all 80 + background columns and fused before
# the 15 classes outside the split are set to -1000 (the model's base_classes
# + novel_classes). CocoOVDataset keeps the 80-class metainfo and drops the
# instances of those 15 classes; the split ids below index the 80 classes.
_base_ = ['./eval-runtime.py']

import ovsam.datasets.coco_ov as _coco_ov  # noqa: E402  (modules are not kept in the config)

dataset_type = 'CocoOVDataset'
data_root = 'data/coco/'
eval_image_size = 1024
coco_ov_base_ids = list(_coco_ov.COCO_OV_BASE_IDS)
coco_ov_novel_ids = list(_coco_ov.COCO_OV_NOVEL_IDS)

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    # before Resize: the prompts (boxes, mask centre points) must be resized too
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(eval_image_size, eval_image_size), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        keep='all',
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='PromptSegMetric', base_classes=coco_ov_base_ids, novel_classes=coco_ov_novel_ids)
