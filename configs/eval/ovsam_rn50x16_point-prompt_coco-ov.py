# As ovsam_rn50x16_box-prompt_coco-ov.py, but each instance is prompted with one
# point: the pixel of its mask farthest from the mask border (distance
# transform). The frozen-CLIP branch looks at the predicted mask's box, never
# at the ground-truth box.
_base_ = ['./ovsam_rn50x16_box-prompt_coco-ov.py']

model = dict(data_preprocessor=dict(eval_prompt='point'))
