# OV-SAM (CLIP RN50x16, SAM2CLIP, CLIP2SAM trained on the 48 COCO base classes)
# prompted with COCO val2017 ground-truth boxes; mIoU and accuracy over the
# 65 classes of the open-vocabulary split, overall / base / novel.
#
#   python tools/test.py configs/eval/ovsam_rn50x16_box-prompt_coco-ov.py none
#
# The model is assembled from the official release files below (checkpoint
# argument 'none'). The vocabulary file holds the CLIP text embeddings of the
# 80 COCO classes (the released model's label space and normalisation; the 15
# outside the split are set to -1000 after the fusion), with synonyms; how to
# make it: configs/README.md (vocabulary files).
_base_ = [
    '../_base_/models/ovsam_rn50x16.py',
    './_base_/eval-data_coco-ov_interactive.py',
]

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    prompt_source='gt',
    data_preprocessor=dict(eval_prompt='box'),
    base_classes={{_base_.coco_ov_base_ids}},
    novel_classes={{_base_.coco_ov_novel_ids}},
    mask_decoder=dict(classifier=dict(vocabulary='data/embeddings/rn50x16_coco.pth', num_classes=80)),
    checkpoints=dict(
        clip=checkpoint_dir + 'RN50x16.pt',
        sam2clip=checkpoint_dir + 'sam2clip_vith_rn50x16.pth',
        clip2sam=checkpoint_dir + 'clip2sam_coco_rn50x16.pth',
        sam=checkpoint_dir + 'sam_vit_h_4b8939.pth'))
