# Toy stage -1: a tiny SAM (segment_anything modules) trained class-agnostically
# on prompted masks of the SA-1B-style split: the shapes of every class and
# outlines that no class names (datasets/shapes.py EXTRA_SHAPES), as SAM is
# trained on SA-1B. Only needed because no pretrained SAM exists here; its
# state dict has SAM's layout (image_encoder.*, ...).
_base_ = ['./_base_/tiny_runtime.py', './_base_/shapes_instance_256.py']

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)
image_size = 256
model = dict(
    type='PromptableSAM',
    data_preprocessor=dict(
        type='OVSAMDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=image_size,
        pad_mask=True,
        num_prompts=8,
        point_ratio=0.5,
        eval_prompt='box'),
    image_encoder=dict(variant='custom', image_size=image_size, out_chans=64, patch_size=16, window_size=8,
                       embed_dim=64, depth=4, num_heads=4, global_attn_indexes=[1, 3]),
    prompt_encoder=dict(embed_dim=64, image_size=image_size, embedding_size=image_size // 16, mask_in_chans=8),
    decoder=dict(transformer_dim=64, depth=2, mlp_dim=256, num_heads=4),
    loss_mask=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
    loss_dice=dict(type='DiceLoss', use_sigmoid=True, activate=True, reduction='mean', naive_dice=True, eps=1.0,
                   loss_weight=5.0),
    num_points=1024)

max_iters = 600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))

# One class-agnostic category; the masks of every generated shape.
train_dataloader = dict(
    dataset=dict(
        metainfo=dict(classes=('object', )),
        ann_file='annotations/instances_sa1b.json',
        data_prefix=dict(img='sa1b/')))

val_evaluator = [dict(type='PromptSegMetric')]
test_evaluator = val_evaluator
