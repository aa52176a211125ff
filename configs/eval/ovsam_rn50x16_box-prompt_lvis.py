# OV-SAM with the CLIP2SAM head trained on LVIS (frequent + common classes),
# prompted with LVIS v1 val ground-truth boxes; mIoU and accuracy overall,
# frequent / common / rare and base (f + c) / novel (r).
#
#   python tools/test.py configs/eval/ovsam_rn50x16_box-prompt_lvis.py none
#
# Vocabulary: python tools/gen_text_embeddings.py --classes lvis --clip-model RN50x16 \
#     --clip-checkpoint checkpoints/RN50x16.pt --out data/embeddings/rn50x16_lvis.pth
_base_ = [
    '../_base_/models/ovsam_rn50x16.py',
    './_base_/eval-data_lvis_interactive.py',
]

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    # seen = frequent + common, unseen = rare, read from the annotation file
    type='OVSAMFrequencySplit',
    split_ann_file={{_base_.lvis_ann_path}},
    prompt_source='gt',
    data_preprocessor=dict(eval_prompt='box'),
    mask_decoder=dict(
        # the released LVIS head pools 7x7 RoIs (12x12 for COCO)
        roi_extractor=dict(roi_layer=dict(output_size=7)),
        classifier=dict(vocabulary='data/embeddings/rn50x16_lvis.pth', num_classes=1203)),
    checkpoints=dict(
        clip=checkpoint_dir + 'RN50x16.pt',
        sam2clip=checkpoint_dir + 'sam2clip_vith_rn50x16.pth',
        clip2sam=checkpoint_dir + 'clip2sam_lvis_rn50x16.pth',
        sam=checkpoint_dir + 'sam_vit_h_4b8939.pth'))
