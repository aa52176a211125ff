# Paper baseline (b): SAM ViT-H segments each ground-truth box; CLIP RN50x16's
# dense C5 features of the whole (1024-pixel) image are averaged inside the
# mask and classified through CLIP's attention-pool head.
#
#   python tools/test.py configs/eval/baseline_sam-vith_clip-maskpool_coco-ov_box.py none
_base_ = ['./baseline_sam-vith_clip-crop_coco-ov_box.py']

model = dict(type='SAMMaskPoolCLIP', pooling='attnpool')
