"""The COCO open-vocabulary split (48 base / 17 novel of the 80 classes).

Names are COCO's own category names (so mmdet's ``CocoDataset`` maps them to
category ids); :data:`COCO_OV_SYNONYMS` adds synonyms for the text embeddings.
"""
from mmdet.datasets import CocoDataset

COCO_BASE_48 = (
    'person', 'bicycle', 'car', 'motorcycle', 'train', 'truck', 'boat', 'bench', 'bird', 'horse', 'sheep', 'bear',
    'zebra', 'giraffe', 'backpack', 'handbag', 'suitcase', 'frisbee', 'skis', 'kite', 'surfboard', 'bottle',
    'fork', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'pizza', 'donut',
    'chair', 'bed', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'microwave', 'oven', 'toaster', 'refrigerator',
    'book', 'clock', 'vase', 'toothbrush')
COCO_NOVEL_17 = ('airplane', 'bus', 'cat', 'dog', 'cow', 'elephant', 'umbrella', 'tie', 'snowboard', 'skateboard',
                 'cup', 'knife', 'cake', 'couch', 'keyboard', 'sink', 'scissors')

# The 65 classes in COCO's category order (evaluation label space).
COCO_OV_CLASSES = tuple(c for c in CocoDataset.METAINFO['classes'] if c in COCO_BASE_48 + COCO_NOVEL_17)
COCO_OV_BASE_IDS = tuple(i for i, c in enumerate(COCO_OV_CLASSES) if c in COCO_BASE_48)
COCO_OV_NOVEL_IDS = tuple(i for i, c in enumerate(COCO_OV_CLASSES) if c in COCO_NOVEL_17)

COCO_OV_SYNONYMS = {
    'person': 'person,people,human', 'motorcycle': 'motorcycle,motorbike', 'airplane': 'airplane,aeroplane',
    'tv': 'tv,television,monitor', 'couch': 'couch,sofa', 'cup': 'cup,mug', 'mouse': 'computer mouse',
    'remote': 'remote control', 'bicycle': 'bicycle,bike', 'handbag': 'handbag,purse',
    'refrigerator': 'refrigerator,fridge', 'donut': 'donut,doughnut', 'skis': 'skis,ski',
}


def with_synonyms(classes):
    """Class strings for the vocabulary tool (``'couch'`` -> ``'couch,sofa'``)."""
    return [COCO_OV_SYNONYMS.get(c, c) for c in classes]


assert len(COCO_BASE_48) == 48 and len(COCO_NOVEL_17) == 17 and len(COCO_OV_CLASSES) == 65
