"""Vocabularies: class names -> CLIP text embeddings, saved to an explicit file.

Recipe (as used for the released models): each class string is split into
synonyms on ``','`` (``'_or_'`` and ``'/'`` count as commas, ``'_'`` as a
space; lower-cased and stripped); every synonym is embedded with the 14 ViLD
templates by CLIP's text tower, each template embedding L2-normalised, averaged
over templates and normalised again. Classes with fewer synonyms are padded by
repeating their first synonym, giving a (K, P, D) tensor.

Files are written by ``tools/gen_text_embeddings.py`` and hold only tensors and
strings, so they load with ``torch.load(weights_only=True)``.
"""
import hashlib
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

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

MAKE_COMMAND = ('python tools/gen_text_embeddings.py --clip-model NAME --clip-checkpoint CKPT '
                '--classes DATASET_OR_FILE_OR_NAMES --out PATH')


def split_synonyms(class_name: str) -> List[str]:
    """``'tv_or_monitor/screen'`` -> ``['tv', 'monitor', 'screen']``."""
    text = class_name.replace('_or_', ',').replace('/', ',').replace('_', ' ')
    names = [s.strip().lower() for s in text.split(',')]
    names = [s for s in names if s]
    if not names:
        raise ValueError(f'class name {class_name!r} has no usable synonym')
    return names


def vocabulary_hash(class_names: Sequence[str]) -> str:
    return hashlib.sha256('\n'.join(class_names).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_class_names(text_model,
                       tokenizer,
                       class_names: Sequence[str],
                       templates: Sequence[str] = VILD_TEMPLATES,
                       batch_size: int = 256,
                       progress: bool = True) -> Tensor:
    """Embed class names with an open_clip model's ``encode_text``.

    Returns:
        (K, P, D) unit-norm embeddings, P = most synonyms of any class.
    """
    if len(class_names) == 0:
        raise ValueError('empty vocabulary: give at least one class name')
    synonyms = [split_synonyms(n) for n in class_names]
    flat = sorted({s for syn in synonyms for s in syn})
    prompts = [t.format(s) for s in flat for t in templates]
    out = []
    it = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc='text embeddings', unit='batch')
    was_training = text_model.training
    text_model.eval()
    for i in it:
        tokens = tokenizer(prompts[i:i + batch_size])
        out.append(F.normalize(text_model.encode_text(tokens).float(), dim=-1))
    text_model.train(was_training)
    per_template = torch.cat(out).view(len(flat), len(templates), -1)
    per_synonym = F.normalize(per_template.mean(dim=1), dim=-1)
    index = {s: i for i, s in enumerate(flat)}
    width = max(len(s) for s in synonyms)
    rows = []
    for syn in synonyms:
        ids = [index[s] for s in syn] + [index[syn[0]]] * (width - len(syn))
        rows.append(per_synonym[ids])
    return torch.stack(rows)


def save_text_embeddings(path: str, embeddings: Tensor, class_names: Sequence[str],
                         meta: Optional[Dict] = None) -> None:
    """Atomically write a vocabulary file."""
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    payload = dict(embeddings=embeddings.float().cpu().contiguous(),
                   class_names=list(class_names),
                   meta={k: str(v) for k, v in (meta or {}).items()})
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_text_embeddings(path: str,
                         class_names: Optional[Sequence[str]] = None,
                         num_classes: Optional[int] = None) -> Tuple[Tensor, List[str]]:
    """Read a vocabulary file and check it against what the config expects."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Text-embedding file {path!r} does not exist. Make it with:\n  {MAKE_COMMAND}')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # corrupt file, pickle payload, ...
        raise ValueError(f'{path!r} is not a valid text-embedding file ({e}). '
                         f'Re-create it with:\n  {MAKE_COMMAND}') from e
    if not isinstance(data, dict) or 'embeddings' not in data or 'class_names' not in data:
        raise ValueError(f'{path!r} is not a text-embedding file (expected keys embeddings, '
                         f'class_names). Re-create it with:\n  {MAKE_COMMAND}')
    emb, names = data['embeddings'], list(data['class_names'])
    if emb.dim() != 3 or emb.shape[0] != len(names):
        raise ValueError(f'{path!r}: embeddings of shape {tuple(emb.shape)} do not match '
                         f'{len(names)} class names')
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f'{path!r} holds {len(names)} classes but the model expects {num_classes}. '
                         f'Re-create it for this dataset with:\n  {MAKE_COMMAND}')
    if class_names is not None and list(class_names) != names:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(class_names, names)) if a != b][:3]
        raise ValueError(f'{path!r} was made for other class names (first differences '
                         f'(index, expected, file): {diff}; {len(class_names)} vs {len(names)} classes). '
                         f'Re-create it with:\n  {MAKE_COMMAND}')
    return emb, names
