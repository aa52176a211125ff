# COCO val2017 (all 80 classes), detector protocol: a detector's boxes,
# scores and labels (COCO results JSON or an mmdet --out pickle) are the
# prompts; the predictions are scored with the standard COCO mask AP.
#
# Choose the results file with
#   --cfg-options test_dataloader.dataset.pipeline.2.proposal_file=PATH
_base_ = ['./eval-runtime.py']

dataset_type = 'CocoDataset'
data_root = 'data/coco/'
coco_ann_file = 'annotations/instances_val2017.json'
proposal_file = 'data/coco/proposals/val2017_detector_results.json'
eval_image_size = 1024

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(eval_image_size, eval_image_size), keep_ratio=True),
    # after Resize: boxes are mapped with results['scale_factor']
    dict(
        type='LoadProposalPrompts',
        proposal_file=proposal_file,
        ann_file=data_root + coco_ann_file,
        classes=None,  # all categories of the annotation file, as CocoDataset
        score_thr=0.0,
        topk=100),
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
        ann_file=coco_ann_file,
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline))
# proposal_nums sets COCOeval's maxDets: (1, 10, 100) is the standard COCO
# protocol. With mmdet's default (100, 300, 1000), mAP is still at 100
# detections per image but mAP_50 / 75 / s / m / l would be at 1000.
test_evaluator = dict(
    type='CocoMetric', ann_file=data_root + coco_ann_file, metric='segm', proposal_nums=(1, 10, 100))
