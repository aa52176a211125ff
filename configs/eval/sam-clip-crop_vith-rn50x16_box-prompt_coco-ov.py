# Paper baseline (a): SAM ViT-H segments each ground-truth box; the crop of
# the mask's box, resized to 384x384, is classified by the whole CLIP RN50x16
# image tower against the 80 COCO class names (the 15 outside the 48/17 split
# cannot be predicted). Same data, vocabulary and metric as
# ovsam_rn50x16_box-prompt_coco-ov.py.
#
#   python tools/test.py configs/eval/sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py none
_base_ = ['./_base_/eval-data_coco-ov_interactive.py']

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    type='SAMCropCLIP',
    data_preprocessor=dict(
        type='OVSAMDataPreprocessor',
        # SAM's normalisation; CLIP gets its own (clip_normalization='clip')
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1024,
        pad_mask=True,
        eval_prompt='box'),
    sam=dict(
        image_encoder=dict(variant='vit_h', image_size=1024),
        prompt_encoder=dict(embed_dim=256, image_size=1024, embedding_size=64),
        decoder=dict(transformer_dim=256, depth=2, mlp_dim=2048, num_heads=8),
        checkpoint=checkpoint_dir + 'sam_vit_h_4b8939.pth'),
    clip=dict(
        type='OpenCLIPBackbone',
        model_name='RN50x16',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_dir + 'RN50x16.pt')),
    classifier=dict(vocabulary='data/embeddings/rn50x16_coco.pth', num_classes=80),
    clip_normalization='clip',
    prompt_source='gt',
    base_classes={{_base_.coco_ov_base_ids}},
    novel_classes={{_base_.coco_ov_novel_ids}})
