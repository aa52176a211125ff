# OV-SAM stage 2 (CLIP2SAM) on LVIS v1 without rare classes (novel = rare).
# The head's RoIAlign is 7x7 for LVIS (12x12 for COCO), as released.
#   python tools/gen_text_embeddings.py --classes lvis --clip-model RN50x16 \
#       --clip-checkpoint checkpoints/RN50x16.pt --out data/embeddings/rn50x16_lvis.pth
_base_ = [
    './_base_/ovsam_runtime.py',
    './_base_/models/ovsam_rn50x16.py',
    './_base_/datasets/lvis_v1_norare_instance_lsj.py',
    './_base_/schedules/clip2sam_12e.py',
]
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

clip_checkpoint = 'checkpoints/RN50x16.pt'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
sam2clip_checkpoint = 'checkpoints/sam2clip_vith_rn50x16.pth'

vocabulary = 'data/embeddings/rn50x16_lvis.pth'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(init_cfg=dict(type='Pretrained', checkpoint=sam2clip_checkpoint, prefix='neck_student')),
    prompt_encoder=dict(sam_checkpoint=sam_checkpoint),
    mask_decoder=dict(
        sam_checkpoint=sam_checkpoint,
        roi_extractor=dict(roi_layer=dict(output_size=7)),
        classifier=dict(vocabulary=vocabulary, num_classes=1203)))
# Without a base/novel list every class counts as unseen in the ensemble (the
# released code's behaviour); give base_classes (frequent + common indices)
# and novel_classes (rare) to use the split.
val_evaluator = [
    dict(type='PromptSegMetric'),
    dict(type='LVISMetric', ann_file='data/lvis/annotations/lvis_v1_val.json', metric=['segm']),
]
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
