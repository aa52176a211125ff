# Stage 1 at toy scale: distil the tiny SAM's image embedding into the frozen
# tiny CLIP + SAM2CLIP adapter, on the generated SA-1B-style images.
_base_ = ['./_base_/tiny_runtime.py', '../_base_/models/ovsam_tiny.py']

image_size = 256
clip_checkpoint = 'work_dirs/tiny_pipeline/clip/tiny_clip.pt'
sam_checkpoint = 'work_dirs/tiny_pipeline/sam/sam_tiny.pth'
sam_teacher = dict(type='SAMImageEncoder', variant='custom', image_size=image_size, out_chans=64,
                   patch_size=16, window_size=8, embed_dim=64, depth=4, num_heads=4,
                   global_attn_indexes=[1, 3], checkpoint=sam_checkpoint)

model = dict(
    _delete_=True,
    type='SAM2CLIPDistiller',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=image_size),
    backbone=dict(
        type='OpenCLIPBackbone', model_name='tiny', model_cfg={{_base_.tiny_clip_cfg}}, frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(
        type='SAM2CLIPAdapter',
        in_channels={{_base_.clip_channels}},
        strides=[4, 8, 16, 32],
        input_size=image_size,
        embed_dim=64,
        out_channels=64,
        depth=2,
        num_heads=4,
        window_size=8,
        global_attn_indexes=[1],
        frozen=False,
        sam_checkpoint=sam_checkpoint),
    teacher=sam_teacher)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='PackDistillInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='SA1BDataset', data_root='data/shapes/sa1b', split_file='train.txt', img_dir='',
                 pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
max_iters = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=100), visualization=dict(type='DetVisualizationHook', draw=False))
