"""Datasets and data generators."""
from .ann_index import frequency_groups, labels_of_frequencies, load_annotation_index
from .proposals import LoadProposalPrompts, PackDetInputsWithProposals, ProposalFileError, read_detections
from .checked_coco import AnnotationError, CheckedCocoDataset, CheckImageSize
from .coco_ov import (COCO_BASE_48, COCO_NOVEL_17, COCO_OV_BASE_IDS, COCO_OV_CLASSES, COCO_OV_NOVEL_IDS,
                      CocoOVDataset, LVISV1NoRareDataset)
from .sa1b import LoadTeacherFeature, PackDistillInputs, SA1BDataset
from .cotrain_coco import CoTrainCocoDataset, CoTrainLVISDataset
from .image_level import ImageLevelDataset, LoadWholeImageBox
from .multi_source import OVSAMGroupMultiSourceSampler
from .shapes import (SHAPE_BASE_CLASSES, SHAPE_CLASSES, SHAPE_NOVEL_CLASSES,
                     generate_shapes_dataset, mask_to_rle, render_scene)

__all__ = [
    'AnnotationError', 'CheckImageSize', 'CheckedCocoDataset',
    'COCO_BASE_48', 'COCO_NOVEL_17', 'COCO_OV_BASE_IDS', 'COCO_OV_CLASSES', 'COCO_OV_NOVEL_IDS', 'CocoOVDataset',
    'LVISV1NoRareDataset',
    'LoadTeacherFeature', 'PackDistillInputs', 'SA1BDataset',
    'SHAPE_CLASSES', 'SHAPE_BASE_CLASSES', 'SHAPE_NOVEL_CLASSES',
    'generate_shapes_dataset', 'render_scene', 'mask_to_rle',
    'LoadProposalPrompts', 'PackDetInputsWithProposals', 'ProposalFileError', 'read_detections',
    'load_annotation_index', 'frequency_groups', 'labels_of_frequencies',
    'CoTrainCocoDataset', 'CoTrainLVISDataset', 'ImageLevelDataset', 'LoadWholeImageBox',
    'OVSAMGroupMultiSourceSampler'
]
