"""One-folder models: config, weights and vocabulary saved and loaded together.

``save_pretrained(model_or_predictor, folder)`` writes::

    folder/
      config.py           the model's mmengine config (data only: plain assignments of literals)
      model.safetensors   every persistent tensor of the model (safetensors, no pickle)
      vocabulary.safetensors  the classifier's vocabulary buffer (text embeddings) + the class names
      ovsam_model.json    the manifest, written last: format version, ovsam version, what each
                          file is with its size and SHA-256, the class split (seen / unseen classes)

and ``from_pretrained(folder)`` builds the model back, offline:

* **Nothing runs code.** ``config.py`` is read as data (an AST of assignments
  of literals and ``dict(...)``; :func:`read_config`), never executed; the
  weights and the vocabulary are safetensors.
* **Strict.** Missing, unexpected or mis-shaped tensors raise
  :class:`~ovsam.checkpoint.CheckpointError` listing them (the checks of
  :func:`ovsam.checkpoint.load_state_dict_strict`); every file is checked
  against the manifest's size and SHA-256 (the weights while they are read).
* **One copy of the weights.** The model is built with its parameters on the
  ``meta`` device (no memory, no random initialisation; buffers stay real), and
  each tensor is read straight from the file into the memory that becomes the
  parameter (``load_state_dict(assign=True)``): peak memory is the model plus
  nothing of the file's size (``safetensors.torch.load_file`` followed by
  ``load_state_dict`` would hold two copies).
* **Atomic.** Every file is written atomically (:mod:`ovsam.fileio`) and the
  manifest last, after the old one was removed: an interrupted save leaves a
  folder without manifest, which ``from_pretrained`` refuses as incomplete,
  never a mix of old and new files that loads.

Tied tensors (one storage under two names) are stored once; the manifest's
``aliases`` maps each dropped name to the stored one and loading ties them
again. Other partial overlaps are stored as separate copies.

Example::

    from ovsam.pretrained import save_pretrained, from_pretrained, predictor_from_pretrained
    save_pretrained(predictor, 'ovsam_coco_rn50x16/')        # or a model (config=... or model.cfg)
    model, vocabulary, cfg, manifest = from_pretrained('ovsam_coco_rn50x16/')
    predictor = predictor_from_pretrained('ovsam_coco_rn50x16/', clip_checkpoint='RN50x16.pt')
"""
import ast
import contextlib
import copy
import datetime
import hashlib
import json
import os
import os.path as osp
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .checkpoint import CheckpointError, check_finite, load_state_dict_strict

__all__ = ['CONFIG_FILE', 'FORMAT_VERSION', 'MANIFEST_FILE', 'PretrainedFolderError', 'PretrainedModel',
           'SavedVocabulary', 'VOCABULARY_FILE', 'WEIGHTS_FILE', 'as_config', 'from_pretrained', 'is_pretrained_folder',
           'load_weights', 'parameters_on_meta', 'predictor_from_pretrained', 'read_config', 'read_manifest',
           'save_pretrained', 'save_weights']

FORMAT = 'ovsam-pretrained'
FORMAT_VERSION = 1
MANIFEST_FILE = 'ovsam_model.json'
CONFIG_FILE = 'config.py'
WEIGHTS_FILE = 'model.safetensors'
VOCABULARY_FILE = 'vocabulary.safetensors'
_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCABULARY_FILE)
_WHAT = {
    CONFIG_FILE: 'the model config (mmengine .py, literals only; builds the model without downloading anything)',
    WEIGHTS_FILE: 'every persistent tensor of the model (safetensors; aliases: tied names stored once)',
    VOCABULARY_FILE: "the classifier's vocabulary buffer cls_embed exactly as the model held it (unit-norm CLIP "
                     'text embeddings in a TextClassifier layout: padded (D, K + 1, P) or flat (R + 1, D + 1)) '
                     'and the class names (metadata class_names, JSON)',
}
# config keys that point at files the model was first assembled from; the folder replaces them
_FILE_KEYS = ('checkpoints', 'init_cfg', 'pretrained', 'sam_checkpoint')


class PretrainedFolderError(CheckpointError):
    """A folder that is not a complete, valid model folder of a format this ovsam reads."""


@dataclass
class SavedVocabulary:
    """The vocabulary stored with a model: ``cls_embed`` is the classifier's buffer
    (:class:`~ovsam.models.TextClassifier`: padded (D, K + 1, P) or flat
    (R + 1, D + 1)), class ``i`` is ``class_names[i]``; ``base_classes`` /
    ``novel_classes``: the class split (seen classes lean on the trained head;
    None: no split)."""
    class_names: List[str]
    cls_embed: Tensor
    base_classes: Optional[List[int]] = None
    novel_classes: Optional[List[int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def embeddings(self) -> Tensor:
        """(K, P, D) unit-norm text embeddings, padded (a copy)."""
        from .models.classifier import TextClassifier
        return TextClassifier.buffer_embeddings(self.cls_embed)

    def table(self):
        """The embeddings as a :class:`~ovsam.vocabulary.SynonymTable` (no padding)."""
        from .models.classifier import TextClassifier
        return TextClassifier.buffer_table(self.cls_embed)


class PretrainedModel(NamedTuple):
    """What :func:`from_pretrained` returns (unpacks as a tuple)."""
    model: nn.Module  #: the OVSAM model in eval mode, vocabulary and split installed, ``model.cfg`` set
    vocabulary: Optional[SavedVocabulary]
    config: Any  #: the mmengine Config read from ``config.py``
    manifest: Dict[str, Any]


# ------------------------------------------------------------------ safetensors I/O
_ST_DTYPES = {
    'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
    'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
    'BOOL': torch.bool,
}
_MAX_HEADER = 100 << 20  # safetensors' own limit


def _storage_key(t: Tensor) -> Tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _dedup(sd: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """(tensors to store, aliases {dropped name: stored name}): identical views of
    one storage are stored once; other tensors sharing a storage become copies
    (safetensors stores no views)."""
    tensors: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    first: Dict[Tuple, str] = {}
    storages: Dict[Tuple, str] = {}
    for name, t in sd.items():
        t = t.detach()
        if t.numel() and t.device.type != 'meta':
            key = _storage_key(t)
            if key in first:
                aliases[name] = first[key]
                continue
            first[key] = name
            storage = (t.device.type, t.untyped_storage().data_ptr())
            if storage in storages:
                t = t.clone()  # a different view of a stored storage: its own copy
            storages[storage] = name
        tensors[name] = t.cpu().contiguous()
    return tensors, aliases


def save_weights(module_or_state_dict: Union[nn.Module, Mapping[str, Tensor]], path: str,
                 metadata: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Write a module's persistent tensors as one safetensors file, atomically.

    Tied tensors are stored once (``ovsam_aliases`` in the file's metadata).
    Returns ``dict(num_tensors, num_elements, aliases)``.
    """
    from safetensors.torch import save_file

    from .fileio import atomic_path
    sd = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor) or v.device.type == 'meta']
    if bad:
        raise ValueError(f'cannot save weights: {len(bad)} entries are not real tensors (meta tensors or other '
                         f'objects), e.g. {bad[:5]}')
    tensors, aliases = _dedup(sd)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(format='pt', ovsam_aliases=json.dumps(aliases, sort_keys=True))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return dict(num_tensors=len(sd), num_elements=int(sum(t.numel() for t in tensors.values())), aliases=aliases)


def _read_exact(f, view: memoryview, what: str) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise PretrainedFolderError(f'{what} ends early (truncated): copy or save the model folder again')
        got += n


def _parse_header(f, size: int, path: str) -> Tuple[bytes, List[Tuple[str, torch.dtype, List[int], int, int]],
                                                    Dict[str, str]]:
    """The raw header bytes, the tensors ``(name, dtype, shape, begin, end)`` in file
    order (checked: known dtypes, sizes that match the shapes, no gaps or
    overlaps, the file's size) and the metadata."""
    def bad(why: str) -> PretrainedFolderError:
        return PretrainedFolderError(f'{path!r} is not a valid safetensors file ({why}): truncated or corrupt; '
                                     'save the model folder again')
    if size < 8:
        raise bad(f'{size} bytes')
    head = f.read(8)
    n = int.from_bytes(head, 'little')
    if not 2 <= n <= min(size - 8, _MAX_HEADER):
        raise bad(f'header length {n} for a file of {size} bytes')
    raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise bad(f'header is not JSON: {e}') from None
    if not isinstance(header, dict):
        raise bad('header is not a JSON object')
    meta = header.pop('__metadata__', None) or {}
    entries = []
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info['dtype']]
            shape = [int(s) for s in info['shape']]
            begin, end = (int(v) for v in info['data_offsets'])
        except (KeyError, TypeError, ValueError):
            raise bad(f'tensor {name!r}: unreadable entry {str(info)[:100]}') from None
        numel = 1
        for s in shape:
            numel *= s
        if min(shape, default=0) < 0 or end - begin != numel * torch.empty((), dtype=dtype).element_size():
            raise bad(f'tensor {name!r}: {end - begin} bytes for shape {shape} of {info["dtype"]}')
        entries.append((name, dtype, shape, begin, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    pos = 0
    for name, _, _, begin, end in entries:
        if begin != pos:
            raise bad(f'tensor {name!r} starts at byte {begin}, expected {pos}')
        pos = end
    if 8 + n + pos != size:
        raise bad(f'the header describes {8 + n + pos} bytes, the file has {size}')
    return head + raw, entries, meta


def _read_safetensors(path: str) -> Tuple[Dict[str, Tensor], Dict[str, str], str]:
    """Every tensor of a safetensors file, each read straight into its own new
    tensor (no second copy of the file in memory), the metadata and the file's
    SHA-256 (computed while reading)."""
    if sys.byteorder != 'little':  # safetensors is little-endian
        from safetensors.torch import load_file
        from safetensors import safe_open
        with safe_open(path, 'pt') as st:
            meta = st.metadata() or {}
        return load_file(path), meta, _sha256(path)
    digest = hashlib.sha256()
    tensors: Dict[str, Tensor] = {}
    with open(path, 'rb') as f:
        raw, entries, meta = _parse_header(f, os.fstat(f.fileno()).st_size, path)
        digest.update(raw)
        for name, dtype, shape, begin, end in entries:
            t = torch.empty(shape, dtype=dtype)
            if end > begin:
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                _read_exact(f, view, f'{path!r} (tensor {name!r})')
                digest.update(view)
            tensors[name] = t
    return tensors, {str(k): str(v) for k, v in meta.items()}, digest.hexdigest()


def load_weights(module: nn.Module, path: str, expected_sha256: Optional[str] = None,
                 allow_nonfinite: bool = False, known_finite: bool = False) -> Dict[str, str]:
    """Strictly load a safetensors file written by :func:`save_weights` into ``module``.

    NaN / Inf weights are refused unless ``allow_nonfinite``; ``known_finite``
    skips that scan for a file whose ``expected_sha256`` matched and whose
    tensors were checked when it was written (:func:`save_pretrained`).

    Parameters still on the ``meta`` device (a model built by
    :func:`from_pretrained`) receive the file's tensors themselves
    (``assign=True``): the weights exist once in memory. Real parameters are
    copied into. Returns the file's metadata.
    """
    from .checkpoint import _check_path, sniff_format
    path = _check_path(path, 'weights file')
    if sniff_format(path) != 'safetensors':
        from .checkpoint import describe_unloadable
        raise PretrainedFolderError(f'weights file {path!r} is not a safetensors file: {describe_unloadable(path)}')
    sd, meta, digest = _read_safetensors(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise PretrainedFolderError(f'{path!r} does not match its manifest (SHA-256 {digest[:12]}... instead of '
                                    f'{expected_sha256[:12]}...): the file was changed or damaged after saving; '
                                    'save the model folder again')
    try:
        aliases = json.loads(meta.get('ovsam_aliases', '{}'))
    except ValueError:
        raise PretrainedFolderError(f'{path!r}: unreadable ovsam_aliases metadata') from None
    for name, stored in aliases.items():
        if stored not in sd:
            raise PretrainedFolderError(f'{path!r}: alias {name!r} points at {stored!r}, which is not in the file')
        sd[name] = sd[stored]
    on_meta = any(p.is_meta for p in module.parameters())
    with _quiet_meta_copy():
        skip_scan = allow_nonfinite or (known_finite and expected_sha256 is not None)
        load_state_dict_strict(module, sd, repr(path), allow_nonfinite=skip_scan)  # every other check; copies
    if on_meta:
        module.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise PretrainedFolderError(f'after loading {path!r}, {len(left)} tensors of {type(module).__name__} are '
                                    f'still unset (meta), e.g. {left[:5]}: a module computes them from its '
                                    'parameters at construction; load it with from_config instead')
    return meta


@contextlib.contextmanager
def _quiet_meta_copy() -> Iterator[None]:
    """torch warns that copying into a meta parameter is a no-op: here it is meant
    (the strict checks run first, the tensors are assigned after)."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*copying from a non-meta parameter.*')
        yield


_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the ``meta`` device (no memory,
    initialisers are no-ops); buffers stay real, so the non-persistent ones
    (normalisation constants, logit scales) keep their values.

    ``torch.nn.Module.register_parameter`` is replaced for the duration of the
    block only (as accelerate's ``init_empty_weights``): do not build other
    models in other threads meanwhile.
    """
    original = nn.Module.register_parameter

    def register_parameter(self, name, param):
        original(self, name, param)
        if param is not None and not param.is_meta:
            cls = type(param)
            extra = {k: v for k, v in param.__dict__.items() if k != 'requires_grad'}
            self._parameters[name] = cls(param.to('meta'), requires_grad=param.requires_grad, **extra) \
                if extra else cls(param.to('meta'), requires_grad=param.requires_grad)

    with _BUILD_LOCK:
        nn.Module.register_parameter = register_parameter
        try:
            yield
        finally:
            nn.Module.register_parameter = original


# ------------------------------------------------------------------ config as data
_LITERAL_NAMES = {'True': True, 'False': False, 'None': None}


def _literal(node: ast.AST, where: str) -> Any:
    """Evaluate a config value: constants, lists, tuples, sets, dicts, ``dict(k=v)``,
    unary +/-; anything else (names, other calls, attribute access) is code."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, where)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e, where) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items) if isinstance(node, ast.Tuple) else set(items)
    elif isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, where): _literal(v, where) for k, v in zip(node.keys, node.values)}
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict'
          and not node.args and all(k.arg is not None for k in node.keywords)):
        return {k.arg: _literal(k.value, where) for k in node.keywords}
    elif isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
        return _LITERAL_NAMES[node.id]
    raise PretrainedFolderError(f'{where}: line {getattr(node, "lineno", "?")} is code, not data '
                                f'({ast.unparse(node)[:80]!r}); a model folder\'s config holds literals only, so '
                                'that loading it runs nothing. If you trust the file, build the model with '
                                'mmengine.config.Config.fromfile and ovsam.pretrained.load_weights')


def read_config(path: str):
    """An mmengine ``Config`` from a config file of plain assignments of literals
    (what ``Config.pretty_text`` writes), without executing it."""
    from mmengine.config import Config
    with open(path, encoding='utf-8') as f:
        text = f.read()
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        raise PretrainedFolderError(f'{path!r} is not a valid Python config ({e}); save the model folder again') \
            from None
    values: Dict[str, Any] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise PretrainedFolderError(f'{path!r}: line {stmt.lineno} is not an assignment of a literal '
                                        f'({ast.unparse(stmt)[:80]!r}); a model folder\'s config holds data only')
        values[stmt.targets[0].id] = _literal(stmt.value, repr(path))
    return Config(values, filename=path)


def _config_text(cfg) -> Tuple[str, Any]:
    """``cfg`` as the text of a data-only ``.py`` file, and that text read back."""
    from mmengine.config import Config
    text = cfg.pretty_text
    back = Config.fromstring(text, file_format='.py')
    if back.to_dict() != cfg.to_dict():
        raise ValueError('the config does not survive mmengine\'s dump and reload (objects that are not plain '
                         'data?); give a config of literals')
    return text, back


# ------------------------------------------------------------------ saving
def _clean_model_cfg(model_cfg: Any) -> Any:
    """The model config without the files it was first assembled from (official
    checkpoints, ``init_cfg`` / ``sam_checkpoint``) and without its vocabulary
    file: the folder holds both."""
    def strip(node):
        if isinstance(node, Mapping):
            return type(node)({k: strip(v) for k, v in node.items() if k not in _FILE_KEYS})
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    out = strip(model_cfg)
    clf = out.get('mask_decoder', {}).get('classifier')
    if isinstance(clf, Mapping):
        for key in ('vocabulary', 'class_names', 'num_classes'):
            if key in clf:
                clf[key] = None
    return out


def as_config(config: Any):
    """An mmengine ``Config`` (a copy) from a config file, a shipped config name
    (``'ovsam_coco'``, :func:`ovsam.config_path.ovsam_config_path`), a ``Config``
    or a dict."""
    from mmengine.config import Config, ConfigDict
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            from .config_path import ovsam_config_path
            path = ovsam_config_path(path)  # a shipped config's name; raises with close matches
        return Config.fromfile(path)
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if isinstance(config, (dict, ConfigDict)):
        return Config(copy.deepcopy(dict(config)))
    raise TypeError(f'config must be a config file, a shipped config name, an mmengine Config or a dict, got '
                    f'{type(config).__name__}')


def _split_for(model: nn.Module, num_classes: int, attrs: Optional[Mapping[str, Any]] = None
               ) -> Dict[str, Optional[List[int]]]:
    """The model's class split for a vocabulary of ``num_classes`` (``attrs``: a
    predictor vocabulary's split attributes). A lazily read split (LVIS
    frequencies) is resolved on a shallow copy: the model is not changed."""
    probe = copy.copy(model)  # shares every tensor; plain attributes are its own
    for name, value in (attrs or {}).items():
        setattr(probe, name, list(value) if isinstance(value, tuple) else value)
    probe.class_split(num_classes)
    as_list = lambda v: None if v is None else [int(i) for i in v]  # noqa: E731
    return dict(base_classes=as_list(probe.base_classes), novel_classes=as_list(probe.novel_classes))


def _model_and_vocabulary(obj: Any) -> Tuple[nn.Module, Optional[SavedVocabulary]]:
    """The model and its vocabulary (a predictor's current one) with its split."""
    from .apis.predictor import OVSAMPredictor
    if isinstance(obj, OVSAMPredictor):
        model, vocab = obj.model, obj.vocabulary
        if vocab is None:
            return model, None
        names, buf = list(vocab.class_names), vocab.cls_embed
        split = _split_for(model, len(names), dict(vocab.split))
    elif isinstance(obj, nn.Module) and hasattr(obj, 'predict_prompts'):
        model = obj
        clf = model.mask_decoder.classifier
        if clf.num_classes <= 0:
            return model, None
        names = list(clf.class_names or [f'class{i}' for i in range(clf.num_classes)])
        buf = clf.cls_embed
        split = _split_for(model, len(names))
    else:
        raise TypeError(f'save_pretrained saves an ovsam.models.OVSAM or an OVSAMPredictor, got {type(obj).__name__}')
    buf = buf.detach().cpu().clone()
    return model, SavedVocabulary(names, buf, split['base_classes'], split['novel_classes'])


def _check_finite_fast(sd: Mapping[str, Tensor], source: str) -> None:
    """:func:`ovsam.checkpoint.check_finite`'s verdict at a tenth of its cost: a
    tensor whose sum is finite holds no NaN or Inf (a sum is one fast reduction,
    ``isfinite`` a boolean copy), so only the others are scanned."""
    import math
    suspects = {k: v for k, v in sd.items()
                if v.is_floating_point() and not v.is_meta and not math.isfinite(float(v.sum()))}
    if suspects:
        check_finite(suspects, source)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()


def _build(model_cfg) -> nn.Module:
    import ovsam  # noqa: F401  (registers modules)
    from mmdet.registry import MODELS
    with parameters_on_meta():
        return MODELS.build(model_cfg)


def save_pretrained(model_or_predictor: Any, save_dir: str, config: Any = None, overwrite: bool = False,
                    metadata: Optional[Dict[str, Any]] = None, allow_nonfinite: bool = False) -> str:
    """Write a model, its config and its vocabulary into one folder (see the module docstring).

    Args:
        model_or_predictor: an OVSAM model (its classifier's vocabulary and its
            class split are saved) or an :class:`~ovsam.apis.OVSAMPredictor`
            (its current vocabulary).
        save_dir: the folder (created; see ``overwrite``).
        config: the config the model was built from: a file, a shipped config
            name (``'ovsam_coco'``), a ``Config`` or a dict; default
            ``model.cfg`` (set by :func:`from_pretrained`, as by mmdet's
            ``init_detector``). Its official-checkpoint paths, ``init_cfg`` and
            vocabulary file are dropped: the folder holds the weights and the
            vocabulary. It is checked to build a model with exactly this
            model's tensors before anything is written.
        overwrite: replace an existing model folder (never a folder that holds
            other files of these names without a manifest, unless True).
        metadata: extra JSON-able information stored in the manifest.
        allow_nonfinite: save weights holding NaN or Inf (a diverged run)
            anyway; they are refused by default, here rather than at every load
            (the manifest records that the weights were checked, and the
            SHA-256 that they are still those weights).
    Returns:
        ``save_dir``.
    """
    from . import __version__
    from .fileio import atomic_save_json, atomic_save_text
    model, vocab = _model_and_vocabulary(model_or_predictor)
    if config is None:
        config = getattr(model, 'cfg', None)
        if config is None:
            raise ValueError('save_pretrained needs the config the model was built from: pass config= (a file, a '
                             "shipped config name such as 'ovsam_coco', or a Config)")
    cfg = as_config(config)
    if 'model' not in cfg:
        raise ValueError('config has no "model" entry: give the config the model was built from')
    cfg.model = _clean_model_cfg(cfg.model)
    text, cfg = _config_text(cfg)
    sd = model.state_dict()
    try:  # the config must describe exactly this model
        with _quiet_meta_copy():
            load_state_dict_strict(_build(cfg.model), sd, 'the model being saved', allow_nonfinite=True)
    except CheckpointError as e:
        raise ValueError(f'the config does not describe this model ({e}); pass the config it was built from') \
            from None
    finite = True
    try:
        _check_finite_fast(sd, 'the model being saved')
    except CheckpointError:
        if not allow_nonfinite:
            raise
        finite = False
    if metadata is not None:
        json.dumps(metadata)  # fails before anything is written

    save_dir = os.fspath(save_dir)
    if osp.exists(save_dir) and not osp.isdir(save_dir):
        raise NotADirectoryError(f'cannot save into {save_dir!r}: it is a file')
    old = None
    if osp.isdir(save_dir):
        ours = [n for n in (MANIFEST_FILE, ) + _FILES if osp.exists(osp.join(save_dir, n))]
        if ours and not overwrite:
            raise FileExistsError(f'{save_dir!r} already holds {ours}: pass overwrite=True (--overwrite) to replace '
                                  'it, or choose another folder')
        if osp.isfile(osp.join(save_dir, MANIFEST_FILE)):
            with contextlib.suppress(Exception):
                old = read_manifest(save_dir, check_files=False)
            os.remove(osp.join(save_dir, MANIFEST_FILE))  # the folder is incomplete until the new one is written
    os.makedirs(save_dir, exist_ok=True)

    files: Dict[str, Dict[str, Any]] = {}
    atomic_save_text(osp.join(save_dir, CONFIG_FILE), text)
    info = save_weights(sd, osp.join(save_dir, WEIGHTS_FILE), metadata=dict(ovsam_version=__version__))
    vocab_info = None
    if vocab is not None:
        save_weights(dict(cls_embed=vocab.cls_embed), osp.join(save_dir, VOCABULARY_FILE),
                     metadata=dict(class_names=json.dumps(vocab.class_names), kind='ovsam-classifier-vocabulary'))
        buf = vocab.cls_embed
        vocab_info = dict(num_classes=vocab.num_classes, layout='flat' if buf.dim() == 2 else 'padded',
                          buffer_shape=list(buf.shape), base_classes=vocab.base_classes,
                          novel_classes=vocab.novel_classes,
                          seen='base_classes lean on the trained head (alpha), the others on frozen CLIP (beta); '
                               'with novel_classes, classes in neither are never predicted; null: no split')
    for name in _FILES:
        path = osp.join(save_dir, name)
        if name == VOCABULARY_FILE and vocab is None:
            continue
        files[name] = dict(what=_WHAT[name], bytes=osp.getsize(path), sha256=_sha256(path))
    manifest = dict(format=FORMAT, format_version=FORMAT_VERSION, ovsam_version=__version__,
                    torch_version=torch.__version__,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                    model=dict(type=str(cfg.model.get('type')), num_tensors=info['num_tensors'],
                               num_elements=info['num_elements'], aliases=info['aliases'], finite=finite),
                    vocabulary=vocab_info, files=files, metadata=metadata or {})
    atomic_save_json(osp.join(save_dir, MANIFEST_FILE), manifest, indent=1)
    if old is not None:  # files of the previous save that this one does not have
        for name in set(old.get('files', {})) - set(files):
            if name in _FILES:
                with contextlib.suppress(OSError):
                    os.remove(osp.join(save_dir, name))
    return save_dir


# ------------------------------------------------------------------ loading
def is_pretrained_folder(path: Any) -> bool:
    """Whether ``path`` is a folder with a model manifest (not checked further)."""
    try:
        return osp.isfile(osp.join(os.fspath(path), MANIFEST_FILE))
    except TypeError:
        return False


def read_manifest(folder: str, check_files: bool = True) -> Dict[str, Any]:
    """The folder's manifest, checked: a model folder of a format this ovsam reads,
    with every listed file present and of the listed size."""
    from . import __version__
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f'a model folder is a path, got {type(folder).__name__}')
    folder = os.fspath(folder)
    if not osp.exists(folder):
        raise PretrainedFolderError(f'model folder {folder!r} does not exist (model folders are local; nothing is '
                                    'downloaded)')
    if not osp.isdir(folder):
        raise PretrainedFolderError(f'{folder!r} is a file, not a model folder: a checkpoint file loads with '
                                    'OVSAMPredictor.from_config(config, checkpoint)')
    path = osp.join(folder, MANIFEST_FILE)
    if not osp.isfile(path):
        inside = sorted(os.listdir(folder))
        if any(n in inside for n in _FILES):
            why = (f'it holds {[n for n in _FILES if n in inside]} but no {MANIFEST_FILE}: saving it was '
                   'interrupted (the manifest is written last); save it again')
        elif any(n.endswith(('.pth', '.pt', '.safetensors')) for n in inside):
            ckpts = [n for n in inside if n.endswith(('.pth', '.pt', '.safetensors'))]
            why = (f'it holds checkpoint files ({ckpts[:3]}) '
                   'but no manifest: load a checkpoint with OVSAMPredictor.from_config(config, checkpoint), or the '
                   'official files with tools/model_converters/official_to_pretrained.py')
        else:
            why = f'no {MANIFEST_FILE} inside (it holds {inside[:5]})'
        raise PretrainedFolderError(f'{folder!r} is not an ovsam model folder: {why}')
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except ValueError as e:
        raise PretrainedFolderError(f'{path!r} is not valid JSON ({e}): save the model folder again') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise PretrainedFolderError(f'{path!r} is not an ovsam model manifest (format '
                                    f'{manifest.get("format") if isinstance(manifest, dict) else None!r})')
    version = manifest.get('format_version')
    if not isinstance(version, int) or isinstance(version, bool):
        raise PretrainedFolderError(f'{path!r}: format_version {version!r} is not a number')
    if version > FORMAT_VERSION:
        raise PretrainedFolderError(
            f'{folder!r} was saved in model-folder format {version} (by ovsam '
            f'{manifest.get("ovsam_version", "?")}); this ovsam ({__version__}) reads format {FORMAT_VERSION} and '
            'older: upgrade ovsam')
    files = manifest.get('files')
    if not isinstance(files, dict) or CONFIG_FILE not in files or WEIGHTS_FILE not in files:
        raise PretrainedFolderError(f'{path!r} lists no {CONFIG_FILE} / {WEIGHTS_FILE}: save the model folder again')
    if check_files:
        for name, info in files.items():
            p = osp.join(folder, name)
            if not osp.isfile(p):
                raise PretrainedFolderError(f'{folder!r} is missing {name} ({info.get("what", "")}); copy the '
                                            'whole folder again')
            if osp.getsize(p) != info.get('bytes'):
                raise PretrainedFolderError(f'{p!r} has {osp.getsize(p)} bytes, its manifest says {info.get("bytes")}: '
                                            'truncated or replaced; copy the whole folder again')
    return manifest


def _checked(folder: str, name: str, manifest: Dict[str, Any]) -> str:
    path = osp.join(folder, name)
    want = manifest['files'][name].get('sha256')
    if want and _sha256(path) != want:
        raise PretrainedFolderError(f'{path!r} does not match its manifest (SHA-256): changed or damaged after '
                                    'saving; save the model folder again')
    return path


def _read_vocabulary(folder: str, manifest: Dict[str, Any]) -> SavedVocabulary:
    """The saved vocabulary buffer and names, checked against the manifest."""
    from .vocabulary import check_class_names
    info = manifest['vocabulary']
    if VOCABULARY_FILE not in manifest['files']:
        raise PretrainedFolderError(f'{folder!r}: the manifest describes a vocabulary but lists no {VOCABULARY_FILE}')
    path = osp.join(folder, VOCABULARY_FILE)
    sd, meta, digest = _read_safetensors(path)
    if digest != manifest['files'][VOCABULARY_FILE].get('sha256'):
        raise PretrainedFolderError(f'{path!r} does not match its manifest (SHA-256): changed or damaged after '
                                    'saving; save the model folder again')
    try:
        names = check_class_names(json.loads(meta['class_names']))
        buf = sd['cls_embed']
    except (KeyError, ValueError, TypeError) as e:
        raise PretrainedFolderError(f'{path!r} is not an ovsam vocabulary file ({type(e).__name__}: {e})') from None
    return SavedVocabulary(list(names), buf, info.get('base_classes'), info.get('novel_classes'))


def _install(clf: nn.Module, vocab: SavedVocabulary) -> None:
    """The saved buffer becomes the classifier's vocabulary, bit for bit (as the
    predictor swaps vocabularies: the buffer and the names, whole), after the
    classifier's own check of its layout, width, size and values."""
    why = type(clf).check_buffer(vocab.cls_embed, type(clf).buffer_dim(clf.cls_embed), vocab.num_classes)
    if why:
        raise PretrainedFolderError(f'the saved vocabulary does not fit this model: {why}; save the model folder '
                                    'again')
    clf.cls_embed = vocab.cls_embed.to(clf.logit_scale.device)
    clf.class_names = list(vocab.class_names)


def from_pretrained(folder: str, device: Union[str, torch.device] = 'cpu',
                    allow_nonfinite: bool = False) -> PretrainedModel:
    """Build the model saved in ``folder`` (see the module docstring).

    Returns a :class:`PretrainedModel` ``(model, vocabulary, config, manifest)``:
    the model in eval mode on ``device`` with its vocabulary and class split
    installed and ``model.cfg`` set (so ``save_pretrained(model, dir)`` needs no
    config). Raises :class:`PretrainedFolderError` (a ``CheckpointError``) for a
    missing, incomplete, damaged or newer-format folder, listing the problem.
    """
    folder = os.fspath(folder) if isinstance(folder, os.PathLike) else folder
    manifest = read_manifest(folder)
    cfg = read_config(_checked(folder, CONFIG_FILE, manifest))
    if 'model' not in cfg:
        raise PretrainedFolderError(f'{osp.join(folder, CONFIG_FILE)!r} has no "model" entry')
    vocab = _read_vocabulary(folder, manifest) if manifest.get('vocabulary') else None
    model = _build(cfg.model)
    want = manifest['files'][WEIGHTS_FILE].get('sha256')
    finite = (manifest.get('model') or {}).get('finite')
    if finite is False and not allow_nonfinite:
        raise PretrainedFolderError(f'{folder!r} was saved with NaN or Inf weights (allow_nonfinite=True): a '
                                    'diverged run; load it anyway with allow_nonfinite=True')
    load_weights(model, osp.join(folder, WEIGHTS_FILE), expected_sha256=want, allow_nonfinite=allow_nonfinite,
                 known_finite=finite is True)
    for m in model.modules():  # loaded: mmengine's init_weights must leave them alone
        if hasattr(m, '_is_init'):
            m._is_init = True
    if vocab is not None:
        _install(model.mask_decoder.classifier, vocab)
        model.set_class_split(vocab.base_classes, vocab.novel_classes)
    model.cfg = cfg
    return PretrainedModel(model.to(device).eval(), vocab, cfg, manifest)


def predictor_from_pretrained(folder: str, device: Union[str, torch.device] = 'cpu', predictor_cls: Any = None,
                              **kwargs):
    """An :class:`~ovsam.apis.OVSAMPredictor` of the model saved in ``folder``, with
    its saved vocabulary. ``kwargs`` go to the predictor (``clip_checkpoint=``
    to embed new class names with the real text tower, ``fast=``, ...);
    ``predictor_cls``: a predictor subclass to build (for a classmethod)."""
    from .apis.predictor import OVSAMPredictor
    loaded = from_pretrained(folder, device=device)
    bb = loaded.config.model.backbone
    kwargs.setdefault('clip_model', bb.get('model_name', 'RN50x16'))
    kwargs.setdefault('clip_model_cfg', bb.get('model_cfg'))
    return (predictor_cls or OVSAMPredictor)(loaded.model, device=device, **kwargs)
