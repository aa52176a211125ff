# OV-SAM segments (and labels) a detector's boxes on COCO val2017; standard
# COCO mask AP over the 80 classes. The COCO head was trained on the 48 base
# classes: those are "seen" in the open-vocabulary ensemble, the other 32
# (the 17 novel ones and the 15 outside the OV split) "unseen".
#
#   python tools/test.py configs/eval/ovsam_rn50x16_detector-prompt_coco.py none \
#       --cfg-options test_dataloader.dataset.pipeline.2.proposal_file=RESULTS.json
#
# RESULTS: COCO results JSON ([{image_id, category_id, bbox xywh, score}]) or
# an mmdet `tools/test.py --out` pickle of the detector. Labels: OV-SAM's own
# (model.label_source='detector' keeps the detector's).
# Vocabulary: the 80 COCO classes with synonyms, the file of the COCO-OV configs
# (configs/README.md says how to make it).
_base_ = [
    '../_base_/models/ovsam_rn50x16.py',
    './_base_/eval-data_coco_detector.py',
]

import ovsam.datasets.coco_ov as _coco_ov  # noqa: E402  (modules are not kept in the config)

coco_base_ids = list(_coco_ov.COCO_OV_BASE_IDS)
coco_unseen_ids = [i for i in range(len(_coco_ov.COCO_CLASSES)) if i not in coco_base_ids]

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    prompt_source='pred',
    label_source='ovsam',
    data_preprocessor=dict(eval_prompt=None),  # prompts come from the data samples
    base_classes=coco_base_ids,
    novel_classes=coco_unseen_ids,
    mask_decoder=dict(classifier=dict(vocabulary='data/embeddings/rn50x16_coco.pth', num_classes=80)),
    checkpoints=dict(
        clip=checkpoint_dir + 'RN50x16.pt',
        sam2clip=checkpoint_dir + 'sam2clip_vith_rn50x16.pth',
        clip2sam=checkpoint_dir + 'clip2sam_coco_rn50x16.pth',
        sam=checkpoint_dir + 'sam_vit_h_4b8939.pth'))
