"""LVIS mask AP on numpy 2, and the LVIS variant of the prompt metric.

``lvis`` 0.5.3 (the only release on PyPI) calls ``np.float`` in
``LVISEval.accumulate``; numpy >= 1.24 removed that alias, so mmdet's
``LVISMetric`` crashes. :func:`numpy_float_alias` provides the alias only for
the duration of a ``with`` block and removes it afterwards: nothing else in
the process sees a patched numpy.
"""
import contextlib
import threading
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
from mmdet.evaluation.metrics import LVISMetric

from ..datasets.ann_index import frequency_groups, labels_of_frequencies
from ..registry import METRICS
from .prompt_metric import PromptSegMetric

__all__ = ['numpy_float_alias', 'LVISMetricNumpy2', 'LVISPromptSegMetric']

_LOCK = threading.Lock()
_DEPTH = 0  # active numpy_float_alias blocks (nested or in other threads)
_ADDED = False  # whether the alias in numpy is ours


@contextlib.contextmanager
def numpy_float_alias() -> Iterator[None]:
    """Temporarily define ``np.float = float`` if numpy lacks it (numpy >= 1.24).

    Nested and concurrent blocks share one alias, removed when the last block
    exits; on numpy versions that still have ``np.float`` it does nothing.
    """
    global _DEPTH, _ADDED
    with _LOCK:
        if _DEPTH == 0 and 'float' not in np.__dict__:
            np.float = float  # type: ignore[attr-defined]
            _ADDED = True
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _ADDED:
                del np.float  # type: ignore[attr-defined]
                _ADDED = False


@METRICS.register_module()
class LVISMetricNumpy2(LVISMetric):
    """mmdet's ``LVISMetric`` whose evaluation runs under :func:`numpy_float_alias`.

    Same arguments and results as ``LVISMetric`` (prefix ``lvis``); keys
    ``segm_AP``, ``segm_APr`` / ``APc`` / ``APf``, ...
    """

    def compute_metrics(self, results: list) -> Dict[str, float]:
        with numpy_float_alias():
            return super().compute_metrics(results)


@METRICS.register_module()
class LVISPromptSegMetric(PromptSegMetric):
    """:class:`PromptSegMetric` with LVIS frequency groups read from the annotation file.

    Reports ``miou`` / ``accuracy`` overall, for ``base`` / ``novel``
    (default frequent + common / rare, the paper's LVIS split) and for
    ``frequent`` / ``common`` / ``rare``. Label indices follow mmdet's
    ``LVISV1Dataset`` (categories in file order).

    Args:
        ann_file: LVIS annotation file (categories with ``frequency``).
        base_frequencies / novel_frequencies: frequencies of the split.
        Other arguments: see :class:`PromptSegMetric`.
    """

    def __init__(self,
                 ann_file: str,
                 base_frequencies: Sequence[str] = ('f', 'c'),
                 novel_frequencies: Sequence[str] = ('r', ),
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        groups = frequency_groups(ann_file)
        super().__init__(base_classes=labels_of_frequencies(ann_file, base_frequencies),
                         novel_classes=labels_of_frequencies(ann_file, novel_frequencies),
                         class_groups=dict(frequent=groups['f'], common=groups['c'], rare=groups['r']),
                         collect_device=collect_device,
                         prefix=prefix)
