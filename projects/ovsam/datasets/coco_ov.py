"""The COCO open-vocabulary split (48 base / 17 novel of the 80 classes).

The label space is COCO's 80 classes, as in the released model: its
vocabulary is the 80-class COCO one (+ background), the head's and the
frozen CLIP's scores are softmaxed over all 81 columns and fused, and only
then are the 15 classes outside the split set to -1000 (``OVSAM`` does that
when ``base_classes`` / ``novel_classes`` are given). A 65-class vocabulary
would normalise over 66 columns instead and move the fused scores (DESIGN
1.7). So :data:`COCO_OV_BASE_IDS` / :data:`COCO_OV_NOVEL_IDS` index
``CocoDataset``'s 80 classes, and :class:`CocoOVDataset` keeps the 80-class
metainfo while it drops the annotations outside the split.

Names are COCO's own category names (so mmdet's ``CocoDataset`` maps them to
category ids); :data:`COCO_OV_SYNONYMS` adds synonyms for the text embeddings.
"""
from mmdet.datasets import CocoDataset
from mmdet.evaluation import CocoMetric

COCO_BASE_48 = (
    'person', 'bicycle', 'car', 'motorcycle', 'train', 'truck', 'boat', 'bench', 'bird', 'horse', 'sheep', 'bear',
    'zebra', 'giraffe', 'backpack', 'handbag', 'suitcase', 'frisbee', 'skis', 'kite', 'surfboard', 'bottle',
    'fork', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'pizza', 'donut',
    'chair', 'bed', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'microwave', 'oven', 'toaster', 'refrigerator',
    'book', 'clock', 'vase', 'toothbrush')
COCO_NOVEL_17 = ('airplane', 'bus', 'cat', 'dog', 'cow', 'elephant', 'umbrella', 'tie', 'snowboard', 'skateboard',
                 'cup', 'knife', 'cake', 'couch', 'keyboard', 'sink', 'scissors')

# The label space: COCO's 80 classes in mmdet's order.
COCO_CLASSES = tuple(CocoDataset.METAINFO['classes'])
# The 65 classes of the split, in COCO's order.
COCO_OV_CLASSES = tuple(c for c in COCO_CLASSES if c in COCO_BASE_48 + COCO_NOVEL_17)
# Indices into COCO_CLASSES (the 80-class label space).
COCO_OV_BASE_IDS = tuple(i for i, c in enumerate(COCO_CLASSES) if c in COCO_BASE_48)
COCO_OV_NOVEL_IDS = tuple(i for i, c in enumerate(COCO_CLASSES) if c in COCO_NOVEL_17)

COCO_OV_SYNONYMS = {
    'person': 'person,people,human', 'motorcycle': 'motorcycle,motorbike', 'airplane': 'airplane,aeroplane',
    'tv': 'tv,television,monitor', 'couch': 'couch,sofa', 'cup': 'cup,mug', 'mouse': 'mouse,computer mouse',
    'remote': 'remote,remote control', 'bicycle': 'bicycle,bike', 'handbag': 'handbag,purse',
    'refrigerator': 'refrigerator,fridge', 'donut': 'donut,doughnut', 'skis': 'skis,ski',
}


def with_synonyms(classes):
    """Class strings for the vocabulary tool (``'couch'`` -> ``'couch,sofa'``)."""
    return [COCO_OV_SYNONYMS.get(c, c) for c in classes]


assert len(COCO_CLASSES) == 80 and len(COCO_BASE_48) == 48 and len(COCO_NOVEL_17) == 17
assert len(COCO_OV_CLASSES) == 65


from mmdet.datasets import LVISV1Dataset  # noqa: E402

from ..registry import DATASETS, METRICS  # noqa: E402
from .checked_coco import CheckedCocoDataset  # noqa: E402


@DATASETS.register_module()
class CocoOVDataset(CheckedCocoDataset):
    """COCO for the open-vocabulary protocol: the 80-class label space of
    ``CocoDataset``, with only the split's annotations.

    ``keep='base'`` keeps the 48 base classes' instances (training: the model
    must never see a novel one), ``keep='all'`` the 65 classes of the split
    (evaluation; the 15 classes outside it are dropped), ``keep='novel'`` the
    17 novel ones. Labels index the 80 COCO classes in every case, so one
    80-class vocabulary serves training and evaluation. Training sets
    (``filter_cfg.filter_empty_gt``) also drop images left without instances.
    """

    METAINFO = CocoDataset.METAINFO

    def __init__(self, *args, keep: str = 'all', **kwargs) -> None:
        if keep not in ('all', 'base', 'novel'):
            raise ValueError(f"keep must be 'all', 'base' or 'novel', got {keep!r}")
        ids = dict(all=COCO_OV_BASE_IDS + COCO_OV_NOVEL_IDS, base=COCO_OV_BASE_IDS, novel=COCO_OV_NOVEL_IDS)[keep]
        self.keep = keep
        super().__init__(*args, keep_classes=ids, **kwargs)

    def filter_data(self):
        data_list = super().filter_data()
        if self.test_mode or not (self.filter_cfg or {}).get('filter_empty_gt', False):
            return data_list
        return [info for info in data_list if info['instances']]


@METRICS.register_module()
class CocoOVMetric(CocoMetric):
    """mmdet's ``CocoMetric`` on the 65 classes of the split only.

    Predicted labels index the dataset's 80 classes; plain ``CocoMetric``
    would also score the 15 classes outside the split, whose instances are
    never prompted (nor predicted: the model sets them to -1000), and average
    their AP of 0 in. Here every label maps to its COCO category as usual, but
    COCOeval only looks at the split's categories.
    """

    def compute_metrics(self, results: list) -> dict:
        if self._coco_api is None:
            raise ValueError('CocoOVMetric needs ann_file: the COCO instances file to evaluate against')
        self._label_cat_ids = self._coco_api.get_cat_ids(cat_names=list(self.dataset_meta['classes']))
        self.cat_ids = self._coco_api.get_cat_ids(cat_names=list(COCO_OV_CLASSES))
        return super().compute_metrics(results)

    def results2json(self, results, outfile_prefix):
        split_ids, self.cat_ids = self.cat_ids, self._label_cat_ids  # labels -> category ids
        try:
            return super().results2json(results, outfile_prefix)
        finally:
            self.cat_ids = split_ids


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
