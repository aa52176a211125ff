# LVIS v1 val (1203 classes), interactive protocol, with mIoU / accuracy per
# frequency group (frequent / common / rare) and base (f + c) / novel (r).
# LVIS images are COCO 2017 images: LVISV1Dataset resolves them from each
# image's coco_url to <data_prefix.img>/{train,val}2017/<name>.jpg.
_base_ = ['./eval-runtime.py']

dataset_type = 'LVISV1Dataset'
data_root = 'data/'
lvis_ann_file = 'lvis/annotations/lvis_v1_val.json'
lvis_ann_path = data_root + lvis_ann_file
eval_image_size = 1024

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
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
        data_root=data_root,
        ann_file=lvis_ann_file,
        data_prefix=dict(img='coco/'),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='LVISPromptSegMetric', ann_file=lvis_ann_path)
