"""The contract between the exporter and the runtime: what the deployment
folder holds and what its two graphs take and return.

A folder written by :func:`ovsam.apis.onnx_export.export_deployment`
(``tools/deployment/export_onnx.py --out-dir DIR``):

==================  ==========================================================
file                content
==================  ==========================================================
manifest.json       input size, pixel mean / std, class names, class split,
                    opset, versions, the file names below
image_encoder.onnx  image side, once per image: frozen CLIP trunk, SAM2CLIP
                    adapter, FPN, with the normalisation and padding
prompt_decoder.onnx prompt side, per call, N prompts: prompt encoder, CLIP2SAM
                    decoder and recognition head, frozen-CLIP region scores,
                    open-vocabulary ensemble
vocabulary.npy      (K, P, D) float32 unit-norm text embeddings of the K
                    classes (P synonyms), rows in ``class_names`` order
==================  ==========================================================

Image encoder: ``image`` (h, w, 3) float32 RGB in 0..255, the image resized
so that its longest side is ``input_size`` (see :mod:`ovsam_onnx.image`) ->
:data:`FEATURE_NAMES`.

Prompt decoder: :data:`FEATURE_NAMES` + :data:`PROMPT_NAMES` +
:data:`VOCABULARY_NAMES` -> :data:`PROMPT_OUTPUTS`:

=================  ===================  =====================================
name               shape                meaning
=================  ===================  =====================================
point_coords       (N, P, 2) float32    x, y in input-frame pixels
point_labels       (N, P) float32       1 fg, 0 bg, -1 padding, 2 / 3 box corners
mask_input         (N, 1, 4E, 4E)       low-res logits of an earlier prediction
has_mask_input     (1,) float32         1 to use ``mask_input``, else 0
class_embed        (D, K + 1, P)        the classifier's text embeddings,
                                        background (zeros) last
class_seen         (K + 1,) bool        classes the head was trained on (+ bg)
class_allowed      (K,) bool            classes that may be predicted
mask_logits        (N, 1, 4E, 4E)       low-res mask logits (padded frame)
class_scores       (N, K + 1)           ensemble log-probabilities, bg last
boxes              (N, 4)               boxes recognition used (input frame)
=================  ===================  =====================================

This module needs numpy only; the exporter imports it too, so both sides
agree by construction.
"""
from typing import Optional, Tuple

import numpy as np

FORMAT = 'ovsam-onnx'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
IMAGE_ENCODER = 'image_encoder.onnx'
PROMPT_DECODER = 'prompt_decoder.onnx'
VOCABULARY = 'vocabulary.npy'

IMAGE_INPUTS = ['image']
FEATURE_NAMES = ['image_embed', 'fpn_0', 'fpn_1', 'fpn_2', 'fpn_3', 'clip_c5']
PROMPT_NAMES = ['point_coords', 'point_labels', 'mask_input', 'has_mask_input']
VOCABULARY_NAMES = ['class_embed', 'class_seen', 'class_allowed']
PROMPT_OUTPUTS = ['mask_logits', 'class_scores', 'boxes']


def encode_prompts(point_coords: Optional[np.ndarray] = None,
                   point_labels: Optional[np.ndarray] = None,
                   boxes: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Prompts in the input frame -> ``point_coords`` (N, P, 2), ``point_labels`` (N, P).

    Same token order as SAM's prompt encoder: click points, then the box
    corners (labels 2, 3), or one padding point (label -1) when there is no
    box, exactly as SAM pads point-only prompts.
    """
    parts_c, parts_l = [], []
    n = None
    if point_coords is not None:
        pc = np.asarray(point_coords, np.float32)
        n = pc.shape[0]
        pl = np.ones(pc.shape[:2], np.float32) if point_labels is None else np.asarray(point_labels, np.float32)
        parts_c.append(pc)
        parts_l.append(pl)
    if boxes is not None:
        b = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
        if n is not None and b.shape[0] != n:
            raise ValueError('boxes and points must describe the same number of prompts')
        n = b.shape[0]
        parts_c.append(b)
        parts_l.append(np.tile(np.array([[2, 3]], np.float32), (n, 1)))
    else:
        if n is None:
            raise ValueError('give points and/or boxes')
        parts_c.append(np.zeros((n, 1, 2), np.float32))
        parts_l.append(-np.ones((n, 1), np.float32))
    return np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)


def classifier_embed(embeddings: np.ndarray) -> np.ndarray:
    """(K, P, D) unit-norm text embeddings -> the classifier's (D, K + 1, P)
    layout with the all-zero background class last (``class_embed``)."""
    k, p, d = embeddings.shape
    full = np.concatenate([embeddings.astype(np.float32), np.zeros((1, p, d), np.float32)], axis=0)
    return np.ascontiguousarray(full.transpose(2, 0, 1))
