# Toy open-vocabulary setting: CLIP2SAM trained on the 7 base shape classes
# only (novel classes' annotations are dropped; the 10-class label space and
# vocabulary stay), evaluated on all 10 with the base/novel split.
_base_ = ['./clip2sam_tiny_1400it_shapes.py']

base_classes = [0, 1, 2, 4, 5, 6, 7]
novel_classes = [3, 8, 9]
train_dataloader = dict(dataset=dict(keep_classes=base_classes))
model = dict(base_classes=base_classes, novel_classes=novel_classes)
val_evaluator = [
    dict(type='PromptSegMetric', base_classes=base_classes, novel_classes=novel_classes),
    dict(type='CocoMetric', ann_file='data/shapes/annotations/instances_val.json', metric=['segm'], proposal_nums=(1, 10, 100)),
]
test_evaluator = val_evaluator
