"""Large vocabularies scored in int8, the best rows rescored exactly.

Recognising one prompt against ~26k classes (58k synonym rows of 768 floats,
180 MB) is a matrix-vector product that only reads memory: the plain
:class:`~ovsam.models.TextClassifier` takes as long as one pass over the table
(7-8 ms on 2 threads here). :class:`Int8TextClassifier` keeps a per-row int8
copy of the flat table (a quarter of the bytes) and scores in two passes:

1. every row in int8 (fbgemm's dynamic-quantised GEMM: per-row weight scales,
   the query quantised per call); error ~5e-4 cosine rms, ~3e-3 at worst
   (0.05 / 0.3 logits at CLIP's x100 scale);
2. each prompt's ``rescore_rows`` best rows again in float32, from the float
   table (a gather of a few hundred rows).

So the classes a user sees first (top-k, the argmax, anything near the top)
carry exact float32 scores, and the long tail, which only enters the softmax
denominator, carries int8 ones. ``tools/analysis/benchmark_vocabulary.py``
prints the time and the agreement with float32; ``tests/test_quantized_vocabulary.py``
holds the equivalence checks.

The plain classifier knows nothing of this: :func:`quantize_vocabulary` swaps
the class of a model's classifiers (``OVSAMPredictor`` does so by default).
The int8 pass is used only where it pays and is safe: a flat vocabulary (the
large-vocabulary layout; padded ones are small), on CPU, float32, without
autograd, and for at most ``max_prompts`` prompts per call (a batch of
prompts already amortises one float32 read of the table). Otherwise it
computes exactly as the plain class.
"""
import warnings
import weakref
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .classifier import TextClassifier

#: Rows per prompt rescored in float32 after the int8 pass.
DEFAULT_RESCORE_ROWS = 256
#: Prompts per call up to which the int8 pass is used.
DEFAULT_MAX_PROMPTS = 16


def int8_available() -> bool:
    """Whether this torch build has the fbgemm / x86 dynamic-quantised linear."""
    return 'fbgemm' in torch.backends.quantized.supported_engines or \
        'x86' in torch.backends.quantized.supported_engines


def pack_int8_rows(rows: Tensor):
    """Pack an (R, D) float32 table for ``quantized::linear_dynamic``: symmetric
    int8 per row (scale = max |row| / 127; all-zero rows keep a tiny scale)."""
    scales = rows.abs().amax(dim=1).div(127.).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # torch marks quantized tensor creation deprecated (kept working in 2.x)
        warnings.simplefilter('ignore')
        q = torch.quantize_per_channel(rows.contiguous(), scales, torch.zeros_like(scales, dtype=torch.long),
                                       0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


class Int8TextClassifier(TextClassifier):
    """:class:`TextClassifier` whose flat (large) vocabularies are scored in
    int8 first, each prompt's ``rescore_rows`` best rows then in float32.

    Same buffers and state dict as the plain class. The packed int8 table is
    cached per vocabulary buffer (keyed by storage, shape and version; the
    last ``cache_size`` buffers), so swapping vocabularies (as the predictor
    does per call) repacks only on a buffer it has not seen.
    """

    rescore_rows: int = DEFAULT_RESCORE_ROWS
    max_prompts: int = DEFAULT_MAX_PROMPTS
    cache_size: int = 2

    def _int8_cache(self) -> list:
        cache = self.__dict__.get('_int8_packed')
        if cache is None:  # swapped in by class: __init__ did not run
            cache = self.__dict__['_int8_packed'] = []
        return cache

    def packed_table(self, buf: Tensor) -> Tuple[Any, Tensor]:
        """The packed int8 copy of a flat buffer's rows and the class index of
        its extra rows (:meth:`extra_rows_class`), cached per buffer: the same
        tensor object (a weak reference, so a freed buffer never matches a new
        one at its address) at the same in-place version."""
        if not self.is_flat(buf):
            raise ValueError(f'only flat (rows + 1, D + 1) vocabulary buffers are packed in int8, got shape '
                             f'{tuple(buf.shape)}')
        cache = self._int8_cache()
        for i, (ref, version, entry) in enumerate(cache):
            if ref() is buf and version == buf._version:
                cache.append(cache.pop(i))  # most recently used last
                return entry
        entry = (pack_int8_rows(buf[:, :-1].float()), self.extra_rows_class(buf, self.buffer_num_classes(buf)))
        cache.append((weakref.ref(buf), buf._version, entry))
        del cache[:-self.cache_size]
        return entry

    def uses_int8(self, x: Tensor, buf: Tensor) -> bool:
        """Whether a call with unit vectors ``x`` (N, D) takes the int8 pass."""
        return (x.device.type == 'cpu' and x.dtype == torch.float32 and buf.dtype == torch.float32
                and not buf.is_inference()  # no version counter: a changed table could not be noticed
                and not (torch.is_grad_enabled() and x.requires_grad) and 0 < x.shape[0] <= self.max_prompts
                and buf.shape[0] > self.rescore_rows and int8_available())

    def _flat_cosine(self, x: Tensor, buf: Tensor, k: int) -> Tensor:
        if not self.uses_int8(x, buf):
            return super()._flat_cosine(x, buf, k)
        d = buf.shape[1] - 1
        x = x.contiguous()
        # reduce_range=True: 7-bit activations, fbgemm's fast path without int16 saturation
        packed, extra_class = self.packed_table(buf)
        sims = torch.ops.quantized.linear_dynamic(x, packed, True)  # (N, R + 1)
        top = sims.topk(self.rescore_rows, dim=1).indices  # each prompt's best rows
        rows = top.unique()
        if rows.numel() * 4 > buf.shape[0]:  # many prompts, little overlap: one float read is cheaper
            return super()._flat_cosine(x, buf, k)
        sims.index_copy_(1, rows, x @ buf.index_select(0, rows)[:, :d].t())
        sims[:, -1] = 0  # background: a zero embedding
        return self.class_max(sims, extra_class, k)


def quantize_vocabulary(model: nn.Module, enabled: bool = True, rescore_rows: Optional[int] = None,
                        max_prompts: Optional[int] = None) -> int:
    """Swap every :class:`TextClassifier` of ``model`` to :class:`Int8TextClassifier`
    (or back with ``enabled=False``), in place. Returns how many were swapped."""
    if rescore_rows is not None and rescore_rows < 1:
        raise ValueError(f'rescore_rows must be at least 1, got {rescore_rows}')
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f'max_prompts must be at least 1, got {max_prompts}')
    n = 0
    for m in model.modules():
        if enabled and type(m) is TextClassifier:
            m.__class__ = Int8TextClassifier
            n += 1
        elif not enabled and type(m) is Int8TextClassifier:
            m.__class__ = TextClassifier
            m.__dict__.pop('_int8_packed', None)
            n += 1
    if enabled:
        for m in model.modules():
            if isinstance(m, Int8TextClassifier):
                if rescore_rows is not None:
                    m.rescore_rows = rescore_rows
                if max_prompts is not None:
                    m.max_prompts = max_prompts
    return n
