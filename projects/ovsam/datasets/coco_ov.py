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
    'tv': 'tv,television,monitor', 'couch': 'couch,sofa', 'cup': 'cup,mug', 'mouse': 'mouse,computer mouse',
    'remote': 'remote,remote control', 'bicycle': 'bicycle,bike', 'handbag': 'handbag,purse',
    'refrigerator': 'refrigerator,fridge', 'donut': 'donut,doughnut', 'skis': 'skis,ski',
}


def with_synonyms(classes):
    """Class strings for the vocabulary tool (``'couch'`` -> ``'couch,sofa'``)."""
    return [COCO_OV_SYNONYMS.get(c, c) for c in classes]


assert len(COCO_BASE_48) == 48 and len(COCO_NOVEL_17) == 17 and len(COCO_OV_CLASSES) == 65


from mmdet.datasets import LVISV1Dataset  # noqa: E402

from ..registry import DATASETS  # noqa: E402
from .checked_coco import CheckedCocoDataset  # noqa: E402


@DATASETS.register_module()
class CocoOVDataset(CheckedCocoDataset):
    """COCO in the 65-class open-vocabulary label space.

    ``keep='base'`` drops the novel classes' annotations (training: the model
    must never see them), ``keep='all'`` keeps both (evaluation). Labels index
    :data:`COCO_OV_CLASSES` either way, so one vocabulary serves both.
    """

    METAINFO = dict(classes=COCO_OV_CLASSES, palette=CocoDataset.METAINFO['palette'][:len(COCO_OV_CLASSES)])

    def __init__(self, *args, keep: str = 'all', **kwargs) -> None:
        if keep not in ('all', 'base', 'novel'):
            raise ValueError(f"keep must be 'all', 'base' or 'novel', got {keep!r}")
        ids = dict(all=None, base=COCO_OV_BASE_IDS, novel=COCO_OV_NOVEL_IDS)[keep]
        super().__init__(*args, keep_classes=ids, **kwargs)


@DATASETS.register_module()
class LVISV1NoRareDataset(LVISV1Dataset):
    """LVIS v1 without the rare classes' annotations (the 1203-class label
    space is kept, so rare classes stay recognisable through CLIP)."""

    def load_data_list(self):
        data_list = super().load_data_list()
        cats = self.lvis.load_cats(self.cat_ids)
        rare = {self.cat2label[c['id']] for c in cats if c.get('frequency') == 'r'}
        if not cats or all('frequency' not in c for c in cats):
            raise ValueError(f'{self.ann_file}: categories carry no "frequency" field; '
                             'LVIS v1 annotations are needed to drop rare classes')
        for info in data_list:
            info['instances'] = [i for i in info['instances'] if i['bbox_label'] not in rare]
        return data_list
