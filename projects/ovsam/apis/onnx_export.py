"""ONNX export of OV-SAM: the prompt side alone, or the whole model as two graphs.

:func:`export_deployment` writes a folder that :mod:`ovsam_onnx` (numpy,
onnxruntime and PIL only) runs: the image side (:class:`ImageSideModel`: the
normalisation and padding, frozen CLIP, SAM2CLIP adapter, FPN) and the prompt
side with the vocabulary as an input (``PromptSideModel(model,
vocabulary_inputs=True)``), the text embeddings and a manifest; the layout is
:mod:`ovsam_onnx.layout`. :func:`export_prompt_model` writes the prompt side
alone with the vocabulary baked in (image features from PyTorch).

The image side (CLIP, SAM2CLIP adapter, FPN) runs once per image; the prompt
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
In :func:`export_prompt_model` the vocabulary (text embeddings) is baked in;
its class names are stored in the model's metadata (``class_names``, JSON).
With ``vocabulary_inputs=True`` the classifier's embeddings (``class_embed``)
and the ensemble's class split (``class_seen``, ``class_allowed``) are inputs
instead, so one graph serves any vocabulary of the same CLIP model.
"""
import contextlib
import copy
import io
import json
import os.path as osp
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from ovsam_onnx import layout
from torch import Tensor

from ..models.common import masks_to_boxes

INPUT_NAMES = layout.FEATURE_NAMES + layout.PROMPT_NAMES  # the baked-vocabulary graph's inputs
OUTPUT_NAMES = layout.PROMPT_OUTPUTS


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
    levels, and the prompt encoder's padding by fixed-size inputs.

    ``vocabulary_inputs=False``: the model's vocabulary and class split are
    baked in (set them on the model before exporting). ``True``: ``forward``
    also takes ``class_embed`` (D, K + 1, P), ``class_seen`` (K + 1,) bool and
    ``class_allowed`` (K,) bool, which stand in for the classifier's buffer and
    :meth:`OVSAM.class_split` for the duration of the call (so the classifier
    and :meth:`OVSAM.fuse` still do the maths); not thread-safe with other
    users of the same model.
    """

    def __init__(self, model: nn.Module, vocabulary_inputs: bool = False) -> None:
        super().__init__()
        self.vocabulary_inputs = bool(vocabulary_inputs)
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
                has_mask_input: Tensor, class_embed: Optional[Tensor] = None, class_seen: Optional[Tensor] = None,
                class_allowed: Optional[Tensor] = None):
        args = (image_embed, fpn_0, fpn_1, fpn_2, fpn_3, clip_c5, point_coords, point_labels, mask_input,
                has_mask_input)
        if not self.vocabulary_inputs:
            return self._forward(*args)
        if class_embed is None or class_seen is None or class_allowed is None:
            raise ValueError('this wrapper takes the vocabulary as inputs: give class_embed, class_seen and '
                             'class_allowed (or build it with vocabulary_inputs=False)')
        with vocabulary_from_inputs(self._model[0], class_embed, class_seen, class_allowed):
            return self._forward(*args)

    def _forward(self, image_embed: Tensor, fpn_0: Tensor, fpn_1: Tensor, fpn_2: Tensor, fpn_3: Tensor,
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


@contextlib.contextmanager
def vocabulary_from_inputs(model: nn.Module, class_embed: Tensor, class_seen: Tensor, class_allowed: Tensor):
    """For the duration of the block, ``model``'s classifier scores against
    ``class_embed`` (D, K + 1, P) and :meth:`OVSAM.class_split` answers
    (``class_seen`` (K + 1,), ``class_allowed`` (K,)): traced, they become graph
    inputs while the model's own classifier and ensemble do the maths."""
    clf = model.mask_decoder.classifier
    saved = clf.cls_embed
    clf.cls_embed = class_embed
    model.class_split = lambda num_classes, device=None: (class_seen, class_allowed)
    try:
        yield
    finally:
        clf.cls_embed = saved
        del model.class_split  # the instance attribute; the class's method is back


def vocabulary_tensors(model: nn.Module) -> List[Tensor]:
    """The model's own vocabulary as ``class_embed``, ``class_seen``, ``class_allowed``."""
    k = int(model.mask_decoder.num_classes)
    device = model.mask_decoder.classifier.cls_embed.device
    seen, allowed = model.class_split(k, device)
    if allowed is None:
        allowed = torch.ones(k, dtype=torch.bool, device=device)
    return [model.mask_decoder.classifier.cls_embed.detach().clone(), seen.clone(), allowed.clone()]


# ------------------------------------------------------------------ image side
class ImageSideModel(nn.Module):
    """The per-image part of an :class:`ovsam.models.OVSAM`, with its preprocessing.

    Input ``image`` (h, w, 3) float32 RGB in 0..255, resized so that its
    longest side is the input size S (``h, w <= S``; :mod:`ovsam_onnx.image`
    resizes as the PyTorch predictor does). The graph does what the model's
    data preprocessor and the predictor do next (channel order, mean / std,
    padding to S x S with the pad value), then :meth:`OVSAM.extract_feat`.
    Outputs: ``image_embed``, ``fpn_0..3`` and the last CLIP level ``clip_c5``
    (:data:`ovsam_onnx.layout.FEATURE_NAMES`), the prompt graph's inputs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        dp = model.data_preprocessor
        self.size = int(model.pe.input_image_size[0])
        # the predictor hands BGR to the preprocessor, which converts when told to
        self.to_bgr = not bool(getattr(dp, '_channel_conversion', False))
        self.normalize = bool(getattr(dp, '_enable_normalize', False))
        self.pad_value = float(getattr(dp, 'pad_value', 0))
        if self.normalize:
            self.register_buffer('mean', dp.mean.detach().clone().reshape(1, 3, 1, 1), persistent=False)
            self.register_buffer('std', dp.std.detach().clone().reshape(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor):
        x = image.permute(2, 0, 1)[None]
        if self.to_bgr:
            x = x.flip(1)
        if self.normalize:
            x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.size - w, 0, self.size - h), value=self.pad_value)
        feats = self.model.extract_feat(x)
        return (feats.image_embed, *feats.fpn_feats, feats.clip_feats[-1])


# ------------------------------------------------------------------ inputs
#: the prompt encoding of the ONNX graphs (one owner: :mod:`ovsam_onnx.layout`)
encode_prompts_for_onnx = layout.encode_prompts


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


def _check_opset(opset: Any) -> int:
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
    return opset


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, 'predict_prompts') or \
            getattr(getattr(model, 'mask_decoder', None), 'classifier', None) is None:
        raise TypeError(f'model must be an ovsam.models.OVSAM (e.g. OVSAMPredictor.model), got '
                        f'{type(model).__name__}')


def _class_names(model: nn.Module, class_names: Optional[Sequence[str]]) -> List[str]:
    """``class_names`` checked against the model's vocabulary (default: the model's own)."""
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
    names = list(class_names) if class_names is not None else own
    bad = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        raise TypeError(f'class_names must be strings; (index, type) of the others: {bad[:5]}')
    return names


def _to_onnx(wrapper: nn.Module, args: tuple, input_names: List[str], output_names: List[str],
             dynamic_axes: Dict[str, Dict[int, str]], opset: int, metadata: Dict[str, str]) -> bytes:
    """The traced graph with its metadata, serialised (built in memory and
    written once by the caller: a crash never leaves a file without them)."""
    import onnx
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(wrapper, args, buf, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        prop = m.metadata_props.add()
        prop.key, prop.value = key, value
    return m.SerializeToString()


_PROMPT_AXES = {
    'point_coords': {0: 'num_prompts', 1: 'num_points'},
    'point_labels': {0: 'num_prompts', 1: 'num_points'},
    'mask_input': {0: 'num_prompts'},
    'mask_logits': {0: 'num_prompts'},
    'class_scores': {0: 'num_prompts'},
    'boxes': {0: 'num_prompts'},
}
_VOCABULARY_AXES = {
    'class_embed': {1: 'num_classes_bg', 2: 'num_synonyms'},
    'class_seen': {0: 'num_classes_bg'},
    'class_allowed': {0: 'num_classes'},
    'class_scores': {0: 'num_prompts', 1: 'num_classes_bg'},
}


def prompt_model_bytes(model: nn.Module, opset: int = 17, class_names: Optional[Sequence[str]] = None,
                       vocabulary_inputs: bool = False) -> bytes:
    """The prompt-side graph (see :func:`export_prompt_model`), serialised."""
    opset = _check_opset(opset)
    _check_model(model)
    names = _class_names(model, class_names)
    wrapper = PromptSideModel(model, vocabulary_inputs=vocabulary_inputs).eval()
    args = list(dummy_inputs(model))
    inputs = list(INPUT_NAMES)
    dyn = dict(_PROMPT_AXES)
    if vocabulary_inputs:
        args += vocabulary_tensors(model)
        inputs += layout.VOCABULARY_NAMES
        dyn.update(_VOCABULARY_AXES)
    meta = {'input_size': str(int(model.pe.input_image_size[0])), 'producer': 'ovsam.apis.onnx_export'}
    if not vocabulary_inputs:
        meta = {'class_names': json.dumps(names), **meta}
    return _to_onnx(wrapper, tuple(args), inputs, OUTPUT_NAMES, dyn, opset, meta)


def export_prompt_model(model: nn.Module, out_file: str, opset: int = 17,
                        class_names: Optional[Sequence[str]] = None, vocabulary_inputs: bool = False) -> str:
    """Write the prompt-side ONNX graph of ``model`` to ``out_file``.

    ``vocabulary_inputs=False`` (default): the vocabulary and the class split
    of the ensemble are the model's (baked in; set them first, e.g. through an
    ``OVSAMPredictor``), the class names are in the metadata. ``True``: they
    are inputs (:class:`PromptSideModel`), as in :func:`export_deployment`.

    Dynamic axes: number of prompts N and points per prompt P (and classes K
    and synonyms with ``vocabulary_inputs``). Uses PyTorch's TorchScript-based
    exporter (no ``onnxscript`` needed).
    """
    from ..fileio import atomic_save_bytes
    data = prompt_model_bytes(model, opset, class_names, vocabulary_inputs)
    atomic_save_bytes(out_file, data)
    return out_file


def image_model_bytes(model: nn.Module, opset: int = 17) -> bytes:
    """The image-side graph (:class:`ImageSideModel`), serialised.

    Traced on a copy of ``model`` with the CPU fast paths swapped out (plain
    modules, standard operators); ``model`` itself is not changed. The input
    ``image`` is dynamic in height and width (each at most the input size).
    """
    opset = _check_opset(opset)
    _check_model(model)
    from ..models.fast_inference import fast_modules, optimize_for_inference
    plain = model
    if fast_modules(model):
        plain = copy.deepcopy(model)
        optimize_for_inference(plain, enabled=False)
    wrapper = ImageSideModel(plain).eval()
    size = wrapper.size
    device = next(model.parameters()).device
    image = torch.rand(size, max(1, size * 3 // 4), 3, generator=torch.Generator().manual_seed(0)).to(device) * 255
    dyn = {'image': {0: 'height', 1: 'width'}}
    meta = {'input_size': str(size), 'producer': 'ovsam.apis.onnx_export'}
    return _to_onnx(wrapper, (image, ), layout.IMAGE_INPUTS, layout.FEATURE_NAMES, dyn, opset, meta)


def export_image_model(model: nn.Module, out_file: str, opset: int = 17) -> str:
    """Write the image-side ONNX graph of ``model`` (:func:`image_model_bytes`) to ``out_file``."""
    from ..fileio import atomic_save_bytes
    atomic_save_bytes(out_file, image_model_bytes(model, opset))
    return out_file


def _versions() -> Dict[str, str]:
    import onnx

    from ..version import __version__
    out = {'ovsam': __version__, 'torch': torch.__version__, 'onnx': onnx.__version__}
    try:
        import onnxruntime
        out['onnxruntime'] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - the export itself needs only onnx
        pass
    return out


def export_deployment(model: nn.Module, out_dir: str, opset: int = 17,
                      class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write the whole model as a folder that :mod:`ovsam_onnx` runs without torch.

    Files (:mod:`ovsam_onnx.layout`): ``image_encoder.onnx`` (:class:`ImageSideModel`,
    traced from the plain modules), ``prompt_decoder.onnx`` (:class:`PromptSideModel`
    with the vocabulary as inputs, traced from the CPU fast paths), ``vocabulary.npy`` (the model's (K, P, D) unit-norm text
    embeddings) and ``manifest.json`` (input size, pixel mean / std, class
    names and the ensemble's class split, opset, versions), written last:
    a folder with a manifest is complete. Each file is written atomically.

    Returns:
        the manifest (a dict).
    """
    from ..fileio import atomic_save_bytes, atomic_save_json
    opset = _check_opset(opset)
    _check_model(model)
    clf = model.mask_decoder.classifier
    k = int(clf.num_classes)
    if k <= 0:
        raise RuntimeError('the model has no vocabulary: set one before exporting (e.g. OVSAMPredictor.set_vocabulary '
                           'or --vocabulary)')
    if clf.flat:
        raise ValueError(f'the model holds its {k}-class vocabulary in the flat (one row per synonym) layout, which '
                         'the ONNX graphs do not take; export it with a padded vocabulary (TextClassifier '
                         "layout='padded', or set_vocabulary with a (K, P, D) tensor), or a smaller vocabulary")
    names = _class_names(model, class_names)
    seen, allowed = model.class_split(k)
    dp = model.data_preprocessor
    image_bytes = image_model_bytes(model, opset)
    # The prompt side from the CPU fast paths (same outputs, fewer operations:
    # e.g. CLIP's attention pool for its kept token only); a copy if the model
    # runs the plain modules, so the caller's model is never changed.
    from ..models.fast_inference import fast_modules, optimize_for_inference
    prompt_side = model
    if not fast_modules(model):
        prompt_side = copy.deepcopy(model)
        optimize_for_inference(prompt_side)
    prompt_bytes = prompt_model_bytes(prompt_side, opset, names, vocabulary_inputs=True)
    del prompt_side
    emb = clf.cls_embed.detach().permute(1, 2, 0)[:-1].float().cpu().numpy()  # (K, P, D)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
    atomic_save_bytes(osp.join(out_dir, layout.IMAGE_ENCODER), image_bytes)
    atomic_save_bytes(osp.join(out_dir, layout.PROMPT_DECODER), prompt_bytes)
    atomic_save_bytes(osp.join(out_dir, layout.VOCABULARY), buf.getvalue())
    rgb = bool(getattr(dp, '_channel_conversion', False))
    mean = dp.mean.flatten().tolist() if getattr(dp, '_enable_normalize', False) else [0.0, 0.0, 0.0]
    std = dp.std.flatten().tolist() if getattr(dp, '_enable_normalize', False) else [1.0, 1.0, 1.0]
    manifest = {
        'format': layout.FORMAT,
        'format_version': layout.FORMAT_VERSION,
        'image_encoder': layout.IMAGE_ENCODER,
        'prompt_decoder': layout.PROMPT_DECODER,
        'vocabulary': layout.VOCABULARY,
        'input_size': int(model.pe.input_image_size[0]),
        'mask_input_size': [int(s) for s in model.pe.mask_input_size],
        'preprocessing': {
            'resize': 'longest side to input_size, bilinear (OpenCV INTER_LINEAR), then pad bottom/right',
            'pixel_mean': mean if rgb else mean[::-1], 'pixel_std': std if rgb else std[::-1],
            'channel_order': 'RGB', 'pad_value': float(getattr(dp, 'pad_value', 0)),
            'in_graph': 'normalisation and padding are done by image_encoder.onnx'},
        'class_names': names,
        'embed_dim': int(emb.shape[-1]),
        'seen_classes': [i for i in range(k) if bool(seen[i])],
        'allowed_classes': None if allowed is None else [i for i in range(k) if bool(allowed[i])],
        'use_clip_ensemble': bool(model.use_clip_ensemble),
        'alpha': float(model.alpha),
        'beta': float(model.beta),
        'opset': opset,
        'versions': _versions(),
        'inputs': {'image_encoder': layout.IMAGE_INPUTS,
                   'prompt_decoder': layout.FEATURE_NAMES + layout.PROMPT_NAMES + layout.VOCABULARY_NAMES},
        'outputs': {'image_encoder': layout.FEATURE_NAMES, 'prompt_decoder': layout.PROMPT_OUTPUTS},
    }
    atomic_save_json(osp.join(out_dir, layout.MANIFEST), manifest, indent=1)
    return manifest
