# Tiny OV-SAM on the generated shapes data (ovsam.datasets.generate_shapes_dataset),
# ground-truth box prompts: the CPU test of the evaluation path
# (tools/test.py, tools/dist_test.sh). Point data_root at a generated set:
#   --cfg-options test_dataloader.dataset.data_root=DIR/ test_evaluator.1.ann_file=DIR/annotations/instances_val.json
# and the classifier at a vocabulary file of the 10 shape classes:
#   model.mask_decoder.classifier.vocabulary=VOCAB.pth
_base_ = ['../_base_/models/ovsam_tiny.py', './_base_/eval-runtime.py']

import ovsam.datasets.shapes as _shapes  # noqa: E402  (modules are not kept in the config)

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

shapes_root = 'data/shapes/'
shape_classes = _shapes.SHAPE_CLASSES
shape_base_ids = list(_shapes.SHAPE_BASE_CLASSES)
shape_novel_ids = list(_shapes.SHAPE_NOVEL_CLASSES)

model = dict(
    prompt_source='gt',
    data_preprocessor=dict(eval_prompt='box'),
    base_classes=shape_base_ids,
    novel_classes=shape_novel_ids,
    mask_decoder=dict(classifier=dict(vocabulary=shapes_root + 'vocab_tiny.pth', num_classes=len(shape_classes))))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=shapes_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=shape_classes),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = [
    dict(type='PromptSegMetric', base_classes=shape_base_ids, novel_classes=shape_novel_ids),
    dict(type='CocoMetric', ann_file=shapes_root + 'annotations/instances_val.json', metric='segm',
         proposal_nums=(1, 10, 100)),
]
