# The released large-vocabulary OV-SAM: the model set the authors' web demo
# uses (CLIP2SAM trained on LVIS without rare classes, FPN and RoI projection
# co-trained with V3Det), assembled offline and strictly from its files:
#
#   checkpoints/RN50x16.pt                      OpenAI CLIP            -> backbone
#   checkpoints/sam2clip_vith_rn50.pth          neck_student.*         -> SAM2CLIP adapter
#   checkpoints/ovsam_R50x16_lvisnorare.pth     mask_decoder.*         -> CLIP2SAM head
#   checkpoints/R50x16_fpn_lvis_norare_v3det.pth fpn_neck.*, roi_conv.* -> FPN, the head's RoI projection
#   checkpoints/sam_vit_h_4b8939.pth            prompt_encoder.*       -> SAM prompt encoder
#   checkpoints/RN50x16_LVISV1Dataset.pth       bare [1203, synonyms, 768] tensor, LVIS v1 order
#
#   python tools/demo/web_demo.py --config configs/ovsam_rn50x16_large-vocab_lvis-v3det.py
#   OVSAMPredictor.from_config('configs/ovsam_rn50x16_large-vocab_lvis-v3det.py')
#
# The head pools 7x7 RoIs in this set. Any other vocabulary (a joint one made
# by tools/build_vocabulary.py, ~26k classes) replaces the LVIS file:
# model.mask_decoder.classifier = dict(vocabulary=PATH, class_names=None, num_classes=None).
_base_ = ['./_base_/models/ovsam_rn50x16.py', './_base_/ovsam_runtime.py']

custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

checkpoint_dir = 'checkpoints/'
model = dict(
    mask_decoder=dict(
        roi_extractor=dict(roi_layer=dict(output_size=7)),
        classifier=dict(vocabulary=checkpoint_dir + 'RN50x16_LVISV1Dataset.pth', class_names='lvis',
                        num_classes=1203)),
    checkpoints=dict(
        clip=checkpoint_dir + 'RN50x16.pt',
        sam2clip=checkpoint_dir + 'sam2clip_vith_rn50.pth',
        clip2sam=dict(
            mask_decoder=checkpoint_dir + 'ovsam_R50x16_lvisnorare.pth',
            fpn_neck=checkpoint_dir + 'R50x16_fpn_lvis_norare_v3det.pth',
            roi_conv=checkpoint_dir + 'R50x16_fpn_lvis_norare_v3det.pth'),
        sam=checkpoint_dir + 'sam_vit_h_4b8939.pth'))
