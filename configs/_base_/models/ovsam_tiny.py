# A tiny OV-SAM with the same module types as the real one (open_clip
# ModifiedResNet, segment_anything blocks/decoder, mmdet FPN/RoIAlign) for
# tests and the CPU pipeline: 256x256 input, ~1-2 M parameters.
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

image_size = 256
tiny_clip_cfg = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=16),
    text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=4, layers=2))
clip_channels = [64, 128, 256, 512]

data_preprocessor = dict(
    type='OVSAMDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=image_size,
    pad_mask=True,
    num_prompts=8,
    point_ratio=0.5,
    eval_prompt='box')

model = dict(
    type='OVSAM',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='OpenCLIPBackbone', model_name='tiny', model_cfg=tiny_clip_cfg, frozen=True),
    neck=dict(
        type='SAM2CLIPAdapter',
        in_channels=clip_channels,
        strides=[4, 8, 16, 32],
        input_size=image_size,
        embed_dim=64,
        out_channels=64,
        depth=2,
        num_heads=4,
        window_size=8,
        global_attn_indexes=[1],
        frozen=True),
    prompt_encoder=dict(
        type='SAMPromptEncoder', embed_dim=64, image_size=image_size, embedding_size=image_size // 16,
        mask_in_chans=8, frozen=True),
    fpn_neck=dict(type='FPN', in_channels=clip_channels, out_channels=64, num_outs=4),
    mask_decoder=dict(
        type='CLIP2SAMHead',
        transformer_dim=64,
        depth=2,
        mlp_dim=256,
        num_heads=4,
        embed_dim=64,
        region_proj=True,
        roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=64,
            featmap_strides=[4, 8, 16, 32]),
        classifier=dict(vocabulary=None, embed_dim=64),
        num_points=1024,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      background_weight=0.1),
        loss_mask=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
        loss_dice=dict(type='DiceLoss', use_sigmoid=True, activate=True, reduction='mean', naive_dice=True,
                       eps=1.0, loss_weight=5.0)),
    use_clip_ensemble=True,
    alpha=0.1,
    beta=0.9)
