# OV-SAM with CLIP RN50x16, SAM2CLIP (ViT-H width) and SAM ViT-H prompt
# encoder / decoder at 1024x1024: the released model's architecture.
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

image_size = 1024
clip_model = 'RN50x16'
clip_channels = [384, 768, 1536, 3072]

data_preprocessor = dict(
    type='OVSAMDataPreprocessor',
    # The released model feeds CLIP with SAM's (ImageNet) normalisation.
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=image_size,
    pad_mask=True,
    num_prompts=40,
    point_ratio=0.5,
    eval_prompt='box')

model = dict(
    type='OVSAM',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='OpenCLIPBackbone', model_name=clip_model, frozen=True),
    neck=dict(
        type='SAM2CLIPAdapter',
        in_channels=clip_channels,
        strides=[4, 8, 16, 32],
        input_size=image_size,
        embed_dim=1280,
        out_channels=256,
        depth=5,
        num_heads=16,
        window_size=14,
        global_attn_indexes=[4],
        frozen=True),
    prompt_encoder=dict(
        type='SAMPromptEncoder', embed_dim=256, image_size=image_size, embedding_size=image_size // 16,
        frozen=True),
    fpn_neck=dict(type='FPN', in_channels=clip_channels, out_channels=256, num_outs=4),
    mask_decoder=dict(
        type='CLIP2SAMHead',
        transformer_dim=256,
        depth=2,
        mlp_dim=2048,
        num_heads=8,
        embed_dim=768,
        roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=12, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        classifier=dict(vocabulary=None, embed_dim=768),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      background_weight=0.1),
        loss_mask=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
        loss_dice=dict(type='DiceLoss', use_sigmoid=True, activate=True, reduction='mean', naive_dice=True,
                       eps=1.0, loss_weight=5.0)),
    use_clip_ensemble=True,
    alpha=0.1,
    beta=0.9)
