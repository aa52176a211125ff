"""Embedding tens of thousands of class names without starting over.

:func:`embed_resumable` runs the text tower over a synonym list in chunks and
writes each finished chunk atomically to a work folder. A rerun (after a
crash, a kill or Ctrl-C) reads the finished chunks back and embeds only the
rest. Every chunk and the folder's ``manifest.json`` carry a fingerprint of
the synonym list, the chunk size and the text tower's identity
(:meth:`TextEncoder.identity`: its weights or checkpoint file, config and
templates), so chunks made for other names or another model are never mixed
in: a folder made for another run is refused with an error, and a damaged
chunk is re-computed with a warning.
"""
import hashlib
import json
import os
import os.path as osp
import warnings
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from .encoder import TextEncoder, embed_synonyms
from .names import split_synonyms
from .table import SynonymTable

MANIFEST = 'manifest.json'


def fingerprint(identity: str, synonyms: Sequence[str], chunk_size: int) -> str:
    """What a work folder's chunks belong to."""
    blob = json.dumps([identity, list(synonyms), int(chunk_size)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def unique_synonyms(class_names: Sequence[str]) -> List[str]:
    """The distinct synonyms of a vocabulary, in first-seen order (each is embedded once)."""
    return list(dict.fromkeys(s for name in class_names for s in split_synonyms(name)))


def _chunk_path(work_dir: str, i: int) -> str:
    return osp.join(work_dir, f'chunk_{i:06d}.pth')


def _read_chunk(path: str, fp: str, synonyms: Sequence[str]) -> Optional[Tensor]:
    """A finished chunk's (n, D) rows, or None (with a warning) when it is damaged."""
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(data, dict) or data.get('fingerprint') != fp:
            raise ValueError('it belongs to another vocabulary or text tower')
        if list(data.get('synonyms', ())) != list(synonyms):
            raise ValueError('its synonyms are not the ones of this chunk')
        emb = data.get('embeddings')
        if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != len(synonyms):
            raise ValueError(f'embeddings of shape {getattr(emb, "shape", None)} for {len(synonyms)} synonyms')
        if not bool(torch.isfinite(emb).all()):
            raise ValueError('embeddings hold NaN or Inf')
        return emb.float()
    except Exception as e:  # truncated, tampered with, another run's
        warnings.warn(f'chunk {path!r} cannot be used ({type(e).__name__}: {str(e)[:200]}); computing it again',
                      RuntimeWarning, stacklevel=3)
        return None


def _check_manifest(work_dir: str, fp: str, info: dict) -> None:
    from ..fileio import atomic_save_json
    path = osp.join(work_dir, MANIFEST)
    if osp.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                old = json.load(f)
        except ValueError:
            old = {}
        if old.get('fingerprint') != fp:
            raise ValueError(
                f'work folder {work_dir!r} holds chunks of another run (fingerprint {old.get("fingerprint")!r}, '
                f'this run {fp!r}: other class names, chunk size or text tower). Use another work folder, '
                'or delete this one to start over')
        return
    atomic_save_json(path, dict(info, fingerprint=fp), indent=1)


def _progress(total: int, done: int, enabled: bool):
    """A progress bar: tqdm where installed, else mmengine's."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=done, desc='text embeddings', unit='chunk')
    except ImportError:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(total)
        for _ in range(done):
            bar.update()
        return bar


@torch.no_grad()
def embed_resumable(encoder: TextEncoder,
                    synonyms: Sequence[str],
                    work_dir: str,
                    chunk_size: int = 1024,
                    progress: bool = True,
                    on_chunk: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """(S, D) unit-norm embeddings of ``synonyms``, resumable (see the module doc).

    Args:
        encoder: the text tower and recipe (templates, batch size).
        synonyms: already split synonyms (:func:`unique_synonyms`).
        work_dir: folder for the finished chunks and ``manifest.json``.
        chunk_size: synonyms per chunk (each chunk is one atomic file).
        on_chunk: called as ``on_chunk(chunk_index, num_chunks)`` after each
            chunk is written (progress reporting, tests).
    """
    from ..fileio import atomic_save_torch
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size must be a whole number >= 1, got {chunk_size!r}')
    synonyms = list(synonyms)
    if not synonyms:
        raise ValueError('no synonyms to embed')
    if osp.isfile(work_dir):
        raise NotADirectoryError(f'work folder {work_dir!r} is a file; give a folder for the chunks')
    os.makedirs(work_dir, exist_ok=True)
    fp = fingerprint(encoder.identity(), synonyms, chunk_size)
    chunks = [synonyms[i:i + chunk_size] for i in range(0, len(synonyms), chunk_size)]
    _check_manifest(work_dir, fp, dict(num_synonyms=len(synonyms), chunk_size=chunk_size, num_chunks=len(chunks),
                                       clip_model=encoder.clip_model))
    out: List[Optional[Tensor]] = [None] * len(chunks)
    for i, chunk in enumerate(chunks):
        if osp.isfile(_chunk_path(work_dir, i)):
            out[i] = _read_chunk(_chunk_path(work_dir, i), fp, chunk)
    bar = _progress(len(chunks), sum(o is not None for o in out), progress)
    model, tok = encoder.text_model if any(o is None for o in out) else (None, None)
    for i, chunk in enumerate(chunks):
        if out[i] is not None:
            continue
        emb = embed_synonyms(model, tok, chunk, encoder.templates, encoder.batch_size)
        atomic_save_torch(_chunk_path(work_dir, i), dict(fingerprint=fp, synonyms=chunk, embeddings=emb))
        out[i] = emb
        if bar is not None:
            bar.update()
        if on_chunk is not None:
            on_chunk(i, len(chunks))
    if bar is not None and hasattr(bar, 'close'):
        bar.close()
    return torch.cat(out)


def clear_work_dir(work_dir: str) -> None:
    """Remove a finished run's chunks and manifest (only the files this module writes)."""
    if not osp.isdir(work_dir):
        return
    for name in os.listdir(work_dir):
        if name == MANIFEST or (name.startswith('chunk_') and name.endswith('.pth')):
            os.remove(osp.join(work_dir, name))
    try:
        os.rmdir(work_dir)
    except OSError:  # something else lives there
        pass


def synonym_table(class_names: Sequence[str], synonyms: Sequence[str], embeddings: Tensor) -> SynonymTable:
    """The :class:`SynonymTable` of ``class_names`` from per-synonym rows."""
    index = {s: i for i, s in enumerate(synonyms)}
    rows = [embeddings[[index[s] for s in split_synonyms(n)]] for n in class_names]
    return SynonymTable.from_rows(rows)
