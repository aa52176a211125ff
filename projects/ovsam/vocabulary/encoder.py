"""Class names -> CLIP text embeddings: the recipe and the one cached encoder.

Recipe (as used for the released models): each class string is split into
synonyms (:func:`split_synonyms`); every synonym is embedded with the 14 ViLD
templates by CLIP's text tower, each template embedding L2-normalised, averaged
over templates and normalised again. Classes with fewer synonyms are padded by
repeating their first synonym, giving a (K, P, D) tensor.
"""
import hashlib
import json
import os
import os.path as osp
import threading
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .files import save_text_embeddings
from .names import check_class_names, split_synonyms

VILD_TEMPLATES = (
    'a photo of a {}.',
    'This is a photo of a {}',
    'There is a {} in the scene',
    'There is the {} in the scene',
    'a photo of a {} in the scene',
    'a photo of a small {}.',
    'a photo of a medium {}.',
    'a photo of a large {}.',
    'This is a photo of a small {}.',
    'This is a photo of a medium {}.',
    'This is a photo of a large {}.',
    'There is a small {} in the scene.',
    'There is a medium {} in the scene.',
    'There is a large {} in the scene.',
)

NO_TEXT_WEIGHTS = ('cannot embed new class names: no CLIP text weights. Pass clip_checkpoint=PATH '
                   '(the CLIP file the model was built from), or load precomputed embeddings '
                   '(a text-embedding file made by tools/gen_text_embeddings.py, e.g. '
                   'set_vocabulary_file(PATH)).')


def build_text_model(model_name: str = 'RN50x16',
                     model_cfg: Optional[Dict] = None,
                     checkpoint: Optional[str] = None):
    """Return ``(model, tokenizer)``: an open_clip CLIP without its image tower.

    ``checkpoint`` is an OpenAI TorchScript ``.pt``, an open_clip state dict or
    safetensors file, or a checkpoint saved by this project; None keeps random
    weights (tests only). Nothing is downloaded.
    """
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from ..checkpoint import CheckpointError, load_clip_state_dict, load_state_dict_strict
    from ..models.clip_backbone import clip_text_tower, resolve_clip_config
    cfg = resolve_clip_config(model_name, model_cfg)
    model = clip_text_tower(model_name, cfg)
    if checkpoint is not None:
        sd = load_clip_state_dict(checkpoint)
        sd = {k: v.float() for k, v in sd.items()
              if not k.startswith('visual.') and k not in ('input_resolution', 'context_length', 'vocab_size')}
        if not sd:
            raise CheckpointError(f'{checkpoint!r} has no text tower')
        load_state_dict_strict(model, sd, f'CLIP text tower {checkpoint!r}')
    model.eval()
    if model_cfg is None:
        tokenizer = open_clip.get_tokenizer(model_name)
    else:
        tokenizer = SimpleTokenizer(context_length=cfg['text_cfg'].get('context_length', 77))
    return model, tokenizer


def _device(model) -> Optional[torch.device]:
    params = model.parameters() if isinstance(model, torch.nn.Module) else ()
    first = next(iter(params), None)
    return None if first is None else first.device


def _context_length(tokenizer) -> Optional[int]:
    n = getattr(tokenizer, 'context_length', None)
    return n if isinstance(n, int) and n > 0 else None


def check_prompt_lengths(tokenizer, synonyms: Sequence[str], templates: Sequence[str] = VILD_TEMPLATES) -> None:
    """Refuse synonyms whose prompts exceed the text tower's context.

    open_clip's tokenizers cut longer prompts silently, so two long names
    that differ only after the cut would get identical embeddings. Checked
    where the tokenizer can count tokens (``encode`` and ``context_length``,
    as open_clip's ``SimpleTokenizer``); other tokenizers are trusted.
    """
    limit = _context_length(tokenizer)
    encode = getattr(tokenizer, 'encode', None)
    if limit is None or not callable(encode):
        return
    for s in synonyms:
        longest = max(templates, key=lambda t: len(t.format(s)))
        try:
            n = len(encode(longest.format(s))) + 2  # + start and end tokens
        except Exception:  # a tokenizer whose encode has another signature
            return
        if n > limit:
            raise ValueError(
                f'class name {s!r} is too long for the text tower: with the template {longest!r} it is {n} '
                f'tokens, the tower reads {limit} and would silently cut the rest (two long names could then '
                f'embed identically). Shorten it (every template must fit in {limit} tokens) or split it into '
                'synonyms separated by commas')


@torch.no_grad()
def embed_synonyms(text_model,
                   tokenizer,
                   synonyms: Sequence[str],
                   templates: Sequence[str] = VILD_TEMPLATES,
                   batch_size: int = 256,
                   progress: bool = False) -> Tensor:
    """(S, D) unit-norm embeddings of already split synonyms (template-averaged)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a whole number >= 1, got {batch_size!r}')
    if not templates:
        raise ValueError('no templates: give at least one prompt template such as "a photo of a {}."')
    bad = [t for t in templates if not isinstance(t, str) or t.count('{}') != 1]
    if bad:
        raise ValueError(f'template {bad[0]!r} must be a string with exactly one "{{}}" for the class name')
    check_prompt_lengths(tokenizer, synonyms, templates)
    prompts = [t.format(s) for s in synonyms for t in templates]
    device = _device(text_model)
    out = []
    it = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc='text embeddings', unit='batch')
    was_training = text_model.training
    text_model.eval()
    try:
        for i in it:
            tokens = tokenizer(prompts[i:i + batch_size])
            if isinstance(tokens, Tensor) and device is not None:
                tokens = tokens.to(device)
            out.append(F.normalize(text_model.encode_text(tokens).float(), dim=-1).cpu())
    finally:
        text_model.train(was_training)
    per_template = torch.cat(out).view(len(synonyms), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def pad_synonyms(rows: Sequence[Tensor]) -> Tensor:
    """Stack per-class (P_i, D) embeddings to (K, P, D), padding each class
    by repeating its first synonym (the recipe's rule)."""
    if len(rows) == 0:
        raise ValueError('empty vocabulary: nothing to stack')
    width = max(r.shape[0] for r in rows)
    out = []
    for r in rows:
        if r.shape[0] < width:
            r = torch.cat([r, r[:1].expand(width - r.shape[0], -1)], dim=0)
        out.append(r)
    return torch.stack(out)


@torch.no_grad()
def encode_class_names(text_model,
                       tokenizer,
                       class_names: Sequence[str],
                       templates: Sequence[str] = VILD_TEMPLATES,
                       batch_size: int = 256,
                       progress: bool = True) -> Tensor:
    """Embed class names with an open_clip model's ``encode_text`` (no cache).

    Returns:
        (K, P, D) unit-norm embeddings, P = most synonyms of any class.
    """
    if len(class_names) == 0:
        raise ValueError('empty vocabulary: give at least one class name')
    synonyms = [split_synonyms(n) for n in class_names]
    flat = sorted({s for syn in synonyms for s in syn})
    per_synonym = embed_synonyms(text_model, tokenizer, flat, templates, batch_size, progress)
    index = {s: i for i, s in enumerate(flat)}
    return pad_synonyms([per_synonym[[index[s] for s in syn]] for syn in synonyms])


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


class TextEncoder:
    """The one cached class-name encoder (CLIP text tower + the recipe above).

    Args:
        clip_model / clip_model_cfg: open_clip model name / custom config.
        clip_checkpoint: local CLIP weights for the text tower.
        allow_random: without weights, use a random tower seeded with
            ``random_seed`` (tests and the tiny demo model) instead of failing.
        cache_dir: optional folder; each encoded vocabulary is stored there as
            a text-embedding file (atomic writes) and looked up again.
        text_model: a ready ``(model, tokenizer)`` pair instead of building one.
        cache_size: most synonyms kept in the in-memory LRU cache (about
            3 KB each at width 768); 0 switches it off.

    The tower is built on first use. Every cache entry is keyed by the tower's
    identity (a hash of its weights, or of the checkpoint's path, size and
    mtime, plus config and templates), so a different tower never reuses them.
    """

    def __init__(self,
                 clip_model: str = 'RN50x16',
                 clip_model_cfg: Optional[Dict] = None,
                 clip_checkpoint: Optional[str] = None,
                 allow_random: bool = False,
                 random_seed: int = 0,
                 cache_dir: Optional[str] = None,
                 text_model: Optional[Tuple[Any, Any]] = None,
                 cache_size: int = 50_000,
                 templates: Sequence[str] = VILD_TEMPLATES,
                 batch_size: int = 256) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f'cache_size must be a whole number >= 0 (0 switches the cache off), got {cache_size!r}')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a whole number >= 1, got {batch_size!r}')
        if isinstance(templates, (str, bytes)):
            raise TypeError(f'templates must be a list of prompt templates, got the string {templates!r}'[:200]
                            + ' (use [template] for one)')
        if text_model is not None:
            ok = (isinstance(text_model, (tuple, list)) and len(text_model) == 2
                  and callable(getattr(text_model[0], 'encode_text', None)) and callable(text_model[1]))
            if not ok:
                raise TypeError('text_model must be a (model, tokenizer) pair: a CLIP model with encode_text() and '
                                f'a callable tokenizer (open_clip.create_model / get_tokenizer), got '
                                f'{type(text_model).__name__} {text_model!r}'[:300])
            text_model = tuple(text_model)
        if cache_dir is not None and osp.isfile(cache_dir):
            raise NotADirectoryError(f'cache_dir {cache_dir!r} is a file; give a folder for the cache')
        self.clip_model = clip_model
        self.clip_model_cfg = None if clip_model_cfg is None else _plain(clip_model_cfg)
        self.clip_checkpoint = clip_checkpoint
        self.allow_random = allow_random
        self.random_seed = random_seed
        self.cache_dir = cache_dir
        self.cache_size = int(cache_size)
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self._text_model = text_model
        self._identity: Optional[str] = None
        self._cache: 'OrderedDict[Tuple[str, str], Tensor]' = OrderedDict()  # (identity, synonym) -> (D,)
        self._lock = threading.RLock()
        self.hits = self.misses = 0

    # ------------------------------------------------------------ tower
    @property
    def text_model(self) -> Tuple[Any, Any]:
        """The ``(model, tokenizer)`` pair, built on first use."""
        with self._lock:
            if self._text_model is None:
                if self.clip_checkpoint is None and not self.allow_random:
                    raise RuntimeError(NO_TEXT_WEIGHTS)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.random_seed)
                    model, tok = build_text_model(self.clip_model, self.clip_model_cfg, self.clip_checkpoint)
                self._text_model = (model.eval(), tok)
            return self._text_model

    def identity(self) -> str:
        """A hash identifying the text tower and recipe; part of every cache key."""
        with self._lock:
            if self._identity is None:
                parts = [self.clip_model, json.dumps(self.clip_model_cfg, sort_keys=True, default=str)]
                if self._text_model is not None or self.clip_checkpoint is None:
                    model = self.text_model[0]
                    h = hashlib.sha256()
                    for k, v in sorted(model.state_dict().items()):
                        h.update(k.encode())
                        h.update(v.detach().float().cpu().numpy().tobytes())
                    parts.append('weights:' + h.hexdigest())
                else:
                    st = os.stat(self.clip_checkpoint)
                    parts.append(f'file:{osp.realpath(self.clip_checkpoint)}:{st.st_size}:{st.st_mtime_ns}')
                parts.append(json.dumps(list(self.templates)))
                self._identity = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
            return self._identity

    # ------------------------------------------------------------ caches
    def cache_info(self) -> Dict[str, int]:
        return dict(size=len(self._cache), max_size=self.cache_size, hits=self.hits, misses=self.misses)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _get(self, key) -> Optional[Tensor]:
        row = self._cache.get(key)
        if row is not None:
            self._cache.move_to_end(key)
        return row

    def _put(self, key, row: Tensor) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = row
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cache_path(self, names: Sequence[str]) -> Optional[str]:
        """Where ``names`` (in this order) are cached on disk, or None without ``cache_dir``."""
        if not self.cache_dir:
            return None
        # JSON keeps the names apart: no separator inside a name can make
        # two vocabularies hash alike ('a\nb' vs 'a', 'b')
        key = hashlib.sha256(json.dumps([self.identity(), list(names)]).encode()).hexdigest()[:32]
        return osp.join(self.cache_dir, f'vocab_{key}.pth')

    def _read_disk(self, path: str, names: List[str], synonyms: List[List[str]]) -> Optional[Dict[str, Tensor]]:
        """Per-synonym rows from a cache file; None (with a warning) when it is corrupt."""
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
            if not isinstance(data, dict):
                raise ValueError(f'holds a {type(data).__name__}, not a dict')
            emb, stored = data.get('embeddings'), data.get('class_names')
            if list(stored or []) != list(names):
                raise ValueError('its class names are not the ones its name was hashed from')
            if data.get('meta', {}).get('identity') != self.identity():
                raise ValueError('it was written for another text tower')
            width = max(len(s) for s in synonyms)
            if not isinstance(emb, Tensor) or emb.dim() != 3 or tuple(emb.shape[:2]) != (len(names), width):
                raise ValueError(f'embeddings of shape {getattr(emb, "shape", None)} do not fit {len(names)} '
                                 f'classes with up to {width} synonyms')
            if not torch.isfinite(emb).all():
                raise ValueError('embeddings contain NaN or Inf')
        except Exception as e:  # unreadable, truncated, tampered with, ...
            msg = str(e).split('\n')[0][:200]
            warnings.warn(f'text-embedding cache file {path!r} is corrupt ({type(e).__name__}: {msg}); this is a '
                          'damaged cache, not a wrong vocabulary: re-computing the embeddings and rewriting the '
                          'file', RuntimeWarning, stacklevel=3)
            return None
        rows = {}
        for i, syn in enumerate(synonyms):
            for j, s in enumerate(syn):
                rows.setdefault(s, emb[i, j].float())
        return rows

    # ------------------------------------------------------------ encode
    def encode(self, names: Sequence[str], progress: bool = False) -> Tensor:
        """(K, P, D) unit-norm text embeddings of ``names`` (one class per item,
        commas inside an item separate synonyms), from the caches where possible."""
        names = check_class_names(names)
        with self._lock:
            ident = self.identity()
            synonyms = [split_synonyms(n) for n in names]
            wanted = list(dict.fromkeys(s for syn in synonyms for s in syn))
            found: Dict[str, Tensor] = {}
            for s in wanted:
                row = self._get((ident, s))
                if row is not None:
                    found[s] = row
            self.hits += len(found)
            path = self.cache_path(names)
            on_disk = path is not None and osp.isfile(path)
            if len(found) < len(wanted) and on_disk:
                rows = self._read_disk(path, names, synonyms)
                if rows is None:
                    on_disk = False
                else:
                    for s in wanted:
                        if s not in found:
                            found[s] = rows[s]
                            self._put((ident, s), rows[s])
            missing = [s for s in wanted if s not in found]
            self.misses += len(missing)
            if missing:
                model, tok = self.text_model
                emb = embed_synonyms(model, tok, missing, self.templates, self.batch_size, progress)
                for s, row in zip(missing, emb):
                    found[s] = row
                    self._put((ident, s), row)
            out = pad_synonyms([torch.stack([found[s] for s in syn]) for syn in synonyms])
            if path is not None and not on_disk:
                save_text_embeddings(path, out, names, meta=dict(identity=ident, clip_model=self.clip_model,
                                                                 clip_checkpoint=self.clip_checkpoint))
            return out
