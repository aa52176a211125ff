"""High-level APIs: interactive prediction, segment-everything, annotating image
collections (:mod:`ovsam.apis.annotate`), visualisation and ONNX export of the prompt-side model.

``from ovsam.apis import OVSAMPredictor, OVSAMAutomaticMaskGenerator``. The ONNX
helpers live in :mod:`ovsam.apis.onnx_export` (imported on demand: they need
``onnx`` / ``onnxruntime`` only when used).
"""
from ..pretrained import predictor_from_pretrained
from ..vocabulary import builtin_class_names, match_class, resolve_vocabulary
from .annotate import annotate_images
from .automatic import OVSAMAutomaticMaskGenerator
from .inferencer import OVSAMInferencer
from .inputs import image_to_rgb
from .predictor import (ImageState, OVSAMPrediction, OVSAMPredictor, PromptError, VocabularyState,
                        default_tiny_config)
from .visualization import draw_predictions

__all__ = [
    'ImageState', 'OVSAMAutomaticMaskGenerator', 'OVSAMInferencer', 'OVSAMPrediction', 'OVSAMPredictor', 'PromptError',
    'VocabularyState', 'annotate_images', 'builtin_class_names', 'default_tiny_config', 'draw_predictions',
    'image_to_rgb', 'match_class', 'predictor_from_pretrained', 'resolve_vocabulary'
]
