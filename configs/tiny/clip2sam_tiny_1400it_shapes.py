# Stage 2 at toy scale: CLIP2SAM on the generated shapes (COCO format).
# Frozen tiny CLIP (stage 0) and SAM2CLIP adapter (stage 1); prompt encoder
# and decoder initialised from the tiny SAM (stage -1).
_base_ = ['./_base_/tiny_runtime.py', '../_base_/models/ovsam_tiny.py', './_base_/shapes_instance_256.py']

clip_checkpoint = 'work_dirs/tiny_pipeline/clip/tiny_clip.pt'
sam_checkpoint = 'work_dirs/tiny_pipeline/sam/sam_tiny.pth'
sam2clip_checkpoint = 'work_dirs/tiny_pipeline/sam2clip/sam2clip_tiny.pth'
vocabulary = 'work_dirs/tiny_pipeline/clip/shapes_vocabulary.pth'

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=clip_checkpoint)),
    # Unlike the paper (adapter frozen after stage 1), the toy adapter keeps
    # training here: its teacher, the tiny SAM, is far weaker than SAM-H.
    neck=dict(frozen=False,
              init_cfg=dict(type='Pretrained', checkpoint=sam2clip_checkpoint, prefix='neck_student')),
    # A 32-channel FPN: the stride-4 level's 3x3 convolution was a third of
    # an iteration at 64 channels (docs/toy_pipeline.md); same accuracy.
    fpn_neck=dict(out_channels=32),
    prompt_encoder=dict(sam_checkpoint=sam_checkpoint),
    mask_decoder=dict(sam_checkpoint=sam_checkpoint, roi_extractor=dict(out_channels=32),
                      classifier=dict(vocabulary=vocabulary, num_classes=10)),
    # trained on every class: each one is "seen" by the head
    base_classes=list(range(10)),
    novel_classes=[])

val_evaluator = [
    dict(type='PromptSegMetric'),
    dict(type='CocoMetric', ann_file='data/shapes/annotations/instances_val.json', metric=['segm'], proposal_nums=(1, 10, 100)),
]
test_evaluator = val_evaluator

max_iters = 1400
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=700))
