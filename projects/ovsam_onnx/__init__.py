"""ovsam_onnx: OV-SAM without PyTorch — numpy, onnxruntime and PIL only.

Runs a model exported by ``tools/deployment/export_onnx.py --out-dir DIR``
(two ONNX graphs, the vocabulary and a manifest; :mod:`ovsam_onnx.layout`)
behind the interface of ``ovsam.apis.OVSAMPredictor``:
:class:`OVSAMOnnxPredictor` (``set_image``, ``predict`` with boxes, points
and mask inputs, labels). A separate top-level package because ``import
ovsam`` imports torch, mmcv and mmdet; this one imports none of them.
"""
from .layout import FORMAT, FORMAT_VERSION
from .predictor import OnnxImageState, OnnxPrediction, OVSAMOnnxPredictor, load_manifest
from .prompts import PromptError
from .vocabulary import Vocabulary

__all__ = ['FORMAT', 'FORMAT_VERSION', 'OVSAMOnnxPredictor', 'OnnxImageState', 'OnnxPrediction', 'PromptError',
           'Vocabulary', 'load_manifest']
