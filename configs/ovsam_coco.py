# The COCO entry point of `mim train ovsam configs/ovsam_coco.py` (and of
# OVSAMPredictor.from_config): CLIP2SAM on COCO open-vocabulary, 12 epochs.
# Everything is in clip2sam_rn50x16_12e_coco-ov.py.
_base_ = ['./clip2sam_rn50x16_12e_coco-ov.py']
