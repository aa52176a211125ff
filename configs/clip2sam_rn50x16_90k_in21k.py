# OV-SAM stage 2 (CLIP2SAM) trained on ImageNet-21k image labels alone (paper:
# 44.5 % zero-shot accuracy on COCO instances, Table 5): every image is one
# instance prompted by its whole-image box, without a mask, so only the
# recognition head (FPN, RoI projection, decoder's label path) learns; masks
# stay as initialised from SAM. 8 images per GPU.
#
#   bash tools/dist_train.sh configs/clip2sam_rn50x16_90k_in21k.py 8
#
# Needs: checkpoints/RN50x16.pt, checkpoints/sam_vit_h_4b8939.pth,
# checkpoints/sam2clip_vith_rn50x16.pth; data/imagenet21k/ (train/<wnid>/,
# classes.txt, meta/train.txt: see the message of a missing one); its classes
# as a one-source joint vocabulary (WordNet ids kept; ImageNet-21k classes with
# the same names become one class) and their text embeddings:
#   python tools/build_vocabulary.py --source in21k=data/imagenet21k/classes.txt \
#       --vocab-out data/embeddings/in21k.json --clip-model RN50x16 \
#       --clip-checkpoint checkpoints/RN50x16.pt --out data/embeddings/rn50x16_in21k.pth
# No validation during training (the classes are ImageNet's); the zero-shot
# COCO protocol swaps in COCO's vocabulary, the head's weights stay:
#   python tools/test.py configs/eval/ovsam_rn50x16_box-prompt_coco-ov.py none \
#       --cfg-options model.checkpoints.clip2sam=work_dirs/clip2sam_rn50x16_90k_in21k/iter_90000.pth
_base_ = [
    './_base_/ovsam_runtime.py',
    './_base_/models/ovsam_rn50x16.py',
    './_base_/datasets/in21k_image-level.py',
    './_base_/schedules/clip2sam_90k.py',
]
custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=10000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)

clip_checkpoint = 'checkpoints/RN50x16.pt'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
sam2clip_checkpoint = 'checkpoints/sam2clip_vith_rn50x16.pth'
vocabulary = 'data/embeddings/rn50x16_in21k.pth'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    neck=dict(init_cfg=dict(type='Pretrained', checkpoint=sam2clip_checkpoint, prefix='neck_student')),
    prompt_encoder=dict(sam_checkpoint=sam_checkpoint),
    mask_decoder=dict(sam_checkpoint=sam_checkpoint, classifier=dict(vocabulary=vocabulary)))
train_dataloader = dict(dataset=dict(joint_vocabulary='data/embeddings/in21k.json', source='in21k'))
train_cfg = dict(val_interval=10 ** 9)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
custom_hooks = [dict(type='CheckVocabularyHook')]
