# OV-SAM stage 1 (SAM2CLIP): distil SAM-H's image embedding into frozen CLIP
# RN50x16 + the SAM2CLIP adapter on 1 % of SA-1B.
#
# Teacher features are usually dumped once (resumable):
#   python tools/dump_sam_features.py configs/sam2clip_rn50x16_vith-distill_24e_sa1b.py
# and read from data/sa1b/sam_vith_features/; set model.teacher to a
# SAMImageEncoder instead to run SAM-H live.
_base_ = ['./_base_/ovsam_runtime.py', './_base_/models/ovsam_rn50x16.py']
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

clip_checkpoint = 'checkpoints/RN50x16.pt'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
image_size = 1024

model = dict(
    _delete_=True,
    type='SAM2CLIPDistiller',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=image_size),
    backbone=dict(type='OpenCLIPBackbone', model_name='RN50x16', frozen=True,
                  init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(
        type='SAM2CLIPAdapter',
        in_channels=[384, 768, 1536, 3072],
        strides=[4, 8, 16, 32],
        input_size=image_size,
        embed_dim=1280,
        out_channels=256,
        depth=5,
        num_heads=16,
        window_size=14,
        global_attn_indexes=[4],
        frozen=False,
        sam_checkpoint=sam_checkpoint),
    teacher=None,
    loss_weight=1.0)

# Used by tools/dump_sam_features.py (and as model.teacher for live distillation).
sam_teacher = dict(type='SAMImageEncoder', variant='vit_h', checkpoint=sam_checkpoint)
feat_dir = 'sam_vith_features'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadTeacherFeature'),
    dict(type='PackDistillInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='SA1BDataset', data_root='data/sa1b', split_file='train.txt', img_dir='',
                 feat_dir=feat_dir, pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

# Official schedule: 24 epochs, AdamW 1e-4, wd 0.05, 500 warm-up iterations,
# cosine to 1 %, gradient clipping at 5, batch 2 x 8 GPUs.
max_epochs = 24
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
                     visualization=dict(type='DetVisualizationHook', draw=False))
