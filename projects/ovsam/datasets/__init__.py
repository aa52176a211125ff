"""Datasets and data generators."""
from .sa1b import LoadTeacherFeature, PackDistillInputs, SA1BDataset
from .shapes import (SHAPE_BASE_CLASSES, SHAPE_CLASSES, SHAPE_NOVEL_CLASSES,
                     generate_shapes_dataset, mask_to_rle, render_scene)

__all__ = [
    'LoadTeacherFeature', 'PackDistillInputs', 'SA1BDataset',
    'SHAPE_CLASSES', 'SHAPE_BASE_CLASSES', 'SHAPE_NOVEL_CLASSES',
    'generate_shapes_dataset', 'render_scene', 'mask_to_rle'
]
