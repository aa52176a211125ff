# LVIS v1 val, detector protocol: detector results as prompts, LVIS mask AP
# (APr / APc / APf) with lvis-api (made to run on numpy 2 by LVISMetricNumpy2).
#
# Choose the results file with
#   --cfg-options test_dataloader.dataset.pipeline.2.proposal_file=PATH
_base_ = ['./eval-runtime.py']

dataset_type = 'LVISV1Dataset'
data_root = 'data/'
lvis_ann_file = 'lvis/annotations/lvis_v1_val.json'
lvis_ann_path = data_root + lvis_ann_file
proposal_file = 'data/lvis/proposals/lvis_v1_val_detector_results.json'
eval_image_size = 1024

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(eval_image_size, eval_image_size), keep_ratio=True),
    dict(
        type='LoadProposalPrompts',
        proposal_file=proposal_file,
        ann_file=lvis_ann_path,
        classes=None,  # LVISV1Dataset: every category, in id order
        score_thr=0.0,
        topk=300),  # LVIS evaluates up to 300 detections per image
    dict(type='PackDetInputsWithProposals',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file=lvis_ann_file,
        data_prefix=dict(img='coco/'),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='LVISMetricNumpy2', ann_file=lvis_ann_path, metric='segm')
