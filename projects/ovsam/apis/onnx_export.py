"""ONNX export of OV-SAM's prompt-side model.

The image side (CLIP, SAM2CLIP adapter, FPN) runs once per image; the exported
graph is everything that runs per prompt: SAM's prompt encoder, the CLIP2SAM
decoder, the recognition branch (RoI pooling on the FPN, projection,
classifier) and the frozen-CLIP ensemble on the C5 map, for a dynamic number of
prompts. Its inputs are the cached features and the prompts in the model's
*input* frame (resized + padded image):

=================  ===================  =====================================
name               shape                meaning
=================  ===================  =====================================
image_embed        (1, C, E, E)         SAM-style image embedding
fpn_0 .. fpn_3     (1, F, S/4, S/4) ..  FPN levels over the CLIP features
clip_c5            (1, C5, S/32, S/32)  last CLIP level (frozen-CLIP branch)
point_coords       (N, P, 2) float      x, y in input pixels
point_labels       (N, P) float         1 fg, 0 bg, -1 padding, 2 / 3 box corners
mask_input         (N, 1, 4E, 4E)       low-res logits of an earlier prediction
has_mask_input     (1,) float           1 to use ``mask_input``, else 0
=================  ===================  =====================================

Outputs: ``mask_logits`` (N, 1, 4E, 4E), ``class_scores`` (N, K + 1, the
ensemble's log-probabilities, background last; softmax over them gives the
class probabilities) and ``boxes`` (N, 4, the boxes recognition used).

Boxes are encoded like SAM's ONNX model: two corner points with labels 2 and 3
*after* any click points; prompts without a box end with one padding point
(label -1), exactly as SAM's prompt encoder pads point-only prompts.
:func:`onnx_prompt_inputs` builds these arrays from a predictor.

mmcv's RoIAlign is a custom op that plain onnxruntime lacks, so the graph uses
``torchvision.ops.roi_align`` (standard ``RoiAlign``, half-pixel aligned), which
is numerically the same as mmcv's ``RoIAlign(aligned=True, sampling_ratio=0)``
(checked in the tests), and computes every FPN level for every box, picking the
level of mmdet's ``SingleRoIExtractor`` by a mask (no data-dependent indexing).
The vocabulary (text embeddings) is baked in; its class names are stored in
the model's metadata (``class_names``, JSON).
"""
import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..models.common import masks_to_boxes

INPUT_NAMES = ['image_embed', 'fpn_0', 'fpn_1', 'fpn_2', 'fpn_3', 'clip_c5', 'point_coords', 'point_labels',
               'mask_input', 'has_mask_input']
OUTPUT_NAMES = ['mask_logits', 'class_scores', 'boxes']


def roi_align_tv(feat: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                 sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """``torchvision.ops.roi_align`` with mmcv ``RoIAlign``'s argument order."""
    from torchvision.ops import roi_align
    return roi_align(feat, rois, output_size, spatial_scale, sampling_ratio, aligned)


class PromptSideModel(nn.Module):
    """The per-prompt part of an :class:`ovsam.models.OVSAM`, ONNX-friendly.

    The maths is the model's own (:meth:`CLIP2SAMHead.decode_masks`,
    :meth:`CLIP2SAMHead.embed_roi_feats`, :meth:`OVSAM.recognition_boxes`,
    :meth:`OVSAM.fuse` with the model's :meth:`OVSAM.class_split`); only the
    operators that plain onnxruntime lacks are replaced: mmcv's RoIAlign by
    torchvision's, mmdet's level-mapped RoI extractor by a masked sum over
    levels, and the prompt encoder's padding by fixed-size inputs. Set the
    vocabulary and the class split on the model before exporting.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if model.use_clip_ensemble and model.backbone.roi_size <= 0:
            raise NotImplementedError('ONNX export supports CLIP towers with an attention pool (ResNet); '
                                      'mask-pooled (ConvNeXt) CLIP ensembles are not exported')
        if model.mask_decoder.num_classes <= 0:
            raise RuntimeError('the model has no vocabulary: set one before exporting')
        self.pe = model.pe
        self.head = model.mask_decoder
        self.backbone = model.backbone
        self._model = (model, )  # its methods, not a registered submodule
        self.use_clip_ensemble = bool(model.use_clip_ensemble)
        self.register_buffer('image_pe', model.pe.get_dense_pe().detach().clone(), persistent=False)
        roi = self.head.roi
        self.finest_scale = float(getattr(roi, 'finest_scale', 56))
        self.roi_layers = [(int(layer.output_size[0]), float(layer.spatial_scale), int(layer.sampling_ratio),
                            bool(layer.aligned)) for layer in roi.roi_layers]
        for layer in roi.roi_layers:
            if getattr(layer, 'pool_mode', 'avg') != 'avg':
                raise NotImplementedError('only average RoIAlign is exported')

    # -------------------------------------------------------------- prompts
    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """SAM's point and box-corner embedding for pre-padded prompts."""
        pe = self.pe
        coords = coords + 0.5
        size = pe.input_image_size
        coords = torch.stack([coords[..., 0] / size[1], coords[..., 1] / size[0]], dim=-1)
        emb = pe.pe_layer._pe_encoding(coords)
        lab = labels[..., None]
        emb = emb * (lab != -1).to(emb.dtype)
        emb = emb + pe.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i).to(emb.dtype)
        return emb

    def embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        pe = self.pe
        dense = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return dense * has_mask_input + (1 - has_mask_input) * no_mask

    # -------------------------------------------------------------- recognition
    def roi_extract(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """mmdet ``SingleRoIExtractor`` (level by box scale) without indexing."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvls = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(min=0, max=len(feats) - 1)
        out = None
        for i, (feat, (size, spatial_scale, ratio, aligned)) in enumerate(zip(feats, self.roi_layers)):
            r = roi_align_tv(feat, rois, size, spatial_scale, ratio, aligned)
            r = r * (lvls == i).to(r.dtype)[:, None, None, None]
            out = r if out is None else out + r
        return out

    def forward(self, image_embed: Tensor, fpn_0: Tensor, fpn_1: Tensor, fpn_2: Tensor, fpn_3: Tensor,
                clip_c5: Tensor, point_coords: Tensor, point_labels: Tensor, mask_input: Tensor,
                has_mask_input: Tensor):
        model, head = self._model[0], self.head
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        n = sparse.shape[0]
        mask_logits, label_out = head.decode_masks(image_embed.expand(n, -1, -1, -1), self.image_pe, sparse,
                                                   dense)
        scale = self.image_pe.shape[-1] * 16 / mask_logits.shape[-1]
        mask_boxes = masks_to_boxes(mask_logits[:, 0], scale)
        zeros = torch.zeros_like(mask_boxes[:, :1])
        roi_feats = self.roi_extract([fpn_0, fpn_1, fpn_2, fpn_3], torch.cat([zeros, mask_boxes], dim=1))
        head_logits = head.classifier(head.embed_roi_feats(roi_feats, label_out))
        # the prompt box: the corners labelled 2 and 3
        is_c1 = (point_labels == 2).to(point_coords.dtype)
        is_c2 = (point_labels == 3).to(point_coords.dtype)
        has_box = is_c1.amax(dim=1) > 0
        prompt_boxes = torch.cat([(point_coords * is_c1[..., None]).sum(dim=1),
                                  (point_coords * is_c2[..., None]).sum(dim=1)], dim=1)
        boxes = model.recognition_boxes(mask_boxes, prompt_boxes, has_box)
        if not self.use_clip_ensemble:
            return mask_logits, head_logits, boxes
        r = self.backbone.roi_size
        clip_feats = roi_align_tv(self.backbone.clip_feature(clip_c5), torch.cat([zeros, boxes], dim=1), r,
                                  1 / 32., 0, True)
        clip_logits = head.classifier(self.backbone.pool(clip_feats))
        return mask_logits, model.fuse(head_logits, clip_logits, mask_logits, clip_c5.shape[-2:]), boxes


# ------------------------------------------------------------------ inputs
def encode_prompts_for_onnx(point_coords: Optional[np.ndarray] = None,
                            point_labels: Optional[np.ndarray] = None,
                            boxes: Optional[np.ndarray] = None):
    """Prompts in the input frame -> ``point_coords`` (N, P, 2), ``point_labels`` (N, P).

    Same token order as SAM's prompt encoder: click points, then the box
    corners (labels 2, 3), or a padding point (label -1) when there is no box.
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


def onnx_prompt_inputs(predictor, point_coords=None, point_labels=None, box=None,
                       mask_input=None) -> Dict[str, np.ndarray]:
    """ONNX inputs for prompts in ORIGINAL pixels, from a predictor's cached image.

    Validates and transforms the prompts exactly as
    :meth:`OVSAMPredictor.predict` does.
    """
    coords, labels, boxes, masks = predictor.transform_prompts(point_coords, point_labels, box, mask_input)
    feats = predictor.image_state.feats
    pc, pl = encode_prompts_for_onnx(None if coords is None else coords.cpu().numpy(),
                                     None if labels is None else labels.cpu().numpy(),
                                     None if boxes is None else boxes.cpu().numpy())
    n = pc.shape[0]
    size = predictor.mask_input_size
    feeds = {
        'image_embed': feats.image_embed.cpu().numpy(),
        'clip_c5': feats.clip_feats[-1].cpu().numpy(),
        'point_coords': pc,
        'point_labels': pl,
        'mask_input': np.zeros((n, 1) + tuple(size), np.float32) if masks is None else masks.cpu().numpy(),
        'has_mask_input': np.array([0.0 if masks is None else 1.0], np.float32),
    }
    for i, f in enumerate(feats.fpn_feats):
        feeds[f'fpn_{i}'] = f.cpu().numpy()
    return feeds


def dummy_inputs(model: nn.Module, num_prompts: int = 2, num_points: int = 3) -> List[Tensor]:
    """Example inputs for tracing (random features of the right shapes)."""
    size = int(model.pe.input_image_size[0])
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
        clip_feats, image_embed, fpn_feats = model.extract_feat(x)  # ImageFeatures
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(num_prompts, num_points, 2, generator=g) * size
    labels = torch.ones(num_prompts, num_points)
    labels[:, -1] = -1
    mask_size = tuple(int(s) for s in model.pe.mask_input_size)
    return [image_embed, *fpn_feats, clip_feats[-1], coords.to(x.device), labels.to(x.device),
            torch.zeros(num_prompts, 1, *mask_size, device=x.device), torch.ones(1, device=x.device)]


def export_prompt_model(model: nn.Module, out_file: str, opset: int = 17,
                        class_names: Optional[Sequence[str]] = None) -> str:
    """Write the prompt-side ONNX graph of ``model`` to ``out_file``.

    The vocabulary and the class split of the ensemble are the model's
    (baked in): set them first (e.g. through an ``OVSAMPredictor``).

    Dynamic axes: number of prompts N and points per prompt P. Uses
    PyTorch's TorchScript-based exporter (no ``onnxscript`` needed).
    """
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f'opset must be an integer ONNX opset version (e.g. 17), got {type(opset).__name__} '
                        f'{opset!r}')
    if opset < 16:
        raise ValueError(f'opset={opset}: opset >= 16 is needed for the half-pixel (aligned) RoiAlign')
    from torch.onnx import _constants
    top = getattr(_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', None)
    if top is not None and opset > top:
        raise ValueError(f'opset={opset}: the TorchScript-based ONNX exporter of this PyTorch writes opsets 16..{top}; '
                         'use 17 (the default)')
    if not isinstance(model, nn.Module) or not hasattr(model, 'predict_prompts') or \
            getattr(getattr(model, 'mask_decoder', None), 'classifier', None) is None:
        raise TypeError(f'model must be an ovsam.models.OVSAM (e.g. OVSAMPredictor.model), got '
                        f'{type(model).__name__}')
    own = list(model.mask_decoder.classifier.class_names or [])
    k = int(model.mask_decoder.classifier.num_classes)
    if class_names is not None:
        from ..vocabulary import check_class_names
        try:
            class_names = check_class_names(class_names)
        except (TypeError, ValueError) as e:
            raise type(e)(f'class_names: {e}') from None
        if k > 0 and len(class_names) != k:
            raise ValueError(f'class_names has {len(class_names)} names but the model\'s vocabulary has {k} '
                             f'classes (its class scores have {k} columns): give one name per class, in order, '
                             'or leave class_names out to use the model\'s own')
    wrapper = PromptSideModel(model).eval()
    args = tuple(dummy_inputs(model))
    dyn = {
        'point_coords': {0: 'num_prompts', 1: 'num_points'},
        'point_labels': {0: 'num_prompts', 1: 'num_points'},
        'mask_input': {0: 'num_prompts'},
        'mask_logits': {0: 'num_prompts'},
        'class_scores': {0: 'num_prompts'},
        'boxes': {0: 'num_prompts'},
    }
    names = list(class_names) if class_names is not None else own
    bad = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        raise TypeError(f'class_names must be strings; (index, type) of the others: {bad[:5]}')
    import io
    import warnings

    import onnx

    from ..fileio import atomic_save_bytes
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(wrapper, args, buf, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False)
    # The graph is built in memory and written once, with its metadata: a
    # crash can never leave a file without its class names.
    m = onnx.load_from_string(buf.getvalue())
    for key, value in (('class_names', json.dumps(names)),
                       ('input_size', str(int(model.pe.input_image_size[0]))),
                       ('producer', 'ovsam.apis.onnx_export')):
        prop = m.metadata_props.add()
        prop.key, prop.value = key, value
    atomic_save_bytes(out_file, m.SerializeToString())
    return out_file
