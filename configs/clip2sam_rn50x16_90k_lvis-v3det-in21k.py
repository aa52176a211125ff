# OV-SAM stage 2 (CLIP2SAM) co-trained for a large vocabulary (paper, Table 5:
# V3Det + LVIS + ImageNet-21k, 25,898 classes): LVIS v1 without rare classes
# (masks and labels: every loss), V3Det (boxes and labels: classification
# loss only) and ImageNet-21k (image labels, whole-image box prompts:
# classification loss only), 1 : 1 : 2 images in every batch of 4 per GPU.
# Supervision is per instance (mask losses where a mask exists, points only
# there) and every instance is scored against the joint vocabulary
# (docs/large_vocabulary.md).
#
#   bash tools/dist_train.sh configs/clip2sam_rn50x16_90k_lvis-v3det-in21k.py 8
#
# Needs (local files, nothing is downloaded):
#   checkpoints/RN50x16.pt, checkpoints/sam_vit_h_4b8939.pth, checkpoints/sam2clip_vith_rn50x16.pth
#   data/lvis/, data/V3Det/, data/imagenet21k/ (see the messages of a missing one)
#   data/embeddings/lvis_v3det_in21k.json (joint vocabulary) and rn50x16_lvis_v3det_in21k.pth (its
#   text embeddings), both from one command (`build_vocabulary_cmd` below):
#     python tools/build_vocabulary.py --source lvis=data/lvis/annotations/lvis_v1_train.json \
#       --source v3det=data/V3Det/annotations/v3det_2023_v1_train.json \
#       --source in21k=data/imagenet21k/classes.txt --vocab-out data/embeddings/lvis_v3det_in21k.json \
#       --clip-model RN50x16 --clip-checkpoint checkpoints/RN50x16.pt --out data/embeddings/rn50x16_lvis_v3det_in21k.pth
_base_ = [
    './_base_/ovsam_runtime.py',
    './_base_/models/ovsam_rn50x16.py',
    './_base_/datasets/cotrain_lvis-v3det-in21k_lsj.py',
    './_base_/schedules/clip2sam_90k.py',
]
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=10000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)

clip_checkpoint = 'checkpoints/RN50x16.pt'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
sam2clip_checkpoint = 'checkpoints/sam2clip_vith_rn50x16.pth'
vocabulary = 'data/embeddings/rn50x16_lvis_v3det_in21k.pth'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(init_cfg=dict(type='Pretrained', checkpoint=sam2clip_checkpoint, prefix='neck_student')),
    prompt_encoder=dict(sam_checkpoint=sam_checkpoint),
    mask_decoder=dict(
        sam_checkpoint=sam_checkpoint,
        # the released large-vocabulary head pools 7x7 (DESIGN 2)
        roi_extractor=dict(roi_layer=dict(output_size=7)),
        classifier=dict(vocabulary=vocabulary)))
# label i of every source (joint ids) must be text embedding i
custom_hooks = [dict(type='CheckVocabularyHook')]
