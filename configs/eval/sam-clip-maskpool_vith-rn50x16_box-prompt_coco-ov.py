# Paper baseline (b): SAM ViT-H segments each ground-truth box; CLIP RN50x16's
# dense C5 features of the whole (1024-pixel) image are averaged inside the
# mask and classified through CLIP's attention-pool head.
#
#   python tools/test.py configs/eval/sam-clip-maskpool_vith-rn50x16_box-prompt_coco-ov.py none
_base_ = ['./sam-clip-crop_vith-rn50x16_box-prompt_coco-ov.py']

model = dict(type='SAMMaskPoolCLIP', pooling='attnpool')
