# OV-SAM segments (and labels) a detector's boxes on LVIS v1 val; LVIS mask
# AP (AP, APr, APc, APf) with lvis-api.
#
#   python tools/test.py configs/eval/ovsam_rn50x16_detector-prompt_lvis.py none \
#       --cfg-options test_dataloader.dataset.pipeline.2.proposal_file=RESULTS.json
_base_ = [
    '../_base_/models/ovsam_rn50x16.py',
    './_base_/eval-data_lvis_detector.py',
]

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    type='OVSAMFrequencySplit',
    split_ann_file={{_base_.lvis_ann_path}},
    prompt_source='pred',
    label_source='ovsam',
    data_preprocessor=dict(eval_prompt=None),
    mask_decoder=dict(
        roi_extractor=dict(roi_layer=dict(output_size=7)),
        classifier=dict(vocabulary='data/embeddings/rn50x16_lvis.pth', num_classes=1203)),
    checkpoints=dict(
        clip=checkpoint_dir + 'RN50x16.pt',
        sam2clip=checkpoint_dir + 'sam2clip_vith_rn50x16.pth',
        clip2sam=checkpoint_dir + 'clip2sam_lvis_rn50x16.pth',
        sam=checkpoint_dir + 'sam_vit_h_4b8939.pth'))
