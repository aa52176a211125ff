# OV-SAM stage 2 (CLIP2SAM) on COCO open-vocabulary: trained on the 48 base
# classes' instances, evaluated on the 65 (48 base + 17 novel) of the split.
#
#   mim train ovsam configs/ovsam_coco.py            # or tools/dist_train.sh configs/ovsam_coco.py 8
#
# The label space and the vocabulary are COCO's 80 classes, as in the released
# model: the head's and the frozen CLIP's scores are softmaxed over all 80 +
# background columns and fused, and only then are the 15 classes outside the
# 48/17 split set to -1000 (base_classes + novel_classes below). A 65-class
# vocabulary would normalise over 66 columns and move the fused scores.
#
# Needs (local files, nothing is downloaded):
#   checkpoints/RN50x16.pt                    OpenAI CLIP RN50x16 (TorchScript) or an open_clip file
#   checkpoints/sam_vit_h_4b8939.pth          SAM ViT-H (prompt encoder, decoder initialisation)
#   checkpoints/sam2clip_vith_rn50x16.pth     stage 1 (configs/sam2clip_rn50x16_vith-distill_24e_sa1b.py or the release)
#   data/embeddings/rn50x16_coco.pth          the 80 COCO classes with synonyms (configs/README.md)
_base_ = [
    './_base_/ovsam_runtime.py',
    './_base_/models/ovsam_rn50x16.py',
    './_base_/datasets/coco_ov_instance_lsj.py',
    './_base_/schedules/clip2sam_12e.py',
]
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

clip_checkpoint = 'checkpoints/RN50x16.pt'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
sam2clip_checkpoint = 'checkpoints/sam2clip_vith_rn50x16.pth'
vocabulary = 'data/embeddings/rn50x16_coco.pth'
from ovsam.datasets.coco_ov import COCO_OV_BASE_IDS, COCO_OV_NOVEL_IDS  # noqa: E402

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(init_cfg=dict(type='Pretrained', checkpoint=sam2clip_checkpoint, prefix='neck_student')),
    prompt_encoder=dict(sam_checkpoint=sam_checkpoint),
    mask_decoder=dict(sam_checkpoint=sam_checkpoint, classifier=dict(vocabulary=vocabulary, num_classes=80)),
    # indices into the 80 classes
    base_classes=list(COCO_OV_BASE_IDS),
    novel_classes=list(COCO_OV_NOVEL_IDS))

val_evaluator = [
    dict(type='PromptSegMetric', base_classes=list(COCO_OV_BASE_IDS), novel_classes=list(COCO_OV_NOVEL_IDS)),
    # COCO mask AP (ground-truth prompts) over the 65 classes of the split
    dict(type='CocoOVMetric', ann_file='data/coco/annotations/instances_val2017.json', metric=['segm'],
         proposal_nums=(1, 10, 100)),
]
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
